"""What a task decides, so the rest of the stack asks it instead of assuming a forecast (docs/design.md §2).

A task owns what a window holds -- the steps the model reads, the steps it predicts and which of their entries are
trained and scored (the recipe's ``missing_pattern`` decides which read entries the model does not see) -- the
length of the head's output, the loss, the metrics, the baselines it offers and what the model card calls it. The
sample builder cuts the windows' arrays through it, the training run sizes the head and the trainer takes its loss
from it, and the evaluation scores every row with it, runs its baselines, reports its metrics and
records them on the card under its name. BasicTS separates its forecasting and imputation task flows
the same way (``runners/taskflow``). A task is registered by name (:data:`st_instruct.tasks.TASKS`), which the
recipe key ``task`` selects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from st_instruct.tasks.metrics import METRICS, horizon_metrics


class Task(ABC):
    """A task on windows of ``history`` steps and ``horizon`` steps after them (the recipe's ``history`` /
    ``horizon``); subclasses fill in the abstract parts and the class attributes."""

    name: str
    baselines: tuple[str, ...] = ()  # names of st_instruct.evaluation.baselines.BASELINES it offers
    metrics: tuple[str, ...] = METRICS  # the averaged metrics score() returns, in the reports' column order
    hub_task_type: str  # the model card's model-index task type (a Hub task id)
    description: str  # the model card's task name

    @abstractmethod
    def input_steps(self, history: int, horizon: int) -> np.ndarray:
        """``[L_in]`` offsets, from a window's first step, of the steps the model reads."""

    @abstractmethod
    def target_steps(self, history: int, horizon: int) -> np.ndarray:
        """``[L_out]`` offsets, from a window's first step, of the steps it predicts (the head's output)."""

    def target_length(self, history: int, horizon: int) -> int:
        """How many steps the head predicts: ``len(target_steps)``."""
        return len(self.target_steps(history, horizon))

    def target_mask(self, observed: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """Which predicted entries a sample trains on (``[B, L_out, N, C]`` bool), from which of them are observed
        and which the recipe's ``missing_pattern`` hides (both ``[B, L_out, N, C]``): every entry the series still
        has -- a sparse series' hidden values are no label either -- unless the task trains on what it was not
        shown. (The evaluation scores a forecast on every truly observed target: the benchmark knows them.)"""
        return observed & ~hidden

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The regression loss of a batch (all ``[B, L_out, N, C]``, scaled units): :func:`masked_mae_loss`."""
        return masked_mae_loss(prediction, target, mask)

    def score(self, prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
        """The metrics of a prediction (all ``[B, L_out, N, C]``, original units; ``mask`` the entries scored):
        each of :attr:`metrics` averaged and per target step (:func:`~st_instruct.tasks.metrics.horizon_metrics`)."""
        return horizon_metrics(prediction, target, mask)


def masked_mae_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the entries where ``mask`` is True (all [B, P, N, C], scaled units); 0 with a
    gradient when nothing is observed, so a batch of gaps cannot turn the loss into NaN."""
    weight = mask.to(prediction.dtype)
    return ((prediction - target.to(prediction.dtype)).abs() * weight).sum() / weight.sum().clamp(min=1)
