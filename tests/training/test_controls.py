"""The controls of a forecaster recipe (Tan et al., NeurIPS 2024): ``control: no_llm`` (encoder + projector + head,
no backbone) and ``control: random_llm`` (the same architecture, random backbone weights) train through the real
trainer with the recipe's budget, save and load like the forecaster, and ``st-instruct evaluate --controls`` scores
them on the forecaster's windows."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from st_instruct.cli import main
from st_instruct.configs import parse_recipe, train_dataclasses
from st_instruct.model_dir import MODEL_ROW
from st_instruct.models.patching import unwrap
from st_instruct.models.saving import load_forecaster
from st_instruct.protocols.evaluate import evaluate_forecaster
from st_instruct.training.run import build_forecaster, train

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_sft.yaml"
NO_LLM, RANDOM_LLM = f"{MODEL_ROW}_no_llm", f"{MODEL_ROW}_random_llm"


def smoke_flags(backbone: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    return [str(SMOKE), "--model_name_or_path", str(backbone), "--dataset_cache_dir", str(cache), "--report_to",
            "none", "--output_dir", str(output), "--max_steps", "2", "--save_strategy", "no", *extra]


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny Llama standing for a pretrained backbone. Built under seed 7: the shared tiny backbone is drawn by
    ``from_config`` under seed 0, exactly the weights the random-LLM control draws with the recipe's seed 0."""
    from tiny import build_tiny_backbone
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    path = tmp_path_factory.mktemp("pretrained")
    build_tiny_backbone("llama", vocab_size=len(tokenizer), hidden_size=64, seed=7).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pretrained_dir):
    """The smoke recipe's forecaster and both its controls, 2 steps each on a tiny Llama."""
    folders = {}
    for control in ("none", "no_llm", "random_llm"):
        output = tmp_path_factory.mktemp(f"model-{control}")
        flags = smoke_flags(pretrained_dir, output, tmp_path_factory.mktemp("built"), "--control", control)
        folders[control] = train(*parse_recipe(train_dataclasses(), flags))
    return folders


def trainer_log(folder: Path) -> list[dict]:
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def test_no_llm_control_trains_without_any_backbone_parameter(trained, pretrained_dir, tmp_path):
    folder = trained["no_llm"]
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["control"] == "no_llm"
    assert json.loads((folder / "st_backbone.json").read_text())["format"] == "none"
    model, _ = load_forecaster(folder)
    assert model.backbone is None
    names = [name for name, _ in model.named_parameters()]
    assert names and not [name for name in names if name.startswith("backbone")]
    assert {name.split(".", 1)[0] for name in names} == set(model.st_modules())
    forecaster, _ = load_forecaster(trained["none"])
    st_names = [name for name, _ in forecaster.named_parameters() if not name.startswith("backbone.")]
    assert sorted(names) == sorted(st_names)  # the same ST modules, the backbone's width included
    for name, parameter in model.named_parameters():
        assert parameter.shape == dict(forecaster.named_parameters())[name].shape, name
    # trained through the trainer for the recipe's 2 steps, on the regression loss alone
    steps = [entry for entry in trainer_log(folder) if "loss_reg" in entry]
    assert [entry["step"] for entry in steps] == [1, 2] and all(entry["loss_lm"] == 0 for entry in steps)
    # and the steps changed the weights the same seed initialises
    flags = smoke_flags(pretrained_dir, tmp_path / "unused", tmp_path / "built", "--control", "no_llm")
    data_config, model_config, sft_config = parse_recipe(train_dataclasses(), flags)
    fresh, _, _, report = build_forecaster(data_config, model_config, sft_config.seed)
    assert report.trainable == report.total == sum(p.numel() for p in model.parameters())
    assert not torch.equal(fresh.regression_head.out.weight, model.regression_head.out.weight)


def test_the_model_cards_of_the_controls_say_what_they_do_not_use(trained):
    assert "This is the" not in (trained["none"] / "README.md").read_text()
    no_llm = (trained["no_llm"] / "README.md").read_text()
    assert "no-LLM control" in no_llm and "is *not* part of this model" in no_llm
    random_llm = (trained["random_llm"] / "README.md").read_text()
    assert "random-LLM control" in random_llm and "randomly initialised weights (drawn with seed 0" in random_llm


def test_random_llm_control_has_the_forecasters_architecture_with_other_backbone_weights(trained, pretrained_dir):
    from transformers import AutoModelForCausalLM

    folder = trained["random_llm"]
    source = json.loads((folder / "st_backbone.json").read_text())
    assert source["format"] == "adapter" and source["random_init_seed"] == 0  # the smoke recipe's LoRA and seed
    control, _ = load_forecaster(folder)
    forecaster, _ = load_forecaster(trained["none"])
    shapes = {name: p.shape for name, p in control.named_parameters()}
    assert shapes == {name: p.shape for name, p in forecaster.named_parameters()}
    assert [entry["step"] for entry in trainer_log(folder) if "loss_reg" in entry] == [1, 2]
    pretrained = AutoModelForCausalLM.from_pretrained(pretrained_dir).state_dict()
    base = {name: p for name, p in unwrap(control.backbone).state_dict().items() if "lora_" not in name}
    compared = 0
    for name, weight in pretrained.items():
        key = next(k for k in base if k.replace(".base_layer", "") == name)
        if weight.dim() < 2:  # norms start at one in both
            continue
        rows = min(weight.shape[0], base[key].shape[0])  # the ST tokens grew the embedding tables
        assert not torch.allclose(weight[:rows], base[key][:rows]), name
        compared += 1
    assert compared >= 8
    # the backbone the forecaster loads is the pretrained one
    plain = {name.replace(".base_layer", ""): p for name, p in unwrap(forecaster.backbone).state_dict().items()
             if "lora_" not in name}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(plain[name], pretrained[name])
    # and a second load draws the same random weights (rebuilt from random_init_seed, not saved)
    again, _ = load_forecaster(folder)
    assert torch.equal(unwrap(again.backbone).state_dict()[f"{name[:-len('weight')]}base_layer.weight"],
                       base[f"{name[:-len('weight')]}base_layer.weight"])


def test_evaluate_controls_scores_them_on_the_forecasters_windows(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(trained["none"]), "--dataset", "synthetic-small", "--max-windows", "3",
                 "--models", "last_value", "--controls", str(trained["no_llm"]), str(trained["random_llm"]),
                 "--output", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {MODEL_ROW, NO_LLM, RANDOM_LLM, "last_value"}
    assert report["controls"] == {NO_LLM: str(trained["no_llm"]), RANDOM_LLM: str(trained["random_llm"])}
    assert report["windows"]["test"] == 3
    for name in (NO_LLM, RANDOM_LLM):
        assert len(report["results"][name]["per_horizon"]) == 12 and report["results"][name]["MAE"] is not None
        assert name in printed and name in (out / "report.md").read_text()
    # each row is what the control predicts on its own on the same windows: loaded again, the same forecasts
    _, together = evaluate_forecaster(trained["none"], "synthetic-small", max_windows=3, models=["last_value"],
                                      progress=False, controls=[trained["no_llm"], trained["random_llm"]])
    for control, name in (("no_llm", NO_LLM), ("random_llm", RANDOM_LLM)):
        alone, arrays = evaluate_forecaster(trained[control], "synthetic-small", max_windows=3,
                                            models=["last_value"], progress=False)
        assert alone["windows"]["test"] == 3
        np.testing.assert_array_equal(arrays["starts"], together["starts"])
        np.testing.assert_allclose(together["predictions"][name], arrays["predictions"][MODEL_ROW], rtol=1e-6,
                                   atol=1e-5)
        assert alone["results"][MODEL_ROW]["MAE"] == pytest.approx(report["results"][name]["MAE"], rel=1e-5)
        assert alone["results"]["last_value"]["MAE"] == report["results"]["last_value"]["MAE"]
    # and they are forecasts of their own, not the forecaster's
    assert not np.allclose(together["predictions"][NO_LLM], together["predictions"][MODEL_ROW])
    assert not np.allclose(together["predictions"][RANDOM_LLM], together["predictions"][MODEL_ROW])


def test_evaluate_trains_the_controls_from_the_models_own_recipe_then_reuses_them(trained, tmp_path, capsys):
    """``--train-controls``: the control is trained from the forecaster's saved recipe.yaml (same budget: the
    evaluation's recipe check passes) into the sibling MODEL-no-llm, scored, and reused by the next call."""
    import shutil

    from st_instruct.model_dir import control_dir

    model = tmp_path / "model"
    shutil.copytree(trained["none"], model)
    args = ["evaluate", "--model", str(model), "--dataset", "synthetic-small", "--max-windows", "2", "--models",
            "last_value", "--train-controls", "no_llm", "--output", str(tmp_path / "e"), "--quiet"]
    assert main(args) == 0
    folder = control_dir(model, "no_llm")
    assert folder == tmp_path / "model-no-llm" and yaml.safe_load((folder / "recipe.yaml").read_text())["control"] \
        == "no_llm"
    report = json.loads((tmp_path / "e" / "results.json").read_text())
    assert report["controls"] == {NO_LLM: str(folder)} and report["results"][NO_LLM]["MAE"] is not None
    steps = [entry["step"] for entry in trainer_log(folder) if "loss_reg" in entry]
    assert steps == [1, 2]  # the recipe's budget
    stamp = (folder / "st_modules.safetensors").stat().st_mtime_ns
    assert main([*args[:-3], "--output", str(tmp_path / "e2"), "--quiet"]) == 0
    assert "reusing" in capsys.readouterr().out and (folder / "st_modules.safetensors").stat().st_mtime_ns == stamp


def test_few_shot_fine_tunes_each_control_on_the_same_windows_and_steps(trained, tmp_path):
    """``--few-shot`` with ``--controls``: every control is fine-tuned as the forecaster is (same first windows,
    same steps), and the rows are the tuned controls; the random-LLM control keeps the backbone it was drawn with."""
    from safetensors.torch import load_file

    tuned, out = tmp_path / "tuned", tmp_path / "eval"
    code = main(["evaluate", "--model", str(trained["none"]), "--dataset", "synthetic-small", "--few-shot", "0.005",
                 "--few-shot-steps", "1", "--few-shot-output", str(tuned), "--max-windows", "2", "--models",
                 "last_value", "--controls", str(trained["no_llm"]), str(trained["random_llm"]), "--output",
                 str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["protocol"].startswith("few-shot") and set(report["results"]) == {MODEL_ROW, NO_LLM, RANDOM_LLM,
                                                                                   "last_value"}
    records = {}
    for control, name in (("no_llm", NO_LLM), ("random_llm", RANDOM_LLM)):
        folder = tmp_path / f"tuned-{trained[control].name}"
        assert report["controls"][name] == str(folder)
        records[control] = json.loads((folder / "few_shot.json").read_text())
        before = load_file(trained[control] / "st_modules.safetensors")
        after = load_file(folder / "st_modules.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before), control
    forecaster = json.loads((tuned / "few_shot.json").read_text())
    for record in records.values():
        assert {k: record[k] for k in ("train_windows", "train_samples", "steps")} == \
            {k: forecaster[k] for k in ("train_windows", "train_samples", "steps")}
    assert json.loads((tmp_path / f"tuned-{trained['random_llm'].name}" / "st_backbone.json").read_text()) == \
        json.loads((trained["random_llm"] / "st_backbone.json").read_text())


def test_few_shot_refuses_a_wrong_control_before_fine_tuning_anything(trained, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    assert main(["evaluate", "--model", str(trained["none"]), "--dataset", "synthetic-small", "--few-shot", "0.005",
                 "--few-shot-output", str(tuned), "--controls", str(trained["none"]), "--quiet"]) == 2
    assert "control: none" in capsys.readouterr().err and not tuned.exists()


def test_controls_must_be_controls_of_the_same_recipe(trained, tmp_path, capsys):
    base = ["evaluate", "--model", str(trained["none"]), "--dataset", "synthetic-small", "--max-windows", "1",
            "--models", "last_value", "--output", str(tmp_path / "e"), "--quiet", "--controls"]
    assert main([*base, str(trained["none"])]) == 2
    assert "control: none" in capsys.readouterr().err
    assert main([*base, str(trained["no_llm"]), str(trained["no_llm"])]) == 2
    assert "same control kind" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    for entry in trained["no_llm"].iterdir():
        if entry.is_file():
            (other / entry.name).write_bytes(entry.read_bytes())
    recipe = yaml.safe_load((other / "recipe.yaml").read_text())
    recipe["max_steps"] = 3
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main([*base, str(other)]) == 2
    assert "max_steps: control 3, forecaster 2" in capsys.readouterr().err
    # a recipe.yaml written before a key existed lacks it: the key's default, so an older forecaster keeps its control
    recipe.update(max_steps=2)
    del recipe["unist_prompts"]
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main([*base, str(other)]) == 0
    capsys.readouterr()
    recipe["unist_prompts"] = True
    (other / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main([*base, str(other)]) == 2
    assert "unist_prompts: control True, forecaster False" in capsys.readouterr().err


def test_no_llm_control_refuses_modules_that_live_in_the_backbone(pretrained_dir, tmp_path):
    flags = smoke_flags(pretrained_dir, tmp_path / "out", tmp_path / "built", "--control", "no_llm",
                        "--mrffn", "true", "--mrffn_init", "random")
    with pytest.raises(ValueError, match="mrffn modify the backbone's layers"):
        build_forecaster(*parse_recipe(train_dataclasses(), flags)[:2], seed=0)
