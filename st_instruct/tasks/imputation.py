"""Imputation: read a window of ``history`` steps with some observed entries hidden (the recipe's
``missing_pattern``, :mod:`st_instruct.data.missing`), return every entry of the same window; trained and scored on
the hidden entries whose true value is known only (LLM4HRS, Wang et al., IEEE TGRS 2025; the protocol of BRITS,
SAITS, GRIN and SPIN). Entries missing from the data itself are never scored, nor those the model was shown."""

from __future__ import annotations

import numpy as np

from st_instruct.tasks.base import Task


class Imputation(Task):
    """The ``history`` steps of a window, read with the pattern's entries hidden and returned whole; ``horizon`` is
    0 (configs checks it)."""

    name = "imputation"
    # mirrored from st_instruct.evaluation.imputation_baselines.IMPUTATION_BASELINES (a test checks they agree)
    baselines = ("mean", "linear_interpolation", "neighbour_mean", "historical_average", "saits", "brits")
    hub_task_type = "time-series-imputation"
    description = "spatio-temporal imputation"

    def input_steps(self, history: int, horizon: int) -> np.ndarray:
        return np.arange(history)

    def target_steps(self, history: int, horizon: int) -> np.ndarray:
        return np.arange(history)

    def target_mask(self, observed: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        return observed & hidden
