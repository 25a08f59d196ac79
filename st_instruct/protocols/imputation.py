"""Imputation in the evaluation harness (issue 25): the windows' targets and the baseline rows of ``task:
imputation``.

The entries hidden are the recipe's ``missing_pattern`` (or the one ``--missing-pattern`` gives), drawn once over
the whole series (:func:`~st_instruct.samples.builder.series_hidden`), so the forecaster's samples and every baseline
see the same gaps. Scored: the hidden entries whose truth is known -- never an entry the model was shown, never one
missing from the data itself. A window in which nothing is left to read is counted and skipped (the report's
``windows_skipped``), never scored as a number made of nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from st_instruct.configs import RecipeError
from st_instruct.data.windows import STWindows
from st_instruct.evaluation.imputation_baselines import run_imputers
from st_instruct.pretraining.run import PretrainedMAE, load_pretrained_mae

# the row of the masked-autoencoder-pretrained encoder + decoder alone (:func:`pretrained_encoder_rows`)
MAE_ENCODER_ROW = "mae_encoder"


def window_steps(windows: STWindows, split: str, rows: np.ndarray) -> np.ndarray:
    """``[B, L]`` series steps of the ``rows`` windows of ``split`` (the imputation task fills the history)."""
    return windows.starts[split][rows][:, None] + np.arange(windows.history)[None, :]


def imputation_target(windows: STWindows, split: str, rows: np.ndarray, hidden: np.ndarray) -> dict[str, np.ndarray]:
    """``{"y", "y_mask", "visible"}`` of the ``rows`` windows: ``y`` [B, L, N, C] the true values (NaN where
    missing), ``y_mask`` the scored entries (hidden and known), ``visible`` what the model and the baselines read."""
    steps = window_steps(windows, split, rows)
    observed, gaps = windows.observed[steps], hidden[steps]
    return {"y": windows.data.values[steps], "y_mask": observed & gaps, "visible": observed & ~gaps}


def readable_windows(windows: STWindows, split: str, hidden: np.ndarray) -> tuple[np.ndarray, int]:
    """``(rows, skipped)``: the windows of ``split`` with at least one entry left to read, and how many have none."""
    rows = np.arange(windows.num_windows(split))
    visible = imputation_target(windows, split, rows, hidden)["visible"]
    readable = visible.any(axis=(1, 2, 3))
    return rows[readable], int((~readable).sum())


def time_of_week(windows: STWindows, steps: np.ndarray) -> np.ndarray | None:
    """The time-of-week slot of each of ``steps`` (``day * steps_per_day + step of day``), None without a
    calendar."""
    if windows.data.freq is None:
        return None
    return windows.day_of_week[steps] * windows.steps_per_day + windows.time_of_day[steps]


def imputation_baselines(windows: STWindows, split: str, rows: np.ndarray, hidden: np.ndarray,
                         names: Sequence[str], seed: int = 0, options: dict[str, dict] | None = None
                         ) -> dict[str, dict[str, Any]]:
    """Every imputation baseline of ``names`` fitted on the readable entries (never a hidden one) of the steps the
    train windows cover (the whole train split, or a few-shot run's first windows) and filling the ``rows`` windows
    of ``split``: :func:`~st_instruct.evaluation.imputation_baselines.run_imputers`' ``{name: {"pred" [B, L, N, C],
    "fit_seconds", "predict_seconds"} or {"skipped": reason}}``."""
    values = np.nan_to_num(windows.data.values)
    readable = windows.observed & ~hidden
    train = np.unique(window_steps(windows, "train", np.arange(windows.num_windows("train"))))
    steps = window_steps(windows, split, rows)
    return run_imputers(names, values[train], readable[train], values[steps], readable[steps],
                        train_time_of_week=time_of_week(windows, train), time_of_week=time_of_week(windows, steps),
                        adjacency=windows.data.dense_adjacency(), seed=seed, options=options)


def pretrained_row_kind(pretrained: PretrainedMAE | str | Path, windows: STWindows) -> str:
    """The report kind of the :data:`MAE_ENCODER_ROW` row on ``windows``' dataset: ``"target-fitted"`` when the
    pretraining read that dataset's train split (its name among the pretraining log's ``datasets``), else
    ``"source-fitted"`` (pretrained on other datasets only; ``leave_out`` never read)."""
    if not isinstance(pretrained, PretrainedMAE):
        pretrained = load_pretrained_mae(pretrained)
    return "target-fitted" if windows.data.name in pretrained.datasets else "source-fitted"


def _reads_evaluated_steps(pretrained: PretrainedMAE, windows: STWindows, steps: np.ndarray) -> str | None:
    """Why the pretraining has read some of the evaluated ``steps`` [B, L] of ``windows`` (its train split reaches
    them: it was pretrained on this dataset with another split or period), or None when it has not."""
    found = pretrained.train_split_of(windows.data.name)
    if found is None:
        return None
    data, (lo, hi) = found
    times, seen = windows.data.time_index(), data.time_index()
    if times is not None and seen is not None:
        inside = (times[steps.ravel()] >= seen[lo]) & (times[steps.ravel()] <= seen[hi - 1])
    elif data.num_steps == windows.data.num_steps:  # no calendar: the same series, the same steps
        inside = (steps.ravel() >= lo) & (steps.ravel() < hi)
    else:
        return (f"pretrained on {windows.data.name!r} ({data.num_steps} steps, no calendar), evaluated on "
                f"{windows.data.num_steps} of its steps: cannot tell whether its train split covers the evaluated "
                "windows")
    if inside.any():
        return (f"pretrained on the train split of {windows.data.name!r} (steps {lo}..{hi} of its recipe's split "
                f"{pretrained.data_config.split}), which covers {int(inside.sum())} of the evaluated steps: the "
                "encoder has read the values hidden here; evaluate a later split or pretrain with the evaluated split")
    return None


def pretrained_encoder_rows(directory: str | Path, windows: STWindows, split: str, rows: np.ndarray,
                            hidden: np.ndarray, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The baseline row of the masked-autoencoder-pretrained encoder alone (UniST / UrbanMind without an LLM):
    ``{"mae_encoder": {"pred" [B, L, N, C] original units, "fit_seconds": 0.0, "predict_seconds", "kind",
    "fitted_on"}}`` (``kind``: :func:`pretrained_row_kind`; ``fitted_on``: the datasets it was pretrained on), or
    ``{"mae_encoder": {"skipped": reason}}`` (one line) when the folder cannot fill these windows -- not a ``mae``
    folder (or not a pretrained folder at all), another history length or channel count, coordinates the evaluated
    dataset cannot give, or a pretraining that read the evaluated steps.

    Each of the ``rows`` windows of ``split`` is read with its hidden and missing entries as gaps (value zeroed,
    observed flag cleared: how pretraining hid entries), scaled as the folder's recipe scaled (``scaling: train``:
    ``windows``' train-split scaler, each dataset's own as in pretraining; ``window``: each window's visible entries)
    and de-scaled back; the visible entries come back as read, the others from the decoder. No fitting here
    (``fit_seconds`` 0: the pretraining is the fit). ``seed`` is unused (the forward pass is deterministic), kept for
    the baselines' signature."""
    del seed
    try:
        pretrained = load_pretrained_mae(directory)
    except RecipeError as err:
        return {MAE_ENCODER_ROW: {"skipped": str(err).splitlines()[0]}}
    data = windows.data
    reason = pretrained.misfit(data, windows.history)
    steps = window_steps(windows, split, rows)
    if reason is None:
        try:
            reason = _reads_evaluated_steps(pretrained, windows, steps)
        except ValueError as err:  # the pretraining's dataset no longer loads as its recipe says
            reason = f"cannot check which steps {directory} was pretrained on ({str(err).splitlines()[0]})"
    if reason is not None:
        return {MAE_ENCODER_ROW: {"skipped": reason}}
    target = imputation_target(windows, split, rows, hidden)
    started = time.perf_counter()
    try:
        pred = pretrained.reconstruct(target["y"], target["visible"], windows.time_of_day[steps],
                                      windows.day_of_week[steps], pretrained.coordinates(data), windows.steps_per_day,
                                      windows.scaler)
    except ValueError as err:  # an encoder that refuses this node set (e.g. grid cells it cannot place)
        return {MAE_ENCODER_ROW: {"skipped": f"the encoder in {directory} cannot read {data.name!r}: "
                                             f"{str(err).splitlines()[0]}"}}
    return {MAE_ENCODER_ROW: {"pred": pred, "fit_seconds": 0.0,
                              "predict_seconds": round(time.perf_counter() - started, 4),
                              "kind": pretrained_row_kind(pretrained, windows),
                              "fitted_on": ", ".join(pretrained.datasets)}}
