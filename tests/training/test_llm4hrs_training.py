"""The LLM4HRS imputer as a trained model (recipe key ``architecture: llm4hrs``): recipes/llm4hrs_impute.yaml on the
small synthetic city with the tiny Llama of ``tiny_backbone_dir``, trained by the training entry, saved with only
what trains, loaded by ``load_forecaster``, evaluated on the hidden entries beside a baseline and its no-LLM control;
bad recipes are one line."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

from st_instruct.configs import RecipeError, parse_recipe, train_dataclasses
from st_instruct.configs.model import ARCHITECTURES
from st_instruct.model_dir import BACKBONE_FILE, ST_MODULES_FILE, TOKENIZER_FILES
from st_instruct.models.backbones import get_backbone
from st_instruct.models.collators import build_collator
from st_instruct.models.llm4hrs import ARCHITECTURE, FORECASTER, LLM4HRSImputer, saved_architecture
from st_instruct.models.saving import load_forecaster, load_model_config
from st_instruct.samples.st_tokens import st_token_ids
from st_instruct.training.run import build_forecaster, build_trainer, train

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "llm4hrs_impute.yaml"
FROZEN = (".self_attn.", ".mlp.")  # what frozen_blocks keeps as pretrained in every decoder layer of a Llama


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One dataset cache for the module: every run builds the same samples."""
    return tmp_path_factory.mktemp("built")


def recipe(built, backbone, output, *flags, steps=2):
    """The shipped recipe on synthetic-small (12 zones, 2 channels, 12-step windows) and ``backbone``, parsed."""
    return parse_recipe(train_dataclasses(), [
        str(RECIPE), "--dataset_names", "synthetic-small", "--history", "12", "--window_sample", "8",
        "--model_name_or_path", str(backbone), "--dataset_cache_dir", str(built), "--report_to", "none",
        "--output_dir", str(output), "--max_steps", str(steps), "--save_strategy", "no", *flags])


@pytest.fixture(scope="module")
def imputer(tmp_path_factory, built, tiny_backbone_dir):
    return train(*recipe(built, tiny_backbone_dir, tmp_path_factory.mktemp("llm4hrs"), steps=3))


@pytest.fixture(scope="module")
def no_llm(tmp_path_factory, built, tiny_backbone_dir):
    return train(*recipe(built, tiny_backbone_dir, tmp_path_factory.mktemp("llm4hrs-no-llm"), "--control", "no_llm",
                         steps=3))


def test_the_architecture_names_mirror_the_module():
    assert ARCHITECTURES == (FORECASTER, ARCHITECTURE)


def test_the_folder_holds_only_what_trains_and_loads_as_the_imputer(imputer):
    assert saved_architecture(imputer) == ARCHITECTURE
    assert yaml.safe_load((imputer / "recipe.yaml").read_text())["architecture"] == ARCHITECTURE
    assert '"format": "base"' in (imputer / BACKBONE_FILE).read_text()
    model, tokenizer = load_forecaster(imputer)
    assert isinstance(model, LLM4HRSImputer) and not model.training
    assert (model.st_config.horizon, model.st_config.channels) == (12, 2) == (load_model_config(imputer).horizon,
                                                                             load_model_config(imputer).channels)
    st_token_ids(tokenizer)  # the base's tokenizer with the ST tokens: what evaluation tokenises the samples with
    # no backbone weight, adapter or tokenizer is saved: only the imputer's layers, norms and position table
    weights = [p for p in imputer.iterdir() if p.suffix in (".safetensors", ".bin") and p.name != "training_args.bin"]
    assert [p.name for p in weights] == [ST_MODULES_FILE]
    assert not any((imputer / name).exists() for name in (*TOKENIZER_FILES, "adapter_config.json", "config.json"))
    with safe_open(str(imputer / ST_MODULES_FILE), framework="pt") as saved:
        keys = set(saved.keys())
    trained = model.trained_state_dict()
    assert keys == set(trained) and not any(part in key for key in keys for part in (*FROZEN, "embed_tokens",
                                                                                     "lm_head"))
    trained_bytes = sum(value.numel() * value.element_size() for value in trained.values())
    frozen_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if name not in trained)
    assert (imputer / ST_MODULES_FILE).stat().st_size < trained_bytes + 16_384
    assert frozen_bytes > 0


def test_predict_keeps_the_visible_entries_in_original_units(imputer, built, tiny_backbone_dir):
    data_config, _, _ = recipe(built, tiny_backbone_dir, built / "unused")
    model, tokenizer = load_forecaster(imputer)
    from st_instruct.samples.builder import build_dataset

    samples = build_dataset(data_config)["test"]
    batch = build_collator(data_config, model, tokenizer, str(tiny_backbone_dir))([samples[i] for i in range(3)])
    assert "input_ids" not in batch  # the arrays only: the samples need no tokens
    out = model.predict(batch)
    assert out.shape == batch["history"].shape == (3, 12, 12, 2) and torch.isfinite(out).all()
    shown = batch["history"] * batch["scaler_std"][:, None, None, :] + batch["scaler_mean"][:, None, None, :]
    visible = batch["history_mask"]
    torch.testing.assert_close(out[visible], shown[visible])
    assert not torch.allclose(out[~visible], shown[~visible])  # hidden entries (zeros in history) are estimated


@pytest.mark.parametrize("control", ["none", "random_llm"])
def test_frozen_weights_stay_as_built_and_a_reload_predicts_the_same(control, built, tiny_backbone_dir, tmp_path):
    """Trained in memory by the training entry's own builders: attention and MLP weights end as they started (the
    pretrained ones; the random_llm control's random ones, which a reload draws again), the norms moved, and the
    saved folder reloads to the same predictions."""
    data_config, model_config, sft_config = recipe(built, tiny_backbone_dir, tmp_path / "out", "--control", control,
                                                   steps=3)
    model, tokenizer, dataset, report = build_forecaster(data_config, model_config, sft_config.seed)
    assert report.plan == "frozen_blocks"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = build_trainer(model, data_config, model_config, sft_config, dataset["train"], tokenizer,
                            sft_config.seed)
    trainer.train()
    after = dict(model.named_parameters())
    frozen = [name for name in after if any(part in name for part in FROZEN)]
    assert frozen and all(torch.equal(after[name], before[name]) for name in frozen)
    assert any(not torch.equal(after[name], before[name]) for name in after if "norm" in name)
    pretrained = dict(get_backbone(str(tiny_backbone_dir)).named_parameters())
    same = [torch.equal(after[name], pretrained[name.removeprefix("backbone.")]) for name in frozen]
    assert all(same) if control == "none" else not any(same)

    trainer.save_model(str(tmp_path / "saved"))
    loaded, _ = load_forecaster(tmp_path / "saved")
    reloaded = dict(loaded.named_parameters())
    assert all(torch.equal(reloaded[name], after[name]) for name in after)
    batch = build_collator(data_config, model, tokenizer, str(tiny_backbone_dir))(
        [dataset["test"][i] for i in range(2)])
    torch.testing.assert_close(loaded.predict(batch), model.predict(batch), rtol=0, atol=0)


def test_resuming_a_checkpoint_reaches_the_same_weights(built, tiny_backbone_dir, tmp_path):
    whole = train(*recipe(built, tiny_backbone_dir, tmp_path / "whole", "--save_strategy", "steps", "--save_steps",
                          "1", steps=2))
    resumed = train(*recipe(built, tiny_backbone_dir, tmp_path / "resumed", "--resume_from_checkpoint",
                            str(whole / "checkpoint-1"), steps=2))
    first, second = (load_forecaster(folder)[0].trained_state_dict() for folder in (whole, resumed))
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_evaluate_scores_the_hidden_entries_beside_a_baseline_and_the_no_llm_control(imputer, no_llm):
    from st_instruct.protocols.baselines import prepare_windows
    from st_instruct.protocols.evaluate import evaluate_forecaster
    from st_instruct.protocols.imputation import imputation_target
    from st_instruct.samples.builder import series_hidden

    assert '"format": "none"' in (no_llm / BACKBONE_FILE).read_text()
    assert isinstance(load_forecaster(no_llm)[0], LLM4HRSImputer) and load_forecaster(no_llm)[0].backbone is None
    report, arrays = evaluate_forecaster(imputer, "synthetic-small", max_windows=4, models=["mean"], progress=False,
                                         controls=[no_llm])
    rows = {"st_forecaster", "mean", "st_forecaster_no_llm"}
    assert rows <= set(report["results"]) and report["controls"] == {"st_forecaster_no_llm": str(no_llm)}
    assert all(np.isfinite(report["results"][row]["MAE"]) for row in rows)
    assert report["task"] == "imputation" and report["missing_pattern"] == "point:0.5"
    windows = prepare_windows("synthetic-small", 12, 0, "7:1:2")
    evaluated = np.searchsorted(windows.starts["test"], arrays["starts"])
    target = imputation_target(windows, "test", evaluated, series_hidden(windows, "point:0.5", 0))
    np.testing.assert_array_equal(arrays["mask"], target["y_mask"])  # scored: exactly the hidden, known entries
    assert not (arrays["mask"] & target["visible"]).any() and report["scored_entries"] == int(arrays["mask"].sum()) > 0
    for row in ("st_forecaster", "st_forecaster_no_llm"):  # what the imputers read, they return as read
        visible = target["visible"]
        np.testing.assert_allclose(arrays["predictions"][row][visible], target["y"][visible], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("flags, culprits", [
    (("--task", "forecasting", "--horizon", "12", "--missing_pattern", "null"), ("task: forecasting",)),
    (("--granularity", "node", "--template", "forecast_node"), ("granularity: node",)),
])
def test_a_recipe_the_imputer_cannot_read_is_one_line(flags, culprits, cli, built, tiny_backbone_dir, tmp_path):
    from cli_check import assert_clean_failure

    with pytest.raises(RecipeError, match="architecture: llm4hrs .* needs task: imputation and granularity: graph"):
        train(*recipe(built, tiny_backbone_dir, tmp_path / "out", *flags))
    result = cli("train", RECIPE, "--model_name_or_path", tiny_backbone_dir, "--dataset_names", "synthetic-small",
                 "--output_dir", tmp_path / "cli", "--report_to", "none", *flags)
    assert_clean_failure(result, "architecture: llm4hrs", *culprits)
    assert not (tmp_path / "cli").exists()


def test_forecaster_keys_with_the_imputer_are_one_line(cli, tiny_backbone_dir, tmp_path):
    from cli_check import assert_clean_failure

    result = cli("train", RECIPE, "--model_name_or_path", tiny_backbone_dir, "--output_dir", tmp_path / "out",
                 "--freeze_plan", "pfa", "--st_encoder_dim", "16")
    assert_clean_failure(result, "architecture: llm4hrs", "st_encoder_dim", "freeze_plan", "drop them")


def test_predict_fills_a_files_gaps_with_the_imputer(cli, imputer, tmp_path):
    from st_instruct.data.loaders import get_dataset

    data = get_dataset("synthetic-small")
    values = data.values[:60].astype(np.float32).copy()
    values[np.random.default_rng(0).random(values.shape) < 0.3] = np.nan
    np.savez(tmp_path / "gappy.npz", data=values)
    out = tmp_path / "filled.npz"
    result = cli("predict", "--model", imputer, "--input", tmp_path / "gappy.npz", "--series-start",
                 str(data.time_index()[0]), "--freq", "1h", "--task", "imputation", "--output", out, "--quiet")
    assert result.code == 0, result.err
    filled, was_gap = np.load(out)["data"], np.isnan(values) | (values == 0)  # synthetic-small's null value is 0
    assert np.isfinite(filled).all() and np.array_equal(filled[~was_gap], values[~was_gap])
