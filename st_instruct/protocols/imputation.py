"""Imputation in the evaluation harness (issue 25): the windows' targets and the baseline rows of ``task:
imputation``.

The entries hidden are the recipe's ``missing_pattern`` (or the one ``--missing-pattern`` gives), drawn once over
the whole series (:func:`~st_instruct.samples.builder.series_hidden`), so the forecaster's samples and every baseline
see the same gaps. Scored: the hidden entries whose truth is known -- never an entry the model was shown, never one
missing from the data itself. A window in which nothing is left to read is counted and skipped (the report's
``windows_skipped``), never scored as a number made of nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from st_instruct.data.windows import STWindows
from st_instruct.evaluation.imputation_baselines import run_imputers


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
