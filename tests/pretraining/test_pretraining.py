"""ST-encoder pretraining (issue 10, item 1): forecast and masked-autoencoder objectives on synthetic-small, the saved
folder, loading it into a forecaster (``st_encoder_init``), freezing it, the loss on hidden entries only, seeding."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from st_instruct.cli import main
from st_instruct.configs import (
    MASK_FAMILY_NAMES,
    PRETRAIN_DATACLASSES,
    RecipeError,
    STEncoderConfig,
    parse_recipe,
    train_dataclasses,
)
from st_instruct.data.masks import MASK_FAMILIES
from st_instruct.models.st_encoders import EncoderSpec, build_st_encoder
from st_instruct.pretraining.model import PretrainModel, reconstruction_loss
from st_instruct.pretraining.run import (
    ENCODER_FILE,
    LOG_FILE,
    load_sources,
    save_encoder,
    train_encoder,
    window_batch,
)
from st_instruct.samples.collator import STDataCollator
from st_instruct.tasks import get_task
from st_instruct.training.run import backbone_source, build_forecaster
from st_instruct.training.trainer import STSFTTrainer

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SMOKE = RECIPES / "smoke_sft.yaml"
ENCODER_INPUTS = ("history", "history_mask", "history_tod", "history_dow", "coords", "node_mask", "steps_per_day")


def pretrain_configs(objective, *flags):
    recipe = RECIPES / f"pretrain_{objective}.yaml"
    return parse_recipe(PRETRAIN_DATACLASSES, [str(recipe), "--pretrain_steps", "4", *flags])


@pytest.fixture(scope="module")
def forecaster_flags(tiny_backbone_dir, tmp_path_factory):
    return ["--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir",
            str(tmp_path_factory.mktemp("built")), "--report_to", "none"]


def forecaster(forecaster_flags, output, *more):
    data_config, model_config, args = parse_recipe(train_dataclasses(), [str(SMOKE), *forecaster_flags,
                                                                         "--output_dir", str(output), *more])
    model, tokenizer, dataset, report = build_forecaster(data_config, model_config, args.seed)
    return model, tokenizer, dataset, report, model_config, args


def test_mask_family_names_mirror_the_masks_module():
    assert MASK_FAMILY_NAMES == (*MASK_FAMILIES, "mix")


@pytest.mark.parametrize("objective, kind", [("mae", "patch"), ("forecast", "tcn")])
def test_pretrain_save_load_into_a_forecaster_gives_identical_encoder_outputs(objective, kind, forecaster_flags,
                                                                             tmp_path):
    configs = pretrain_configs(objective, "--st_encoder", kind)
    model, encoder_config, log = train_encoder(*configs, progress=False)
    folder = save_encoder(model, encoder_config, log, tmp_path / "enc", {"pretrain_objective": objective})
    head = {"mae": "decoder.safetensors", "forecast": "readout.safetensors"}[objective]
    assert {p.name for p in folder.iterdir()} == {ENCODER_FILE, head, "encoder_config.json", "recipe.yaml", LOG_FILE}
    assert EncoderSpec.load(folder) == encoder_config and encoder_config.encoder.st_encoder == kind
    fc, tokenizer, dataset, _, _, _ = forecaster(forecaster_flags, tmp_path / "out", "--st_encoder", kind,
                                                 "--st_encoder_init", str(folder))
    batch = STDataCollator(tokenizer)([dataset["train"][i] for i in range(4)])
    inputs = {key: batch[key] for key in ENCODER_INPUTS}
    with torch.no_grad():
        expected = model.encoder(**inputs)
        torch.testing.assert_close(fc.st_encoder.eval()(**inputs), expected, rtol=0, atol=0)
        fresh = build_st_encoder(encoder_config).eval()(**inputs)
    assert not torch.allclose(fresh, expected)  # the weights came from the folder, not from a new initialisation


def test_mae_loss_scores_hidden_entries_only_and_the_encoder_cannot_see_them():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 12, 5, 2, generator=generator)
    observed = torch.rand(2, 12, 5, 2, generator=generator) > 0.1
    hidden = torch.rand(2, 12, 5, 2, generator=generator) > 0.5
    prediction = torch.randn(2, 12, 5, 2, generator=generator)
    loss = reconstruction_loss(prediction, target, observed, hidden)
    changed = prediction.masked_fill(~hidden, 100.0)  # every entry the encoder saw predicted absurdly
    torch.testing.assert_close(reconstruction_loss(changed, target, observed, hidden), loss)
    assert reconstruction_loss(prediction.masked_fill(hidden, 100.0), target, observed, hidden) > loss + 50
    expected = (prediction - target).abs()[hidden & observed].mean()
    torch.testing.assert_close(loss, expected)

    # what the mask hides never reaches the encoder: changing hidden history values leaves the output unchanged
    encoder = build_st_encoder(EncoderSpec(STEncoderConfig(st_encoder="tcn", st_encoder_dim=8), history=12, channels=2,
                                           coord_dim=3))
    model = PretrainModel(encoder, "mae", 12, 2).eval()
    inputs = {"history": target, "history_mask": observed, "history_tod": torch.zeros(2, 12, dtype=torch.long),
              "history_dow": torch.zeros(2, 12, dtype=torch.long), "coords": torch.randn(2, 5, 3),
              "node_mask": torch.ones(2, 5, dtype=torch.bool)}
    with torch.no_grad():
        out = model(**inputs, hidden=hidden)
        torch.testing.assert_close(model(**{**inputs, "history": target + 7 * hidden}, hidden=hidden), out)
        assert not torch.allclose(model(**{**inputs, "history": target + 7 * ~hidden}, hidden=hidden), out)
        # hidden entries reach the encoder exactly as gaps (value zeroed, observed flag cleared), not as zeros
        torch.testing.assert_close(model(**{**inputs, "history_mask": observed & ~hidden}), out)
        assert not torch.allclose(model(**{**inputs, "history": target.masked_fill(hidden, 0.0)}), out)


@pytest.mark.parametrize("objective", ["mae", "forecast"])
def test_loss_decreases_over_30_steps(objective):
    configs = pretrain_configs(objective, "--pretrain_steps", "30", "--pretrain_learning_rate", "0.003")
    _, _, log = train_encoder(*configs, progress=False)
    losses = log["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5, losses


def test_the_seed_makes_runs_reproducible():
    def weights(seed):
        model, _, log = train_encoder(*pretrain_configs("mae", "--pretrain_seed", str(seed)), progress=False)
        return model.state_dict(), log["losses"]

    (first, losses), (again, losses_again), (other, _) = weights(3), weights(3), weights(4)
    assert losses == losses_again
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_several_datasets_of_different_node_counts_pretrain_one_encoder(tmp_path):
    """The encoder is node-count agnostic: synthetic-small (12 zones) and a 5-node cut of it as a path dataset."""
    import numpy as np

    from st_instruct.data.loaders import get_dataset

    data = get_dataset("synthetic-small")
    path = tmp_path / "five.npz"
    np.savez(path, data=np.nan_to_num(data.values[:, :5]))
    configs = pretrain_configs("forecast", "--dataset_names", "synthetic-small", str(path), "--dataset_freq", "1h",
                               "--dataset_series_start", "2024-01-01", "--coordinates", "none",
                               "--pretrain_steps", "12")
    sources = load_sources(configs[0], ["block", "random"])
    assert sorted(s.coords.shape[0] for s in sources) == [5, 12]
    # block masks need a graph: kept for the synthetic city, skipped for the graph-less file, refused if alone
    assert {s.coords.shape[0]: s.families for s in sources} == {12: ["block", "random"], 5: ["random"]}
    with pytest.raises(RecipeError, match="block masks need a graph or a grid"):
        load_sources(configs[0], ["block"])
    assert window_batch(sources[0], np.arange(3))["history"].shape[0] == 3
    _, _, log = train_encoder(*configs, progress=False)
    assert len(log["datasets"]) == 2 and len(log["losses"]) == 12


# tiny sizes: these runs are about the corpus, not the encoder
TINY = ("--pretrain_objective", "forecast", "--st_encoder", "tcn", "--st_encoder_dim", "8", "--pretrain_batch_size",
        "2", "--history", "6", "--horizon", "3", "--coordinates", "none")


def test_leave_out_never_reads_the_held_out_dataset_and_the_log_says_so(datasets_read):
    """Three one-channel datasets (channels picked per dataset), one left out: it is never loaded -- not its values,
    not its scaler -- and the log names it; the same recipe without leave_out reads all three."""
    read = datasets_read
    corpus = ("--dataset_names", "synthetic-small[inflow]", "synthetic-grid[outflow]", "synthetic-motorway")
    _, _, log = train_encoder(*pretrain_configs("forecast", *TINY, *corpus, "--leave_out", "synthetic-grid"),
                              progress=False)
    assert read == ["synthetic-small", "synthetic-motorway"]
    assert log["leave_out"] == "synthetic-grid" and log["datasets"] == ["synthetic-small", "synthetic-motorway"]
    assert log["dataset_weights"] == [0.5, 0.5] and sum(log["dataset_steps"]) == len(log["losses"]) == 4
    read.clear()
    _, _, log = train_encoder(*pretrain_configs("forecast", *TINY, *corpus), progress=False)
    assert read == ["synthetic-small", "synthetic-grid", "synthetic-motorway"] and log["leave_out"] is None


def test_the_steps_per_dataset_follow_dataset_weights_and_the_seed():
    """100 steps drawn 0.9 / 0.1: Binomial(100, 0.9) has a standard deviation of 3, so [80, 98] is more than 3
    deviations either side (and the seed is fixed: the counts are the same on every run); equal draws (about 50 each),
    ignored or swapped weights fail it."""
    def steps(*weights):
        configs = pretrain_configs("forecast", *TINY, "--dataset_names", "synthetic-small", "synthetic-grid",
                                   "--dataset_weights", *weights, "--pretrain_steps", "100")
        _, _, log = train_encoder(*configs, progress=False)
        return log

    log = steps("0.9", "0.1")
    assert log["dataset_weights"] == pytest.approx([0.9, 0.1])
    small, grid = log["dataset_steps"]
    assert small + grid == 100 and 80 <= small <= 98, log["dataset_steps"]
    assert steps("9", "1")["dataset_steps"] == log["dataset_steps"]  # the same weights, normalised; the same seed


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_encoder_stays_bit_identical_while_a_trained_one_moves(freeze, forecaster_flags, tmp_path):
    model, encoder_config, log = train_encoder(*pretrain_configs("mae"), progress=False)
    folder = save_encoder(model, encoder_config, log, tmp_path / "enc", {})
    saved = load_file(str(folder / ENCODER_FILE))
    fc, tokenizer, dataset, report, model_config, args = forecaster(
        forecaster_flags, tmp_path / "out", "--st_encoder_init", str(folder), "--st_encoder_freeze", str(freeze),
        "--max_steps", "2", "--learning_rate", "0.01", "--save_strategy", "no")
    assert ("st_encoder" in report.groups) is not freeze
    assert all(p.requires_grad is not freeze for p in fc.st_encoder.parameters())
    projector = {key: value.clone() for key, value in fc.st_projector.state_dict().items()}
    trainer = STSFTTrainer(fc, args, dataset["train"], tokenizer, backbone_source(model_config),
                           get_task("forecasting"), model_config.loss_reg_weight, model_config.loss_lm_weight)
    trainer.train()
    after = {key: value.cpu() for key, value in fc.st_encoder.state_dict().items()}
    same = all(torch.equal(after[key], saved[key]) for key in saved)
    assert same is freeze
    assert any(not torch.equal(fc.st_projector.state_dict()[key], value) for key, value in projector.items())


def test_the_no_llm_control_keeps_a_frozen_encoder_out_of_its_report(forecaster_flags, tmp_path):
    model, encoder_config, log = train_encoder(*pretrain_configs("mae"), progress=False)
    folder = save_encoder(model, encoder_config, log, tmp_path / "enc", {})
    fc, *_, report, _, _ = forecaster(forecaster_flags, tmp_path / "out", "--control", "no_llm",
                                      "--st_encoder_init", str(folder), "--st_encoder_freeze", "true")
    assert fc.backbone is None and "st_encoder" not in report.groups and "st_projector" in report.groups
    assert not any(p.requires_grad for p in fc.st_encoder.parameters())
    assert report.trainable == sum(p.numel() for p in fc.parameters() if p.requires_grad)


def test_cli_pretrain_writes_the_folder_and_refuses_to_overwrite_unasked(tmp_path, capsys):
    output = tmp_path / "enc"
    argv = ["pretrain", str(RECIPES / "pretrain_mae.yaml"), "--pretrain_steps", "3", "--pretrain_output_dir",
            str(output)]
    assert main(argv) == 0
    log = json.loads((output / LOG_FILE).read_text())
    assert log["objective"] == "mae" and len(log["losses"]) == 3
    assert "saved to" in capsys.readouterr().out
    *_, again = parse_recipe(PRETRAIN_DATACLASSES, [str(output / "recipe.yaml")])  # the saved recipe runs again
    assert again.pretrain_steps == 3 and again.pretrain_output_dir == str(output)
    before = (output / ENCODER_FILE).read_bytes()
    assert main(argv) == 2
    assert (output / ENCODER_FILE).read_bytes() == before
    assert main([*argv, "--overwrite", "--pretrain_seed", "1"]) == 0
    assert (output / ENCODER_FILE).read_bytes() != before


def test_the_accelerate_entry_script_pretrains_and_reports_a_bad_recipe_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_script", RECIPES.parent / "scripts" / "pretrain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output = tmp_path / "enc"
    assert script.main([str(RECIPES / "pretrain_forecast.yaml"), "--pretrain_steps", "2", "--pretrain_output_dir",
                        str(output)]) == 0
    assert (output / "readout.safetensors").is_file()
    capsys.readouterr()
    assert script.main([str(RECIPES / "pretrain_forecast.yaml"), "--pretrain_stpes", "2"]) == 2
    assert "--pretrain_steps" in capsys.readouterr().err
    assert script.main([str(RECIPES / "pretrain_forecast.yaml"), "--pretrain_output_dir", str(output)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("control", ["none", "no_llm"])
def test_a_readout_started_skip_path_forecasts_exactly_what_the_pretrained_readout_does(control, forecaster_flags,
                                                                                       tmp_path):
    """head_skip_init: readout: before any training step the forecaster (with or without its LLM) gives the
    pretrained encoder + readout's forecast, bit for bit up to float rounding: the LLM path starts at zero."""
    configs = pretrain_configs("forecast", "--st_encoder", "patch", "--st_encoder_mlp_layers", "2")
    model, encoder_config, log = train_encoder(*configs, progress=False)
    folder = save_encoder(model, encoder_config, log, tmp_path / "enc", {})
    fc, tokenizer, dataset, _, _, _ = forecaster(
        forecaster_flags, tmp_path / "out", "--st_encoder", "patch", "--st_encoder_mlp_layers", "2",
        "--st_encoder_init", str(folder), "--head_skip", "true", "--head_skip_init", "readout", "--control", control)
    assert float(fc.regression_head.gate.detach()) == 1.0 and not fc.regression_head.out.weight.any()
    batch = STDataCollator(tokenizer)([dataset["train"][i] for i in range(3)])
    with torch.no_grad():
        expected = model.eval()(**{key: batch[key] for key in ENCODER_INPUTS})
    predicted = fc.predict(batch)
    scaled = (predicted - batch["scaler_mean"][:, None, None, :]) / batch["scaler_std"][:, None, None, :]
    mask = batch["node_mask"][:, None, :, None].expand_as(scaled)
    torch.testing.assert_close(scaled[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_pretraining_batches_cover_every_window_once_per_epoch():
    from st_instruct.pretraining.run import EpochOrder

    order = EpochOrder(10, torch.Generator().manual_seed(0))
    first = [order.next(4) for _ in range(3)]  # 4 + 4 + 2: a batch never spans two passes
    assert [len(b) for b in first] == [4, 4, 2] and sorted(int(i) for b in first for i in b) == list(range(10))
    second = [order.next(4) for _ in range(3)]
    assert sorted(int(i) for b in second for i in b) == list(range(10))


def test_the_cosine_schedule_decays_the_pretraining_rate_and_constant_keeps_it(monkeypatch):
    seen = []
    real_step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train_encoder(*pretrain_configs("forecast", "--pretrain_learning_rate", "0.01"), progress=False)
    assert seen[0] == pytest.approx(0.01) and seen[-1] < 0.01 * 0.2 and seen == sorted(seen, reverse=True)
    seen.clear()
    train_encoder(*pretrain_configs("forecast", "--pretrain_learning_rate", "0.01", "--pretrain_lr_scheduler",
                                    "constant"), progress=False)
    assert seen == [pytest.approx(0.01)] * 4


def test_a_model_trained_from_a_pretrained_folder_few_shots_after_that_folder_is_gone(forecaster_flags, tmp_path):
    """Every weight of a trained forecaster is in its own folder: few-shot rebuilds it without reading the
    st_encoder_init / head_skip_init folder its recipe names (which may have been deleted or moved since)."""
    import shutil

    encoder = tmp_path / "enc"
    assert main(["pretrain", str(RECIPES / "pretrain_forecast.yaml"), "--st_encoder", "patch", "--pretrain_steps",
                 "2", "--pretrain_output_dir", str(encoder)]) == 0
    model = tmp_path / "model"
    assert main(["train", str(SMOKE), *forecaster_flags, "--output_dir", str(model), "--max_steps", "1",
                 "--st_encoder_init", str(encoder), "--head_skip", "true", "--head_skip_init", "readout"]) == 0
    shutil.rmtree(encoder)
    tuned = tmp_path / "tuned"
    assert main(["evaluate", "--model", str(model), "--dataset", "synthetic-small", "--few-shot", "0.005",
                 "--few-shot-steps", "1", "--few-shot-output", str(tuned), "--max-windows", "2", "--models",
                 "last_value", "--quiet"]) == 0
    assert (tuned / "few_shot.json").is_file()
