"""Masked reconstruction of a batch's history through the whole forecaster: UrbanMind's (Liu et al., KDD 2025)
pretext task, kept beside the forecast in training (``reconstruction_weight``) and the objective of test-time
adaptation (:mod:`st_instruct.training.tta`).

A mask of the recipe's family (:func:`~st_instruct.data.masks.draw_mask`) hides entries of ``history``; the model
reads the hidden entries as gaps (``history`` 0 and ``history_mask`` False there) and its reconstruction head
(``reconstruction_head: true``, :class:`~st_instruct.models.forecaster.STForecaster`'s ``st_reconstruction``)
returns the whole history; the loss is the MAE on the entries that were hidden and observed. UrbanMind's released
code computes its pretraining loss on the visible entries; the paper's loss, on the masked ones, is what is done
here. Nothing of the batch's ``target`` / ``target_mask`` is read: they are dropped before the pass.
"""

from __future__ import annotations

from typing import Any

import torch

from st_instruct.data.masks import draw_mask
from st_instruct.tasks.base import masked_mae_loss

# what a reconstruction pass never reads: the forecast's answer and, for the LM loss, its text labels
TARGET_KEYS = ("target", "target_mask", "labels")


def require_reconstruction_path(model: Any, where: str) -> None:
    """``ValueError`` (one line) when ``model`` has no reconstruction head: ``where`` (a flag, a recipe key) needs
    one."""
    if getattr(model, "st_reconstruction", None) is None:
        raise ValueError(f"{where} needs a reconstruction path, and this forecaster has none: train it with "
                         "reconstruction_head: true and reconstruction_weight > 0 (recipes/urbanmind_tta.yaml)")


def hidden_entries(history_mask: torch.Tensor, family: str, ratio: float,
                   generator: torch.Generator) -> torch.Tensor:
    """[B, L, N, C] bool: the observed history entries a mask of ``family`` hides (a gap is never 'hidden': it has
    nothing to reconstruct)."""
    hidden = draw_mask(family, tuple(history_mask.shape), ratio, generator).to(history_mask.device)
    return hidden & history_mask.bool()


def reconstruction_loss(model: Any, inputs: dict[str, Any], family: str, ratio: float,
                        generator: torch.Generator) -> torch.Tensor:
    """The masked-reconstruction MAE of one batch (scaled units): one pass of ``model`` over ``inputs`` with the
    hidden entries of its history turned into gaps, scored on them only. ``inputs``' targets are not read."""
    history, history_mask = inputs["history"], inputs["history_mask"].bool()
    hidden = hidden_entries(history_mask, family, ratio, generator)
    features = {key: value for key, value in inputs.items() if key not in TARGET_KEYS}
    features["history"] = history.masked_fill(hidden, 0.0)
    features["history_mask"] = history_mask & ~hidden
    out = model(**features, logits_to_keep=1)
    return masked_mae_loss(out.reconstruction, history, hidden)
