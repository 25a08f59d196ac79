"""Few-shot, version 2 (``few-shot/2``, st_instruct.protocols.few_shot): the whole forecaster adapts -- a pretrained
encoder the recipe froze trains too -- and training stops early on the target's validation loss, keeping the best
weights, the source's own included."""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from tiny import train_smoke

from st_instruct.cli import main
from st_instruct.protocols.few_shot import KeepBestOnValidation

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_the_best_validation_weights_are_kept_and_patience_stops_training():
    """Losses 1.0, 0.5, 0.7, 0.8 with patience 2: training stops at the fourth measurement and the weights of the
    second come back; a measurement no better than the first (the source weights) keeps the source."""
    model = torch.nn.Linear(2, 1)
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    keeper = KeepBestOnValidation(patience=2)
    control, snapshots = SimpleNamespace(should_training_stop=False), []
    for step, loss in enumerate([1.0, 0.5, 0.7, 0.8]):
        with torch.no_grad():
            model.weight.fill_(float(step))
        snapshots.append(model.weight.detach().clone())
        keeper.on_evaluate(None, SimpleNamespace(global_step=step * 10), control, model=model,
                           metrics={"eval_loss": loss})
        assert control.should_training_stop == (step == 3)
    keeper.restore(model)
    assert torch.equal(model.weight, snapshots[1]) and keeper.best_step == 10 and "frozen" not in keeper.best
    assert [e["loss"] for e in keeper.evaluations] == [1.0, 0.5, 0.7, 0.8]
    source = KeepBestOnValidation(patience=1)
    source.on_evaluate(None, SimpleNamespace(global_step=0), control, model=model, metrics={"eval_loss": 0.1})
    with torch.no_grad():
        model.weight.fill_(99.0)
    source.on_evaluate(None, SimpleNamespace(global_step=5), control, model=model, metrics={"eval_loss": 0.2})
    source.restore(model)
    assert source.best_step == 0 and torch.equal(model.weight, snapshots[1])


def test_few_shot_trains_the_encoder_the_recipe_froze_and_records_its_validation(tmp_path, tmp_path_factory,
                                                                                  tiny_backbone_dir):
    encoder = tmp_path / "encoder"
    assert main(["pretrain", str(RECIPES / "pretrain_forecast.yaml"), "--st_encoder", "patch", "--pretrain_steps",
                 "2", "--pretrain_output_dir", str(encoder)]) == 0
    model = train_smoke(tmp_path_factory, tiny_backbone_dir, "--st_encoder_init", str(encoder),
                        "--st_encoder_freeze", "true", steps=1)
    tuned = tmp_path / "tuned"
    assert main(["evaluate", "--model", str(model), "--dataset", "synthetic-small", "--few-shot", "0.005",
                 "--few-shot-steps", "4", "--few-shot-output", str(tuned), "--max-windows", "2", "--models",
                 "window_mean", "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    before, after = load_file(model / "st_modules.safetensors"), load_file(tuned / "st_modules.safetensors")
    encoder_keys = [key for key in before if key.startswith("st_encoder.")]
    assert encoder_keys and all(torch.equal(load_file(encoder / "encoder.safetensors")[k.removeprefix("st_encoder.")],
                                            before[k]) for k in encoder_keys)  # frozen while training
    record = json.loads((tuned / "few_shot.json").read_text())
    assert record["protocol_version"] == "few-shot/2" and record["encoder"] == "trained"
    evaluations = record["evaluations"]
    assert evaluations[0]["step"] == 0 and len(evaluations) >= 2  # the source's loss, then one per pass
    best = min(evaluations, key=lambda e: e["loss"])
    assert record["best_step"] == best["step"] and record["steps_run"] <= record["steps"]
    assert record["best_step"] == 4  # seeded: the 4 steps lowered the validation loss, so their weights were kept
    assert any(not torch.equal(before[k], after[k]) for k in encoder_keys)  # and the frozen encoder trained
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert report["protocol_version"] == "few-shot/2"


def test_the_few_shot_plans_prompt_tuning_and_from_scratch(tmp_path, tmp_path_factory, tiny_backbone_dir):
    """``--few-shot-plan prompt`` trains a fresh soft prompt and the head's output layer on the frozen model (an
    attribute adapter naming it, a few thousand weights); ``scratch`` keeps no weight of the model. Both record
    their plan, trainable weights and seconds, and are scored as few-shot on the same windows."""
    model = train_smoke(tmp_path_factory, tiny_backbone_dir, steps=1)
    control = train_smoke(tmp_path_factory, tiny_backbone_dir, "--control", "no_llm", steps=1)
    records = {}
    for plan in ("prompt", "scratch"):
        tuned = tmp_path / plan
        assert main(["evaluate", "--model", str(model), "--dataset", "synthetic-small", "--few-shot", "0.005",
                     "--few-shot-steps", "2", "--few-shot-plan", plan, "--few-shot-output", str(tuned),
                     "--controls", str(control), "--max-windows", "2", "--models", "window_mean", "--output",
                     str(tmp_path / f"eval-{plan}"), "--quiet"]) == 0
        records[plan] = json.loads((tuned / "few_shot.json").read_text())
        report = json.loads((tmp_path / f"eval-{plan}" / "results.json").read_text())
        assert report["protocol_version"] == "few-shot/2" and records[plan]["plan"] == plan
        assert "st_forecaster_no_llm" in report["results"]  # the control adapted the same way, a like-for-like row
        assert records[plan]["fine_tune_seconds"] > 0
    source = json.loads((model / "st_backbone.json").read_text())
    adapter = json.loads((tmp_path / "prompt" / "st_backbone.json").read_text())
    assert adapter["format"] == "attribute" and adapter["base_forecaster"] == str(model) and source["format"] != \
        "attribute"
    saved = load_file(tmp_path / "prompt" / "st_modules.safetensors")
    assert sorted({key.split(".")[0] for key in saved}) == ["regression_head", "st_soft_prompt"]
    assert records["prompt"]["trainable"] == sum(value.numel() for value in saved.values())
    assert records["prompt"]["encoder"] == "frozen"
    assert records["scratch"]["trainable"] > records["prompt"]["trainable"]
    before = load_file(model / "st_modules.safetensors")
    scratch = load_file(tmp_path / "scratch" / "st_modules.safetensors")
    encoder_keys = [key for key in before if key.startswith("st_encoder.")]
    assert encoder_keys and not any(torch.equal(before[key], scratch[key]) for key in encoder_keys)
