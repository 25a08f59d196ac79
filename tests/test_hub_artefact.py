"""A trained forecaster as a Hub artefact, end to end against the local Hub stand-in (tests/hub_server.py; no hub
access here, docs/design.md §8): ``push_to_hub: true`` in a recipe pushes what ``st-instruct push`` pushes; checkpoint
folders carry the project's card; ``st-instruct evaluate`` fills the card's model-index with exactly the metrics of
its ``results.json``; the card's usage snippet runs as written, downloading the model from the (stand-in) Hub."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from st_instruct.cli import main
from st_instruct.models.card import REPO_PLACEHOLDER

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke_sft.yaml"


def train_flags(backbone: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", str(SMOKE), "--model_name_or_path", str(backbone), "--dataset_cache_dir", str(cache),
            "--report_to", "none", "--output_dir", str(output), "--max_steps", "2", "--save_steps", "1",
            "--save_total_limit", "1", "--disable_tqdm", "true", *extra]


@pytest.fixture
def pushed(hub_server, tiny_backbone_dir, tmp_path):
    """``(output folder, api)``: a smoke run with ``push_to_hub: true`` into ``user/by-recipe``, then
    ``st-instruct push`` of the same folder into ``user/by-verb``."""
    output = tmp_path / "smoke"
    assert main(train_flags(tiny_backbone_dir, output, tmp_path / "built", "--push_to_hub", "true",
                            "--hub_model_id", "user/by-recipe", "--hub_token", hub_server.token)) == 0
    assert main(["push", str(output), "--repo-id", "user/by-verb", "--token", hub_server.token]) == 0
    return output, HfApi(endpoint=hub_server.url, token=hub_server.token)


def test_push_to_hub_in_a_recipe_pushes_what_the_push_verb_pushes(pushed, hub_server):
    output, api = pushed
    by_recipe, by_verb = hub_server.repo_files("user/by-recipe"), hub_server.repo_files("user/by-verb")
    assert set(by_recipe) == set(by_verb)
    assert {"README.md", "recipe.yaml", "st_data_profile.json", "st_backbone.json", "adapter_model.safetensors",
            "st_modules.safetensors", "tokenizer.json"} <= set(by_recipe)
    assert not [name for name in by_recipe if name.startswith(("checkpoint-", "runs/"))]
    for name in by_recipe:  # byte for byte, but for the repo id each card's snippet names
        if name != "README.md":
            assert by_recipe[name] == by_verb[name] == (output / name).read_bytes(), name
    assert b'load_forecaster("user/by-recipe")' in by_recipe["README.md"]
    assert by_verb["README.md"] == (output / "README.md").read_bytes().replace(REPO_PLACEHOLDER.encode(),
                                                                                b"user/by-verb")


def test_checkpoint_folders_carry_the_project_card(pushed):
    output, _ = pushed
    checkpoint = next(output.glob("checkpoint-*"))
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.library_name == "peft" and "st_instruct" in card.data.tags
    assert "## Training recipe" in card.text and "st-instruct train recipe.yaml" in card.text
    assert yaml.safe_load(re.search(r"```yaml\n(.*?)```", card.text, re.DOTALL).group(1))["output_dir"] == \
        str(output)


def test_evaluate_fills_the_model_index_with_results_json(pushed, tmp_path):
    output, _ = pushed
    assert main(["evaluate", "--model", str(output), "--dataset", "synthetic-small", "--max-windows", "2",
                 "--models", "last_value", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    card = ModelCard.load(output / "README.md")
    index = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert index == {m: v for m, v in results["results"]["st_forecaster"].items()
                     if m in ("MAE", "RMSE", "MAPE", "WAPE") and v is not None}
    assert {(r.dataset_name, r.dataset_split, r.dataset_config) for r in card.data.eval_results} == {
        ("synthetic-small", "test", "in-domain/1")}
    assert "last_value" in card.text and "Controls**: none scored" in card.text
    # a second evaluation of the same dataset, split and protocol replaces the first; the card stays consistent
    assert main(["evaluate", "--model", str(output), "--dataset", "synthetic-small", "--max-windows", "3",
                 "--models", "last_value", "--output", str(tmp_path / "eval3"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval3" / "results.json").read_text())
    card = ModelCard.load(output / "README.md")
    assert len(card.data.eval_results) == len(index)
    assert {r.metric_name: r.metric_value for r in card.data.eval_results}["MAE"] == \
        again["results"]["st_forecaster"]["MAE"]


def test_the_card_snippet_runs_against_the_hub(pushed, hub_server, tmp_path):
    """The python block of the pushed card, run as a user runs it: a fresh interpreter, outside the repository,
    whose huggingface_hub talks to the stand-in (``HF_ENDPOINT``) and downloads the repo into an empty cache."""
    card = hub_server.repo_files("user/by-verb")["README.md"].decode()
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    assert 'load_forecaster("user/by-verb")' in snippet
    env = {**os.environ, "HF_ENDPOINT": hub_server.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "HF_TOKEN": hub_server.token}
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "window" in run.stdout and "inflow" in run.stdout
    assert any((tmp_path / "hf").rglob("st_modules.safetensors"))  # it did download the repo
    # offline, with the Hub unreachable, the cached copy is used and the network never asked
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=offline, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "inflow" in run.stdout
