"""PromptST's prompt tuning end to end (issue 24): a universal forecaster trained on one attribute (synthetic-small's
inflow) is the base; `freeze_plan: prompt` tunes attribute adapters for another (outflow) that hold only a soft
prompt and a fresh head output layer and name their base; they load, predict, evaluate, push and download like any
forecaster folder. Bad input is one line. Tiny random Llama, 2 steps: the forecasts are not good, their identity is
what is tested."""

import json

import numpy as np
import pytest
import torch
from cli_check import assert_clean_failure
from safetensors.torch import load_file
from tiny import train_smoke

from st_instruct import load_forecaster
from st_instruct.cli import main
from st_instruct.configs import DataConfig, ModelConfig, RecipeError
from st_instruct.data.loaders import get_dataset
from st_instruct.hub import HubError, push_to_hub
from st_instruct.model_dir import BACKBONE_FILE, RECIPE_FILE, ST_CONFIG_FILE, ST_MODULES_FILE
from st_instruct.models.saving import load_forecaster as load_saved
from st_instruct.samples.builder import build_dataset
from st_instruct.samples.collator import STDataCollator

UNIVERSAL = ("--channel_independent", "true", "--scaling", "window", "--coordinates", "none")
ADAPTER_WEIGHTS = {"st_soft_prompt.prompt", "regression_head.out.weight", "regression_head.out.bias"}


def tune(tmp_path_factory, backbone, base, *flags):
    """An attribute adapter for outflow on ``base``: the smoke recipe with freeze_plan prompt, 2 steps."""
    return train_smoke(tmp_path_factory, backbone, "--dataset_names", "synthetic-small[outflow]", *UNIVERSAL,
                       "--freeze_plan", "prompt", "--base_forecaster", str(base), *flags, steps=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_backbone_dir):
    """The shared model: a universal forecaster (LoRA) trained on inflow alone."""
    return train_smoke(tmp_path_factory, tiny_backbone_dir, "--dataset_names", "synthetic-small[inflow]",
                       *UNIVERSAL, steps=2)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_backbone_dir, base):
    """Two attribute adapters over the one base: 2 prompt tokens, and 3 with deep prompts."""
    return (tune(tmp_path_factory, tiny_backbone_dir, base, "--soft_prompt_tokens", "2"),
            tune(tmp_path_factory, tiny_backbone_dir, base, "--soft_prompt_tokens", "3", "--soft_prompt_deep", "true",
                 "--seed", "1"))


@pytest.fixture(scope="module")
def batch(base):
    """Test windows of outflow, tokenised with the base's tokenizer (the adapters save the same)."""
    _, tokenizer = load_saved(base)
    config = DataConfig(dataset_names=["synthetic-small[outflow]"], channel_independent=True, scaling="window",
                        coordinates="none", window_sample=2)
    samples = build_dataset(config, tokenizer)["test"]
    return STDataCollator(tokenizer)([samples[i] for i in range(4)])


def test_an_attribute_adapter_holds_its_own_weights_and_names_its_base(base, adapters):
    adapter, deep = adapters
    record = json.loads((adapter / BACKBONE_FILE).read_text())
    assert record["format"] == "attribute" and record["base_forecaster"] == str(base)
    assert record["model_name_or_path"] == json.loads((base / BACKBONE_FILE).read_text())["model_name_or_path"]
    assert set(load_file(adapter / ST_MODULES_FILE)) == ADAPTER_WEIGHTS
    assert set(load_file(deep / ST_MODULES_FILE)) == ADAPTER_WEIGHTS | {"st_soft_prompt.deep"}
    assert not list(adapter.glob("adapter_*")) and not list(adapter.glob("model*.safetensors"))
    assert (adapter / ST_MODULES_FILE).stat().st_size < 10_000  # kilobytes: no copy of the base
    assert {"README.md", RECIPE_FILE, "tokenizer.json", ST_CONFIG_FILE} <= {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / ST_CONFIG_FILE).read_text())["soft_prompt"] == {"soft_prompt_tokens": 2,
                                                                                 "soft_prompt_deep": False}
    assert "attribute adapter" in (adapter / "README.md").read_text()


def test_the_adapter_loads_onto_its_base_and_only_its_own_weights_differ(base, adapters, batch):
    base_model, _ = load_saved(base)
    model, _ = load_saved(adapters[0])
    assert model.st_config.soft_prompt.soft_prompt_tokens == 2 and not model.training
    base_state, state = base_model.state_dict(), model.state_dict()
    own = {key for key in state if key.startswith(("st_soft_prompt.", "regression_head.out."))}
    assert own == ADAPTER_WEIGHTS and set(state) - {"st_soft_prompt.prompt"} == set(base_state)
    assert all(torch.equal(state[key], base_state[key]) for key in set(state) - own)  # the base's, untouched
    assert not torch.equal(state["regression_head.out.weight"], base_state["regression_head.out.weight"])  # fresh
    saved = load_file(adapters[0] / ST_MODULES_FILE)
    assert all(torch.equal(state[key], saved[key]) for key in ADAPTER_WEIGHTS)
    first, again = model.predict(batch), load_saved(adapters[0])[0].predict(batch)
    assert torch.isfinite(first).all() and torch.equal(first, again)
    # two adapters over one base: each its own forecast, the base's own another
    other = load_saved(adapters[1])[0].predict(batch)
    assert not torch.allclose(first, other) and not torch.allclose(first, base_model.predict(batch))


def test_forecast_evaluate_and_predict_read_an_adapter_folder(adapters, tmp_path):
    data = get_dataset("synthetic-small").select_channels(["outflow"]).slice_time(None, "2024-01-20")
    result = load_forecaster(adapters[0]).forecast_data(data)
    assert result.values.shape == (1, 12, 12, 1) and np.isfinite(result.values).all()
    assert main(["evaluate", "--model", str(adapters[0]), "--dataset", "synthetic-small", "--channels", "outflow",
                 "--max-windows", "2", "--models", "last_value", "--output", str(tmp_path / "eval"),
                 "--quiet"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert np.isfinite(results["results"]["st_forecaster"]["MAE"])
    series = tmp_path / "outflow.npz"
    np.savez(series, data=data.values[-12:])
    out = tmp_path / "forecast.npz"
    clock = ["--series-start", str(data.time_index()[-12]), "--freq", "1h", "--channel-names", "outflow"]
    assert main(["predict", "--model", str(adapters[0]), "--input", str(series), *clock, "--output", str(out),
                 "--quiet"]) == 0
    predicted = np.load(out)["values"]
    assert predicted.shape == (1, 12, 12, 1) and np.isfinite(predicted).all()


def test_pushed_and_downloaded_an_adapter_predicts_identically(hub_server, base, adapters, batch, tmp_path):
    adapter = adapters[0]
    local = (adapter / BACKBONE_FILE).read_bytes()
    with pytest.raises(HubError, match=f"^{adapter} is an attribute adapter of the local base forecaster {base}, "
                                       "which a download cannot find: push the base first .* --base-repo USER/BASE"):
        push_to_hub(adapter, "user/co", token=hub_server.token)
    push_to_hub(base, "user/base", token=hub_server.token)
    with pytest.raises(HubError, match="--base-repo user/nothing .* is not a repo on .* push the base forecaster"):
        push_to_hub(adapter, "user/co", token=hub_server.token, base_repo="user/nothing")
    assert main(["push", str(adapter), "--repo-id", "user/co", "--token", hub_server.token,
                 "--base-repo", "user/base"]) == 0
    uploaded = json.loads(hub_server.repo_files("user/co")[BACKBONE_FILE])
    assert uploaded == {**json.loads(local), "base_forecaster": "user/base"}
    assert (adapter / BACKBONE_FILE).read_bytes() == local  # a push only reads the folder
    downloaded = load_forecaster("user/co", token=hub_server.token, cache_dir=tmp_path / "cache")
    assert downloaded.directory != adapter
    assert torch.equal(downloaded.model.predict(batch), load_saved(adapter)[0].predict(batch))


def test_bad_input_is_one_line(cli, base, tiny_backbone_dir, tmp_path):
    smoke = ["train", "smoke_sft", "--model_name_or_path", str(tiny_backbone_dir), "--report_to",
             "none", "--output_dir", str(tmp_path / "out"), "--max_steps", "1", *UNIVERSAL]
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--soft_prompt_tokens", "2"),
                         "freeze_plan: prompt", "base_forecaster names none")
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(base)),
                         "soft_prompt_tokens is 0")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(tmp_path / "empty"),
                             "--soft_prompt_tokens", "2"),
                         f"base_forecaster {tmp_path / 'empty'} is not a trained forecaster folder",
                         "st_backbone.json")
    line = assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(base),
                                    "--soft_prompt_tokens", "2", "--dataset_names", "synthetic-small[CO]",
                                    "--dataset_cache_dir", str(tmp_path / "built")),
                                "'CO'", "inflow", "outflow")
    assert "available channels" in line
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(base),
                             "--soft_prompt_tokens", "2", "--dataset_names", "synthetic-small[outflow]",
                             "--history", "6", "--dataset_cache_dir", str(tmp_path / "built")),
                         "does not fit the base forecaster", "history 6 (the base's: 12)")
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(base),
                             "--soft_prompt_tokens", "2", "--control", "no_llm"),
                         "control 'no_llm'", f"base_forecaster {base} was trained with control 'none'")
    assert_clean_failure(cli(*smoke, "--freeze_plan", "prompt", "--base_forecaster", str(base),
                             "--soft_prompt_tokens", "2", "--push_to_hub", "true"),
                         "push_to_hub with freeze_plan: prompt", "--base-repo")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RecipeError, match="base_forecaster is read by freeze_plan: prompt only"):
        ModelConfig(base_forecaster=str(base))
    with pytest.raises(RecipeError, match="'prompt' trains the soft prompt and the head's output layer only"):
        ModelConfig(freeze_plan="prompt", base_forecaster="b", soft_prompt_tokens=1, train_st_token_embeddings=True)
