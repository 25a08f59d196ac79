"""Test-time adaptation of a trained forecaster while it predicts a test sequence (``st-instruct evaluate --tta``).

Three modes (:data:`TTA_MODES`), each updating only a small named set of parameters (the recipe's
``tta_parameters``: :func:`tta_parameters`) with Adam at ``tta_learning_rate``:

``reset``
    UrbanMind (Liu et al., KDD 2025), zero-shot: before predicting a batch, ``steps`` optimiser steps of masked
    reconstruction of the batch's own history (:func:`~st_instruct.training.reconstruction.reconstruction_loss`;
    the recipe's mask family and ratio, the pretraining's families), then the forecast; the adapted weights (and
    the optimiser's state) are restored exactly after each batch. No target value is read: the batch's targets
    are dropped before the adaptation passes. (UrbanMind's released code calls an adaptation function it never
    defines; this is the method as its paper states it.)
``carry``
    the same steps, the weights and the optimiser carried over the test sequence (batches in time order).
``matured``
    ST-TTC (NeurIPS 2025): before predicting a batch, ``steps`` supervised steps (1 is ST-TTC's) on the earlier
    test samples whose every target step lies at or before the batch's issue time -- the last history step of its
    earliest sample, so the labels have fully arrived -- each sample used once, never reset. A label-using
    protocol: its rows are labelled so, and it needs no reconstruction head.

:class:`TestTimeAdapter` wraps the model's ``predict`` (the hook of
:func:`~st_instruct.evaluation.predict.scatter_predictions`); it keeps the seconds it adds and, for ``matured``,
the record of which target times each step used (:attr:`TestTimeAdapter.matured_log`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from st_instruct.configs import AdaptationConfig, RecipeError
from st_instruct.model_dir import find_recipe, read_recipe
from st_instruct.models.forecaster import regression_mask
from st_instruct.models.patching import layer_norms
from st_instruct.tasks.base import masked_mae_loss
from st_instruct.training.freeze import adapter_parameters
from st_instruct.training.reconstruction import TARGET_KEYS, reconstruction_loss, require_reconstruction_path

TTA_MODES = ("reset", "carry", "matured")
# tta_parameters' group names; any other name is an ST module's (model.st_modules())
PARAMETER_GROUPS = ("norms", "lora", "prompts")
PROMPT_MODULES = ("st_prompt", "st_soft_prompt")


@dataclass(frozen=True)
class TTASettings:
    """What ``--tta STEPS --tta-mode MODE [--tta-lr LR]`` asks for (``learning_rate`` None: the recipe's
    ``tta_learning_rate``); ``ValueError`` (one line) for a count below 1, an unknown mode or a rate <= 0."""

    steps: int
    mode: str = "reset"
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer) or self.steps < 1:
            raise ValueError(f"--tta takes the number of adaptation steps per batch, >= 1, found {self.steps!r}; "
                             "leave --tta out for no adaptation")
        if self.mode not in TTA_MODES:
            raise ValueError(f"--tta-mode must be one of {', '.join(TTA_MODES)}, found {self.mode!r}")
        if self.learning_rate is not None and not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--tta-lr must be a positive learning rate, found {self.learning_rate!r}")


def tta_parameters(model: Any, names: list[str]) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that ``names`` select, by their ``model.named_parameters()`` names: ``norms``
    (the backbone's LayerNorm / RMSNorm modules, the ST modules' LayerNorms and RevIN), ``lora`` (the PEFT adapter
    weights), ``prompts`` (UniST's memory prompt, soft prompts) or an ST module's name. ``ValueError`` for an
    unknown name, or when nothing of the model is selected."""
    modules = model.st_modules()
    unknown = [name for name in names if name not in PARAMETER_GROUPS and name not in modules]
    if unknown:
        raise ValueError(f"tta_parameters names {unknown}: neither {', '.join(PARAMETER_GROUPS)} nor an ST module of "
                         f"this forecaster ({', '.join(modules)})")
    chosen: set[int] = set()
    for name in names:
        if name == "norms":
            norms = [m for module in modules.values() for m in module.modules() if isinstance(m, nn.LayerNorm)]
            if model.backbone is not None:
                norms += layer_norms(model.backbone)
            if "st_revin" in modules:
                norms.append(modules["st_revin"])
            chosen.update(id(p) for module in norms for p in module.parameters())
        elif name == "lora":
            chosen.update(adapter_parameters(model.backbone) if model.backbone is not None else set())
        elif name == "prompts":
            chosen.update(id(p) for key in PROMPT_MODULES if key in modules for p in modules[key].parameters())
        else:
            chosen.update(id(p) for p in modules[name].parameters())
    selected = {name: p for name, p in model.named_parameters() if id(p) in chosen and p.is_floating_point()}
    if not selected:
        raise ValueError(f"tta_parameters {names} select no parameter of this forecaster (it has "
                         f"{'no backbone' if model.backbone is None else 'none of them'}); name others in the recipe")
    return selected


def adaptation_config(model_dir: str | Path) -> AdaptationConfig:
    """The :class:`~st_instruct.configs.AdaptationConfig` of the forecaster in ``model_dir``: its recipe's keys, the
    defaults for those a recipe written before them lacks."""
    recipe = read_recipe(model_dir) or {}
    names = {f.name for f in dataclasses.fields(AdaptationConfig)}
    try:
        return AdaptationConfig(**{key: value for key, value in recipe.items() if key in names})
    except RecipeError as err:
        raise ValueError(f"{find_recipe(model_dir)}: {err}") from err


def _on(batch: dict[str, Any], device: torch.device, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items() if key not in drop}


@dataclass
class _Pending:
    """A predicted batch waiting for its labels (``matured``): its samples' last target time and which were used."""

    batch: dict[str, Any]
    target_end: np.ndarray
    used: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.used = np.zeros(len(self.target_end), dtype=bool)


class TestTimeAdapter:
    """Adapts ``model`` while it predicts (module docstring): :meth:`predict` is a drop-in for ``model.predict``.

    ``step_time`` maps step indices of the evaluated series to their times (timestamps, or the indices themselves
    without a calendar); ``matured`` needs it and each batch's ``window_start`` [B] (which
    :func:`~st_instruct.evaluation.predict.scatter_predictions` adds). ``history`` / ``horizon``: the windows'
    L and P. Call :meth:`close` when done: it restores which parameters required gradients (and, for ``reset``,
    nothing else needs restoring)."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, model: Any, adaptation: AdaptationConfig, settings: TTASettings, history: int, horizon: int,
                 step_time: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0) -> None:
        if settings.mode in ("reset", "carry"):
            require_reconstruction_path(model, f"--tta-mode {settings.mode}")
        if settings.mode == "matured" and step_time is None:
            raise ValueError("--tta-mode matured needs the times of the test steps")
        self.model, self.adaptation, self.settings = model, adaptation, settings
        self.history, self.horizon, self.step_time = history, horizon, step_time
        self.parameters = tta_parameters(model, list(adaptation.tta_parameters))
        self.learning_rate = settings.learning_rate or adaptation.tta_learning_rate
        self._grad_flags = {name: p.requires_grad for name, p in model.named_parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(name in self.parameters)
        self._initial = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = self._optimizer()
        self.pending: list[_Pending] = []
        self.matured_log: list[dict[str, Any]] = []  # per matured step: the issue time and the latest target used
        self.seconds = 0.0

    @property
    def trainable(self) -> int:
        """How many weights adaptation tunes."""
        return sum(p.numel() for p in self.parameters.values())

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.parameters.values()), lr=self.learning_rate)

    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        """Adapt on ``batch`` as the mode says, then ``model.predict(batch)`` [B, P, N, C] in original units."""
        tic = time.perf_counter()
        if self.settings.mode == "matured":
            self._matured_steps(batch)
        else:
            self._reconstruction_steps(batch)
        forecast = self.model.predict(batch)
        if self.settings.mode == "reset":
            self.restore()
        elif self.settings.mode == "matured":
            self.pending.append(_Pending(batch, self._times(batch, self.history + self.horizon - 1)))
        self.seconds += time.perf_counter() - tic
        return forecast

    def restore(self) -> None:
        """The adapted weights back to what they were when adaptation began, and a fresh optimiser state."""
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.copy_(self._initial[name])
        self.optimizer = self._optimizer()

    def close(self) -> None:
        """Every parameter's ``requires_grad`` back as it was before adaptation."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._grad_flags[name])

    def _device(self) -> torch.device:
        return next(iter(self.parameters.values())).device

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _reconstruction_steps(self, batch: dict[str, Any]) -> None:
        inputs = _on(batch, self._device(), drop=TARGET_KEYS)  # never a target value
        was_training = self.model.training
        self.model.eval()  # no dropout: the adaptation is a deterministic function of the history and the seed
        try:
            for _ in range(self.settings.steps):
                self._step(reconstruction_loss(self.model, inputs, self.adaptation.reconstruction_mask,
                                               self.adaptation.reconstruction_ratio, self.generator))
        finally:
            self.model.train(was_training)

    def _times(self, batch: dict[str, Any], offset: int) -> np.ndarray:
        """The time of step ``window_start + offset`` of each sample of ``batch``."""
        if "window_start" not in batch:
            raise ValueError("--tta-mode matured needs each batch's window_start (scatter_predictions adds it)")
        return self.step_time(np.asarray(batch["window_start"]).astype(np.int64) + offset)

    def _matured_steps(self, batch: dict[str, Any]) -> None:
        """``steps`` supervised steps on the pending samples whose labels have all arrived by ``batch``'s issue
        time; each sample is used once."""
        issue = self._times(batch, self.history - 1).min()
        ready = [(entry, (entry.target_end <= issue) & ~entry.used) for entry in self.pending]
        ready = [(entry, now) for entry, now in ready if now.any()]
        if not ready:
            return
        was_training = self.model.training
        self.model.eval()
        device = self._device()
        try:
            for _ in range(self.settings.steps):
                losses, weights = [], []
                for entry, now in ready:
                    inputs = _on(entry.batch, device)
                    mask = regression_mask(inputs) & torch.as_tensor(now, device=device)[:, None, None, None]
                    out = self.model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=1)
                    losses.append(masked_mae_loss(out.predictions, inputs["target"], mask))
                    weights.append(mask.sum())
                total = torch.stack(weights).sum().clamp(min=1)
                self._step(sum(loss * weight for loss, weight in zip(losses, weights, strict=True)) / total)
        finally:
            self.model.train(was_training)
        self.matured_log.append({"issue_time": issue,
                                 "latest_target": max(entry.target_end[now].max() for entry, now in ready),
                                 "samples": int(sum(now.sum() for _, now in ready))})
        for entry, now in ready:
            entry.used |= now
        self.pending = [entry for entry in self.pending if not entry.used.all()]
