"""Model cards and hub pushes, against the local stand-in of the Hub API (tests/hub_server.py, docs/design.md §8)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from st_instruct.hub import REQUIRED_FILES, HubError, check_model_dir, push_to_hub
from st_instruct.model_dir import EVALUATIONS_FILE
from st_instruct.models.card import REPO_PLACEHOLDER, write_model_card
from st_instruct.protocols.records import write_card_with_evaluations

REPO = "st-user/smoke-forecaster"
REPORT = {"dataset": "synthetic-small", "history": 12, "horizon": 12, "split_name": "test",
          "protocol": "in-domain", "protocol_version": "in-domain/1", "windows": {"test": 3}, "channels": ["a"],
          "results": {"st_forecaster": {"MAE": 3.25, "RMSE": 5.5, "MAPE": 0.21, "WAPE": None},
                      "st_forecaster_no_llm": {"MAE": 3.5, "RMSE": 5.75, "MAPE": 0.22, "WAPE": 0.2},
                      "historical_average": {"MAE": 4.0, "RMSE": 6.0, "MAPE": 0.3, "WAPE": 0.25}}}
RECIPE = {"model_name_or_path": "smollm2-135m", "st_encoder": "patch", "freeze_plan": "lora", "lora_r": 8,
          "dataset_names": ["synthetic-small"], "learning_rate": 2e-4}


def pushed_view(directory: Path, repo_id: str) -> dict[str, bytes]:
    """What a push of ``directory`` to ``repo_id`` delivers: every file as it is, the card snippet naming the repo."""
    files = local_files(directory)
    files["README.md"] = files["README.md"].replace(REPO_PLACEHOLDER.encode(), repo_id.encode())
    return files


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` -> sha256 of its bytes."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def local_files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path, st_tokenizer) -> Path:
    """A small but realistic saved forecaster: adapter, ST modules, tokenizer, config, recipe, model card."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path / "smoke-forecaster"
    root.mkdir()
    gen = torch.Generator().manual_seed(0)
    save_file({"st_encoder.patch.weight": torch.randn(32, 24, generator=gen),
               "projector.weight": torch.randn(64, 32, generator=gen),
               "head.w3.weight": torch.randn(12, 128, generator=gen)}, root / "st_modules.safetensors")
    save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(8, 64, generator=gen),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 8)},
              root / "adapter_model.safetensors")
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                          "target_modules": ["q_proj", "v_proj"]}, indent=2))
    (root / "st_forecaster_config.json").write_text(json.dumps({"backbone": "smollm2-135m", "history": 12,
                                                                "horizon": 12, "channels": 2}, indent=2))
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    (root / "st_backbone.json").write_text(json.dumps({"model_name_or_path": "smollm2-135m", "format": "adapter"}))
    (root / EVALUATIONS_FILE).write_text(json.dumps([REPORT]))
    st_tokenizer.save_pretrained(root)
    write_card_with_evaluations(root)
    return root


@pytest.mark.parametrize("upload_mode", ["regular", "lfs"])
def test_push_delivers_every_file_byte_for_byte(hub_server, model_dir, tmp_path, monkeypatch, upload_mode):
    from huggingface_hub import HfApi, constants, hf_hub_download

    if upload_mode == "lfs":  # the git-LFS path: the stand-in has no Xet storage (see tests/hub_server.py)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        hub_server.upload_mode = "lfs"
    before = fingerprint(model_dir)

    url = push_to_hub(model_dir, REPO, token=hub_server.token)  # endpoint from $HF_ENDPOINT, set by the fixture

    assert re.fullmatch(rf"{hub_server.url}/{REPO}/commit/[0-9a-f]{{40}}", url)
    assert hub_server.repo_files(REPO) == pushed_view(model_dir, REPO)
    expected_lfs = {"st_modules.safetensors", "adapter_model.safetensors"} if upload_mode == "lfs" else set()
    assert hub_server.lfs_paths(REPO) == expected_lfs
    assert fingerprint(model_dir) == before

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    assert sorted(api.list_repo_files(REPO)) == sorted(before)
    info = api.model_info(REPO)
    assert info.sha == url.rsplit("/", 1)[1]
    assert info.card_data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.library_name == "peft"  # an adapter; its card names the base model's Hub id
    for name in ("st_modules.safetensors", "st_forecaster_config.json", "tokenizer.json"):
        path = hf_hub_download(REPO, name, endpoint=hub_server.url, token=hub_server.token,
                               cache_dir=tmp_path / "hf_cache")
        assert Path(path).read_bytes() == (model_dir / name).read_bytes()


def test_checkpoints_and_tensorboard_runs_stay_local(hub_server, model_dir):
    pushed = pushed_view(model_dir, REPO)
    for extra in ("checkpoint-2/optimizer.pt", "checkpoint-2/adapter_model.safetensors", "runs/Nov21/events.out"):
        (model_dir / extra).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / extra).write_bytes(b"not for the hub")
    push_to_hub(model_dir, REPO, token=hub_server.token, endpoint=hub_server.url)
    assert hub_server.repo_files(REPO) == pushed


def test_second_push_commits_only_changes(hub_server, model_dir):
    first = push_to_hub(model_dir, REPO, token=hub_server.token, endpoint=hub_server.url)
    commits = hub_server.commits(REPO)

    assert push_to_hub(model_dir, REPO, token=hub_server.token, endpoint=hub_server.url) == first
    assert hub_server.commits(REPO) == commits  # nothing changed: no empty commit

    write_model_card(model_dir, recipe={**RECIPE, "lora_r": 16})
    third = push_to_hub(model_dir, REPO, token=hub_server.token, endpoint=hub_server.url, commit_message="card")
    assert third != first
    assert hub_server.commits(REPO)[-1] == (third.rsplit("/", 1)[1], "card")
    assert hub_server.repo_files(REPO) == pushed_view(model_dir, REPO)


def test_no_token_is_a_clear_error_and_nothing_is_sent(hub_server, model_dir):
    before = fingerprint(model_dir)
    with pytest.raises(HubError, match=r"no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`"
                                       r"; nothing was uploaded and .*smoke-forecaster is unchanged"):
        push_to_hub(model_dir, REPO)
    assert hub_server.requests == []
    assert fingerprint(model_dir) == before


def test_token_from_environment(hub_server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    push_to_hub(model_dir, REPO)
    assert hub_server.repo_files(REPO) == pushed_view(model_dir, REPO)


def test_wrong_token_is_rejected(hub_server, model_dir):
    before = fingerprint(model_dir)
    with pytest.raises(HubError, match=rf"the Hub at {hub_server.url} rejected the token \(401\).*unchanged"):
        push_to_hub(model_dir, REPO, token="hf_not_the_right_one")
    assert hub_server.repos == {}
    assert fingerprint(model_dir) == before


def test_unreachable_hub_names_the_endpoint(model_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # offline mode would stop the request before the socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    before = fingerprint(model_dir)
    with pytest.raises(HubError, match=rf"cannot reach the Hub at {endpoint} \(ConnectError.*smoke-forecaster is "
                                       "unchanged"):
        push_to_hub(model_dir, REPO, token="hf_any", endpoint=endpoint)
    assert fingerprint(model_dir) == before


def test_offline_mode_is_a_clear_error(hub_server, model_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        push_to_hub(model_dir, REPO, token=hub_server.token)
    assert hub_server.requests == []


def test_incomplete_directory_names_missing_files(hub_server, model_dir, tmp_path):
    (model_dir / "st_forecaster_config.json").unlink()
    for path in model_dir.glob("*.safetensors"):
        path.unlink()
    with pytest.raises(HubError, match=r"missing st_forecaster_config.json, \*\.safetensors"):
        push_to_hub(model_dir, REPO, token=hub_server.token)
    with pytest.raises(HubError, match="no such directory"):
        push_to_hub(tmp_path / "nowhere", REPO, token=hub_server.token)
    assert hub_server.requests == []
    assert REQUIRED_FILES == ("README.md", "st_forecaster_config.json", "*.safetensors")


def test_complete_directory_passes_the_check(model_dir):
    assert check_model_dir(model_dir) == model_dir


def test_model_card_front_matter_recipe_and_metrics(model_dir):
    from huggingface_hub import ModelCard

    text = (model_dir / "README.md").read_text()
    front, body = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL).groups()
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "peft" and meta["base_model_relation"] == "adapter"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub id, not the local alias
    assert meta["datasets"] == ["synthetic-small"] and meta["pipeline_tag"] == "time-series-forecasting"
    assert {"time-series-forecasting", "spatio-temporal", "st_instruct", "lora"} <= set(meta["tags"])
    # the model-index holds the forecaster's own row, metric by metric (WAPE None: not reported)
    results = ModelCard(text).data.eval_results
    assert {(r.metric_name, r.metric_value) for r in results} == {("MAE", 3.25), ("RMSE", 5.5), ("MAPE", 0.21)}
    assert {(r.dataset_name, r.dataset_split, r.dataset_config) for r in results} == {
        ("synthetic-small", "test", "in-domain/1")}
    assert body.startswith(f"\n# {model_dir.name}: an st_instruct forecaster on HuggingFaceTB/SmolLM2-135M-Instruct")
    assert f'load_forecaster("{REPO_PLACEHOLDER}")' in body and 'get_dataset("synthetic-small")' in body
    recipe_block = re.search(r"```yaml\n(.*?)```", body, re.DOTALL).group(1)
    assert yaml.safe_load(recipe_block) == RECIPE
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in body.splitlines() if line.startswith("| ") and "model" not in line.split("|")[1]}
    assert rows["st_forecaster"][:4] == ["3.250", "5.500", "0.210", "n/a"]
    assert rows["historical_average"][:4] == ["4.000", "6.000", "0.300", "0.250"]
    assert "Controls**: `st_forecaster_no_llm`" in body and "in-domain/1" in body
    assert "History 12 -> horizon 12 steps, 3 windows" in body


def test_model_card_without_metrics_or_recipe(tmp_path):
    path = write_model_card(tmp_path / "m")
    text = path.read_text()
    assert path.name == "README.md"
    assert "(not evaluated yet" in text and "(not recorded)" in text
    assert "model-index" not in text and "base_model" not in text


def test_push_verb_of_the_cli(tmp_path, hub_server, capsys):
    """`st-instruct push DIR --repo-id` through the local Hub stand-in (no hub access here, docs/design.md §8)."""
    from st_instruct.cli import main

    directory = tmp_path / "model"
    directory.mkdir()
    write_model_card(directory)
    (directory / "st_forecaster_config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(directory / "st_modules.safetensors"))
    assert main(["push", str(directory), "--repo-id", "user/cli-model", "--token", hub_server.token]) == 0
    assert "pushed" in capsys.readouterr().out
    files = hub_server.repo_files("user/cli-model")
    assert files["st_modules.safetensors"] == (directory / "st_modules.safetensors").read_bytes()
    assert main(["push", str(directory), "--repo-id", "user/cli-model"]) == 2  # no token: one clear line
    assert "no Hugging Face token" in capsys.readouterr().err


def test_build_data_writes_a_dataset_card(tmp_path, tiny_backbone_dir):
    from datasets import load_from_disk
    from huggingface_hub import DatasetCard

    from st_instruct.cli import main

    out = tmp_path / "data"
    assert main(["build-data", "smoke_sft", "--model_name_or_path", str(tiny_backbone_dir), "--dataset_cache_dir",
                 str(tmp_path / "cache"), "--output", str(out)]) == 0
    card = DatasetCard.load(out / "README.md")
    assert card.data.task_categories == ["time-series-forecasting"] and "st_instruct" in card.data.tags
    text = card.text
    for fact in ("`train`: 16 samples", "[T, N, C] = [1344, 12, 2]", "inflow (trips/h)", "**z-scored**",
                 "value = scaled * scaler_std + scaler_mean", "L = 12 history steps", "C = 2 channel(s)",
                 "`forecast_node@1`", "history_mask", "granularity: node"):
        assert fact in text, fact
    assert len(load_from_disk(str(out))["train"]) == 16  # the card does not disturb the saved dataset
