"""Issue 23, the corpus: ``dataset_names`` entries (a name, a path, or ``NAME[ch1,ch2]``), ``dataset_weights`` and
``leave_out`` read by ``DataConfig``; every mistake is one RecipeError line naming the key, raised before any data is
read. Loading a corpus: tests/data/test_loaders.py; pretraining on one: tests/pretraining/test_pretraining.py."""

from pathlib import Path

import pytest
import yaml

from st_instruct.configs import (
    PRETRAIN_DATACLASSES,
    CorpusEntry,
    DataConfig,
    RecipeError,
    parse_dataset_entry,
    parse_recipe,
    recipe_dict,
)

THREE = ["synthetic-small", "synthetic-grid[inflow]", "synthetic-motorway"]


@pytest.mark.parametrize("entry", ["synthetic-small", "data/speeds.npz", "runs[2]/speeds.npz", "my data/x.csv"])
def test_plain_names_and_paths_are_entries_as_before(entry):
    assert parse_dataset_entry(entry) == (entry, None)
    assert parse_dataset_entry(Path(entry)) == (str(Path(entry)), None)


def test_brackets_closing_an_entry_select_its_channels():
    assert parse_dataset_entry("beijing-air[PM2.5, CO]") == ("beijing-air", ["PM2.5", "CO"])
    assert parse_dataset_entry("runs[2]/speeds.npz[ch1]") == ("runs[2]/speeds.npz", ["ch1"])


def test_the_corpus_drops_leave_out_with_its_weight_and_normalises_the_rest():
    config = DataConfig(dataset_names=THREE, dataset_weights=[3, 1, 4], leave_out="synthetic-motorway")
    assert config.dataset_names == THREE  # the recipe keeps what was written: its saved copy reads back the same
    assert config.corpus() == [CorpusEntry("synthetic-small", None, 0.75),
                               CorpusEntry("synthetic-grid", ["inflow"], 0.25)]
    # leave_out names a NAME, whatever channels its entry selects; no weights: equal
    assert DataConfig(dataset_names=THREE, leave_out="synthetic-grid").corpus() == [
        CorpusEntry("synthetic-small", None, 0.5), CorpusEntry("synthetic-motorway", None, 0.5)]
    assert DataConfig(dataset_names=["synthetic-small"]).corpus() == [CorpusEntry("synthetic-small", None, 1.0)]


def test_a_recipe_sets_the_corpus_keys_from_yaml_and_flags(tmp_path):
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text("dataset_names: [synthetic-small, 'synthetic-grid[inflow]']\ndataset_weights: [0.9, 0.1]\n"
                      "leave_out: synthetic-small\n")
    data, model, pretrain = parse_recipe(PRETRAIN_DATACLASSES, [str(recipe)])
    assert data.corpus() == [CorpusEntry("synthetic-grid", ["inflow"], 1.0)]
    saved = tmp_path / "saved.yaml"  # what a pretrained folder's recipe.yaml holds reads back as the same corpus
    saved.write_text(yaml.safe_dump(recipe_dict(data, model, pretrain), sort_keys=False))
    again, *_ = parse_recipe(PRETRAIN_DATACLASSES, [str(saved)])
    assert again.dataset_names == data.dataset_names and again.corpus() == data.corpus()
    data, *_ = parse_recipe(PRETRAIN_DATACLASSES, [str(recipe), "--leave_out", "null", "--dataset_weights", "3", "1"])
    assert [entry.weight for entry in data.corpus()] == [0.75, 0.25] and data.leave_out is None


def test_pointing_a_config_at_one_dataset_drops_the_corpus_keys():
    config = DataConfig(dataset_names=THREE, dataset_weights=[3, 1, 4], leave_out="synthetic-motorway")
    one = config.for_one_dataset("synthetic-motorway", scaling="window")  # e.g. zero-shot on the held-out dataset
    assert one.corpus() == [CorpusEntry("synthetic-motorway", None, 1.0)] and one.scaling == "window"


NAMES = "(a registered name, a path or NAME[channel,...])"
BAD_CORPORA = [
    ({"dataset_names": []},
     f"dataset_names must name at least one dataset {NAMES}, found []"),
    ({"dataset_names": ["synthetic-small"], "leave_out": "synthetic-small"},
     "leave_out 'synthetic-small' removes the only dataset of dataset_names; list the datasets to keep beside it, or "
     "set leave_out: null"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid", "synthetic-small"]},
     "dataset_names lists the dataset 'synthetic-small' twice (['synthetic-small', 'synthetic-small']); list each "
     "dataset once, with all the channels it gives in one entry, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["synthetic-small[inflow]", "synthetic-small[outflow]"]},
     "dataset_names lists the dataset 'synthetic-small' twice (['synthetic-small[inflow]', "
     "'synthetic-small[outflow]']); list each dataset once, with all the channels it gives in one entry, e.g. "
     "beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid"], "leave_out": "nosuch"},
     "leave_out 'nosuch' is not a dataset of dataset_names; expected one of ['synthetic-small', 'synthetic-grid'] "
     "(or null)"),
    ({"dataset_names": ["synthetic-small[inflow]", "synthetic-grid"], "leave_out": "synthetic-small[inflow]"},
     "leave_out 'synthetic-small[inflow]' is not a dataset of dataset_names; expected one of ['synthetic-small', "
     "'synthetic-grid'] (or null)"),
    ({"dataset_names": THREE, "dataset_weights": [0.9, 0.1]},
     "dataset_weights must give one weight per entry of dataset_names (3: ['synthetic-small', "
     "'synthetic-grid[inflow]', 'synthetic-motorway']), found 2: [0.9, 0.1]"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid"], "dataset_weights": [1.0, 0.0]},
     "dataset_weights must be finite numbers > 0, found [1.0, 0.0]; leave a dataset out with leave_out, not with a "
     "weight of 0"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid"], "dataset_weights": [-1.0, 2.0]},
     "dataset_weights must be finite numbers > 0, found [-1.0, 2.0]; leave a dataset out with leave_out, not with a "
     "weight of 0"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid"], "dataset_weights": [float("inf"), 1.0]},
     "dataset_weights must be finite numbers > 0, found [inf, 1.0]; leave a dataset out with leave_out, not with a "
     "weight of 0"),
    ({"dataset_names": ["synthetic-small", "synthetic-grid"], "dataset_weights": [float("nan"), 1.0]},
     "dataset_weights must be finite numbers > 0, found [nan, 1.0]; leave a dataset out with leave_out, not with a "
     "weight of 0"),
    ({"dataset_names": ["beijing-air[PM2.5,CO"]},
     "dataset_names entry 'beijing-air[PM2.5,CO' is malformed: expected NAME or NAME[channel,...] with one pair of "
     "brackets at its end, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["beijing-air]PM2.5["]},
     "dataset_names entry 'beijing-air]PM2.5[' is malformed: expected NAME or NAME[channel,...] with one pair of "
     "brackets at its end, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["[PM2.5]"]},
     "dataset_names entry '[PM2.5]' is malformed: expected NAME or NAME[channel,...] with one pair of brackets at its "
     "end, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["beijing-air[[PM2.5]]"]},
     "dataset_names entry 'beijing-air[[PM2.5]]' is malformed: expected NAME or NAME[channel,...] with one pair of "
     "brackets at its end, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["beijing-air[]"]},
     "dataset_names entry 'beijing-air[]' has an empty channel list or channel name: expected NAME[channel,...] "
     "naming at least one channel, e.g. beijing-air[PM2.5,CO]"),
    ({"dataset_names": ["beijing-air[PM2.5,]"]},
     "dataset_names entry 'beijing-air[PM2.5,]' has an empty channel list or channel name: expected "
     "NAME[channel,...] naming at least one channel, e.g. beijing-air[PM2.5,CO]"),
]


@pytest.mark.parametrize("fields, message", BAD_CORPORA)
def test_each_bad_corpus_is_its_one_line_error(fields, message):
    with pytest.raises(RecipeError) as caught:
        DataConfig(**fields)
    assert str(caught.value) == message
