"""Issue 10: a forecaster recipe whose ``st_encoder_init`` names a pretrained encoder that does not fit it (another
encoder kind, width, history or channel count), a missing or non-encoder folder, and bad pretraining recipes (issue
23: a bad corpus among them): one line naming the key and both values, exit code 2, no traceback, nothing written."""

from pathlib import Path

import pytest
from cli_check import assert_clean_failure

from st_instruct.data import loaders

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SMOKE = RECIPES / "smoke_sft.yaml"
MAE = RECIPES / "pretrain_mae.yaml"  # patch encoder, width 32, history 12, both channels: as the smoke recipe


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Pretrained folders that each differ from the smoke recipe in one thing (2 steps each)."""
    from st_instruct.cli import main

    root = tmp_path_factory.mktemp("encoders")
    variants = {"kind": ["--st_encoder", "tcn"], "width": ["--st_encoder_dim", "16"], "history": ["--history", "6"],
                "channels": ["--dataset_channels", "inflow"], "fusion": ["--st_encoder_mlp_layers", "2"],
                "mae": [], "forecast": ["--pretrain_objective", "forecast"],
                "horizon": ["--pretrain_objective", "forecast", "--horizon", "6"]}
    for name, flags in variants.items():
        code = main(["pretrain", str(MAE), "--pretrain_steps", "2", "--pretrain_output_dir", str(root / name),
                     *flags])
        assert code == 0
    return root


def train(cli, tmp_path, tiny_backbone_dir, *flags):
    output = tmp_path / "out"
    result = cli("train", SMOKE, "--model_name_or_path", tiny_backbone_dir, "--report_to", "none",
                 "--dataset_cache_dir", tmp_path / "built", "--output_dir", output, *flags)
    return result, output


@pytest.mark.parametrize("variant, culprits", [
    ("kind", ["st_encoder: 'tcn' in the folder, 'patch' in the recipe"]),
    ("width", ["st_encoder_dim: 16 in the folder, 32 in the recipe"]),
    ("history", ["history: 6 in the folder, 12 in the recipe"]),
    ("channels", ["channels (of the data): 1 in the folder, 2 in the recipe"]),
    ("fusion", ["st_encoder_mlp_layers: 2 in the folder, 0 in the recipe"]),
])
def test_a_pretrained_encoder_that_does_not_fit_is_one_line_naming_both_values(variant, culprits, encoders, cli,
                                                                               tmp_path, tiny_backbone_dir):
    folder = encoders / variant
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_init", folder)
    assert_clean_failure(result, "st_encoder_init", str(folder), *culprits)
    assert not output.exists()


def test_a_missing_or_non_encoder_folder_is_one_line(cli, tmp_path, tiny_backbone_dir):
    missing = tmp_path / "nowhere"
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_init", missing)
    assert_clean_failure(result, "st_encoder_init", str(missing), "not a folder", "st-instruct pretrain")
    assert not output.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not an encoder")
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_init", other)
    assert_clean_failure(result, "st_encoder_init", str(other), "encoder_config.json", "st-instruct pretrain")
    assert not output.exists()


def test_an_encoder_folder_without_its_weights_is_one_line(encoders, cli, tmp_path, tiny_backbone_dir):
    import shutil

    folder = tmp_path / "no_weights"
    shutil.copytree(encoders / "kind", folder)
    (folder / "encoder.safetensors").unlink()
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder", "tcn", "--st_encoder_init", folder)
    assert_clean_failure(result, "st_encoder_init", str(folder / "encoder.safetensors"), "pretrain again")
    assert not output.exists()


def test_freezing_without_a_pretrained_encoder_is_one_line(cli, tmp_path, tiny_backbone_dir):
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_freeze", "true")
    assert_clean_failure(result, "st_encoder_freeze: true", "st_encoder_init")
    assert not output.exists()


def test_bad_pretraining_recipes_are_one_line(cli, tmp_path):
    output = tmp_path / "enc"
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, "--pretrain_mask_families", "random", "cube")
    assert_clean_failure(result, "pretrain_mask_families", "'cube'")
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, "--pretrain_objective", "denoise")
    assert_clean_failure(result, "pretrain_objective", "'denoise'")
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, "--coordinates", "learned")
    assert_clean_failure(result, "coordinates: learned", "laplacian")
    assert not output.exists()
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, "--pretrain_steps", "1")
    assert_clean_failure(result, str(output), "--overwrite")
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--leave_out", "nosuch"],
     "leave_out 'nosuch' is not a dataset of dataset_names; expected one of ['synthetic-small'] (or null)"),
    (["--leave_out", "synthetic-small"],
     "leave_out 'synthetic-small' removes the only dataset of dataset_names; list the datasets to keep beside it, or "
     "set leave_out: null"),
    (["--dataset_names", "synthetic-small", "synthetic-small"],
     "dataset_names lists the dataset 'synthetic-small' twice (['synthetic-small', 'synthetic-small']); list each "
     "dataset once, with all the channels it gives in one entry, e.g. beijing-air[PM2.5,CO]"),
    (["--dataset_weights", "0.5", "0.5"],
     "dataset_weights must give one weight per entry of dataset_names (1: ['synthetic-small']), found 2: [0.5, 0.5]"),
    (["--dataset_names", "synthetic-small", "synthetic-grid", "--dataset_weights", "1", "0"],
     "dataset_weights must be finite numbers > 0, found [1.0, 0.0]; leave a dataset out with leave_out, not with a "
     "weight of 0"),
    (["--dataset_names", "synthetic-small[inflow"],
     "dataset_names entry 'synthetic-small[inflow' is malformed: expected NAME or NAME[channel,...] with one pair of "
     "brackets at its end, e.g. beijing-air[PM2.5,CO]"),
    (["--dataset_names", "synthetic-small[]"],
     "dataset_names entry 'synthetic-small[]' has an empty channel list or channel name: expected NAME[channel,...] "
     "naming at least one channel, e.g. beijing-air[PM2.5,CO]"),
])
def test_a_bad_corpus_is_its_one_line_error_before_any_data_is_read(flags, message, cli, tmp_path, monkeypatch):
    def refuse(name, **kwargs):
        raise AssertionError(f"{name} was read: a bad corpus must be refused before any data is")

    monkeypatch.setattr(loaders, "get_dataset", refuse)
    output = tmp_path / "enc"
    result = cli("pretrain", MAE, "--pretrain_output_dir", output, *flags)
    assert_clean_failure(result, message)
    assert result.err.strip() == f"st-instruct pretrain: error: {message}"  # one line, nothing else on stderr
    assert not output.exists()


def test_an_empty_corpus_in_a_recipe_is_one_line(cli, tmp_path):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text(MAE.read_text().replace("dataset_names: [synthetic-small]", "dataset_names: []"))
    result = cli("pretrain", recipe, "--pretrain_output_dir", tmp_path / "enc")
    assert_clean_failure(result, "dataset_names must name at least one dataset (a registered name, a path or "
                                 "NAME[channel,...]), found []")


@pytest.mark.parametrize("variant, culprits", [
    ("mae", ["head_skip_init: readout", "readout.safetensors", "decoder.safetensors found", "forecast"]),
    ("horizon", ["head_skip_init", "readout.safetensors", "horizon x channels = 12 x 2", "(12, 128)"]),
])
def test_a_readout_that_is_missing_or_of_another_horizon_is_one_line(variant, culprits, encoders, cli, tmp_path,
                                                                     tiny_backbone_dir):
    folder = encoders / variant
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_init", folder, "--head_skip", "true",
                           "--head_skip_init", "readout")
    assert_clean_failure(result, str(folder), *culprits)
    assert not output.exists()


def test_a_readout_skip_path_needs_the_skip_path_and_a_pretrained_folder(encoders, cli, tmp_path, tiny_backbone_dir):
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--head_skip_init", "readout")
    assert_clean_failure(result, "head_skip_init: readout", "head_skip: true", "st_encoder_init")
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--head_skip_init", "open")
    assert_clean_failure(result, "head_skip_init", "'open'")
    result, output = train(cli, tmp_path, tiny_backbone_dir, "--st_encoder_init", encoders / "forecast", "--head_skip",
                           "true", "--head_skip_init", "readout", "--revin", "true")
    assert_clean_failure(result, "head_skip_init: readout", "revin")
    assert not output.exists()
