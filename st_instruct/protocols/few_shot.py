"""Few-shot adaptation: fine-tune a trained forecaster on the first fraction of a target dataset's train split.

``st-instruct evaluate --model DIR --dataset NAME --few-shot 0.05`` calls :func:`few_shot_finetune`, then evaluates
the result on the target's test split. The protocol of the few-shot forecasting literature (ST-LLM, UniST,
UrbanGPT): the model sees only the *earliest* ``fraction`` of the target's training windows (a contiguous stretch,
so no window overlaps the validation or test periods), then is tested on the usual test split.

Version 2 (``few-shot/2``): the forecaster is rebuilt as the recipe built it (same backbone, freeze plan, ST module
sizes) but with its ST encoder trainable even where the recipe froze a pretrained one (``st_encoder_freeze``: the
whole forecaster adapts, the ST modules at the recipe's ``st_learning_rate``), its trained weights restored, and
trained on with the recipe's optimiser settings for at most ``max_passes`` passes over the few-shot samples (or
``steps`` optimizer steps). The loss on the first ``validation_windows`` windows of the target's validation split
(at most ``validation_samples`` of their samples, a seeded subset: a node-level model has one sample per node and
window) is measured before training and after every pass, or every fifth of the step budget when a pass is longer;
training stops after ``patience`` measurements without a better one, and the weights of the best one are kept
(:class:`KeepBestOnValidation`), so a fine-tune that only hurts keeps the source weights. Version 1 trained one
pass with the encoder as the recipe left it, without validation. The output folder is a normal forecaster folder
plus ``few_shot.json`` (source model, fraction, the number of train windows used);
:func:`~st_instruct.protocols.evaluate.evaluate_forecaster` reads it, names the protocol and fits the baselines on
the same few-shot windows. The z-score statistics of the target still come from its whole train split (as the
windows are built), a mild advantage shared by every model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import yaml
from transformers import PrinterCallback, TrainerCallback

from st_instruct.configs import parse_recipe, recipe_dict, train_dataclasses
from st_instruct.data.loaders import load_series
from st_instruct.data.profile import write_data_profiles
from st_instruct.data.windows import build_windows
from st_instruct.model_dir import FEW_SHOT_FILE, RECIPE_FILE, find_recipe, save_template_copy, trained_data_config
from st_instruct.models.card import write_model_card
from st_instruct.models.forecaster import STForecasterConfig
from st_instruct.models.saving import load_forecaster_weights, read_backbone_source
from st_instruct.outputs import check_writable, staged_output
from st_instruct.protocols.evaluate import evaluation_config
from st_instruct.samples.builder import build_split_table, plan_source
from st_instruct.samples.prompts import load_template
from st_instruct.samples.tokenize import tokenize_dataset
from st_instruct.training.run import build_forecaster, build_trainer

# what a few-shot fine-tune adapts (few_shot_finetune's plan)
FEW_SHOT_PLANS = ("whole", "prompt", "scratch")


class KeepBestOnValidation(TrainerCallback):
    """Early stopping on the validation loss with the best weights kept in memory (no checkpoint is written): every
    evaluation's ``eval_loss`` is recorded in :attr:`evaluations`; the trainable weights of the lowest are copied,
    training stops after ``patience`` evaluations without a lower one, and :meth:`restore` puts the best back."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.evaluations: list[dict[str, float]] = []
        self.best: dict[str, torch.Tensor] = {}
        self.best_step, self.best_loss, self.since_best = 0, math.inf, 0

    def on_evaluate(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = float((metrics or {})["eval_loss"])
        self.evaluations.append({"step": state.global_step, "loss": loss})
        if loss < self.best_loss:
            self.best_step, self.best_loss, self.since_best = state.global_step, loss, 0
            self.best = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
            return
        self.since_best += 1
        if self.since_best >= self.patience:
            control.should_training_stop = True

    def restore(self, model: torch.nn.Module) -> None:
        """Copy the best evaluation's trainable weights back into ``model``."""
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in self.best:
                    parameter.copy_(self.best[name])


def few_shot_train_windows(num_train_windows: int, fraction: float) -> int:
    """How many of the first train windows a few-shot ``fraction`` keeps (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--few-shot must be a fraction in (0, 1], found {fraction}")
    return max(1, math.ceil(fraction * num_train_windows))


def few_shot_finetune(model_dir: str | Path, dataset: str, fraction: float, output_dir: str | Path, *,
                      data_dir: str | None = None, channels: list[str] | None = None, start: str | None = None,
                      end: str | None = None, steps: int | None = None, broadcast_channels: bool = False,
                      seed: int = 0, spec: dict[str, Any] | None = None, progress: bool = True,
                      overwrite: bool = False, max_passes: int = 10, patience: int = 2,
                      validation_windows: int = 32, validation_samples: int = 256, plan: str = "whole",
                      prompt_tokens: int = 4, prompt_learning_rate: float = 0.01) -> Path:
    """Fine-tune the forecaster in ``model_dir`` on the first ``fraction`` of ``dataset``'s train windows and save
    it to ``output_dir`` (returned): at most ``max_passes`` passes over the few-shot samples (or ``steps`` optimizer
    steps), early-stopped with ``patience`` on the loss of the first ``validation_windows`` validation windows
    (module docstring);
    ``broadcast_channels`` trains a multi-channel model on a one-channel dataset (see ``STDataCollator``); ``spec``
    is the dataset specification given for ``dataset`` (``get_dataset`` keywords; in-domain the recipe's fills the
    rest, see ``evaluation_config``), saved in the new folder's recipe.yaml so its evaluation uses it too.
    ``progress=False`` turns off the trainer's progress bar and its per-step log lines (``disable_tqdm``).

    ``plan`` (:data:`FEW_SHOT_PLANS`, ``--few-shot-plan``): what adapts -- ``whole`` (few-shot/2: every weight the
    recipe trains, the encoder included), ``prompt`` (PromptST: a fresh soft prompt of ``prompt_tokens`` virtual
    tokens and the head's output layer on the frozen forecaster, ``freeze_plan: prompt`` with ``model_dir`` as
    ``base_forecaster``, both at ``prompt_learning_rate``, recipes/promptst_tune.yaml's rate; the folder is an
    attribute adapter naming it) or ``scratch`` (the recipe's model built
    afresh -- no weight of ``model_dir``, nor its pretrained encoder -- and trained on the same windows, the same
    way). ``few_shot.json`` records the plan, the trainable weights and the fine-tune's seconds.

    The folder is written staged (:func:`~st_instruct.outputs.staged_output`): an existing one is refused before any
    work unless ``overwrite`` (``--overwrite``), and replaced only once the new one is complete."""
    if plan not in FEW_SHOT_PLANS:
        raise ValueError(f"--few-shot-plan must be one of {', '.join(FEW_SHOT_PLANS)}, found {plan!r}")
    check_writable(output_dir, overwrite, "--overwrite", "an earlier few-shot model")
    source, _ = read_backbone_source(model_dir)  # names missing files before anything slow
    few_shot_train_windows(1, fraction)  # checks the fraction
    if steps is not None and steps < 1:
        raise ValueError(f"--few-shot-steps must be >= 1, found {steps}")
    if min(max_passes, patience, validation_windows, validation_samples) < 1:
        raise ValueError(f"max_passes, patience, validation_windows and validation_samples must be >= 1, found "
                         f"{max_passes}, {patience}, {validation_windows}, {validation_samples}")
    output_dir = Path(output_dir)
    recipe_path = str(find_recipe(model_dir))
    template = trained_data_config(model_dir).template  # the checksum-verified file (refuses an unverified one)
    # the whole forecaster adapts: a pretrained encoder the recipe froze trains too (few-shot/2)
    plan_keys = {"whole": [], "scratch": [],
                 "prompt": ["--freeze_plan", "prompt", "--base_forecaster", str(model_dir), "--soft_prompt_tokens",
                            str(prompt_tokens), "--train_st_token_embeddings", "false",
                            "--learning_rate", str(prompt_learning_rate), "--st_learning_rate",
                            str(prompt_learning_rate)]}[plan]
    data_config, model_config, sft_config = parse_recipe(train_dataclasses(), [recipe_path, "--template", template,
                                                                               "--st_encoder_freeze", "false",
                                                                               *plan_keys])
    target, _ = evaluation_config(data_config, dataset, data_dir, channels, start, end, spec=spec)
    trained_channels = STForecasterConfig.load(model_dir).channels
    # every weight comes from model_dir next: the pretrained encoder folder the recipe started from is not read.
    # a random_llm control's backbone is redrawn from the seed it was drawn with (its saved BackboneSource)
    backbone_seed = source.random_init_seed
    build_seed = seed if backbone_seed is None else backbone_seed
    windows = build_windows(_load(target), target.history, target.horizon, target.split, stride=target.stride)
    kept = few_shot_train_windows(windows.num_windows("train"), fraction)
    if windows.num_windows("validation") == 0:
        raise ValueError(f"dataset {dataset!r} has no validation window to stop the few-shot fine-tuning on; use a "
                         "recipe split with a validation part")
    checked = min(validation_windows, windows.num_windows("validation"))
    started = time.perf_counter()
    model, tokenizer, built, report = build_forecaster(
        target, model_config, build_seed, channels=trained_channels if broadcast_channels else None,
        load_pretrained=False, make_samples=lambda tok: few_shot_samples(target, kept, checked, tok))
    if model.st_config.channels != trained_channels:
        raise ValueError(f"dataset {dataset!r} has {model.st_config.channels} channel(s) but the forecaster in "
                         f"{model_dir} was trained on {trained_channels}; pick matching --channels, or pass "
                         "--broadcast-channels for a one-channel dataset")
    if plan == "whole":  # prompt: the base's weights are loaded already; scratch: none of them
        load_forecaster_weights(model, model_dir)
    train, validation = built["train"], built["validation"]
    if len(validation) > validation_samples:
        kept_samples = np.random.default_rng(seed).choice(len(validation), validation_samples, replace=False)
        validation = validation.select(np.sort(kept_samples))
    per_step = sft_config.per_device_train_batch_size * sft_config.gradient_accumulation_steps
    pass_steps = max(1, math.ceil(len(train) / per_step))
    steps = steps or max_passes * pass_steps
    eval_steps = min(pass_steps, max(1, math.ceil(steps / 5)))
    keeper = KeepBestOnValidation(patience)
    with staged_output(output_dir, overwrite=overwrite) as staging:
        # the recipe's optimiser settings, with this run's length, folder and seed (and no checkpoints or evaluation)
        _, _, sft_config = parse_recipe(train_dataclasses(), [
            recipe_path, "--template", template, *plan_keys, "--output_dir", str(staging), "--max_steps", str(steps),
            "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", str(eval_steps),
            "--seed", str(seed), "--disable_tqdm", str(not progress).lower()])
        trainer = build_trainer(model, target, model_config, sft_config, train, tokenizer, backbone_seed,
                                broadcast_channels=trained_channels if broadcast_channels else None,
                                eval_dataset=validation, callbacks=[keeper])
        if not progress:
            trainer.remove_callback(PrinterCallback)  # what the trainer prints per logging step instead of its bar
        trainer.evaluate()  # the source weights' validation loss: kept if no pass beats it
        trainer.train()
        keeper.restore(model)
        trainer.save_model(str(staging))
        trainer.save_state()
        save_template_copy(staging, target)  # the few-shot folder ships its template too
        write_data_profiles(staging, target)  # what forecasting the target's new values needs (st_instruct.inference)
        sft_config.output_dir = str(output_dir)  # what recipe.yaml records
        recipe = recipe_dict(target, model_config, sft_config)
        (staging / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
        record = {"source_model": str(model_dir), "pretrained_on": [entry.name for entry in data_config.corpus()],
                  "dataset": dataset, "fraction": fraction, "train_windows": kept,
                  "of_train_windows": windows.num_windows("train"), "train_samples": len(train),
                  "steps": sft_config.max_steps, "broadcast_channels": broadcast_channels,
                  "protocol_version": "few-shot/2", "plan": plan, "trainable": report.trainable,
                  "fine_tune_seconds": round(time.perf_counter() - started, 1),
                  "encoder": "frozen" if plan == "prompt" else "trained", "validation_windows": checked,
                  "validation_samples": len(validation), "eval_steps": eval_steps,
                  "steps_run": trainer.state.global_step, "evaluations": keeper.evaluations,
                  "best_step": keeper.best_step}
        (staging / FEW_SHOT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_model_card(staging, recipe=recipe)  # reads few_shot.json: the source, its datasets and this one
    return output_dir


def few_shot_samples(target: Any, train_windows: int, validation_windows: int, tokenizer: Any) -> Any:
    """The tokenised samples of the first ``train_windows`` train and ``validation_windows`` validation windows of the
    one-dataset config ``target`` (every node of each), built as :func:`~st_instruct.samples.builder.build_dataset`
    builds them but only those windows: a node-level model has a sample per node and window, and the target's other
    windows (millions of samples on a year of hourly data) are never read."""
    plan = plan_source(_load(target), target)
    plan.window_index = {"train": np.arange(train_windows), "validation": np.arange(validation_windows)}
    template = load_template(target.template)
    built = datasets.DatasetDict({split: datasets.Dataset(build_split_table([plan], split, template,
                                                                            target.granularity))
                                  for split in plan.window_index})
    return tokenize_dataset(built, tokenizer, max_length=None)


def _load(config: Any) -> Any:
    """The one series of a single-dataset data config, loaded as the builder loads it."""
    (series,) = load_series(config)
    return series
