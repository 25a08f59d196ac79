"""Forecasting: read ``history`` steps, predict the ``horizon`` steps after them (every system this harness
reproduces: UrbanGPT, ST-LLM, ST-LINK, ST-VLM, AirGPT)."""

from __future__ import annotations

import numpy as np

from st_instruct.tasks.base import Task


class Forecasting(Task):
    """The ``horizon`` steps after the ``history`` a window reads, all observed entries scored."""

    name = "forecasting"
    baselines = ("window_last_value", "window_mean", "window_linear_trend", "historical_average", "last_value",
                 "seasonal_naive_day", "seasonal_naive_week", "ridge", "global_ridge", "stid")
    hub_task_type = "time-series-forecasting"
    description = "spatio-temporal forecasting"

    def input_steps(self, history: int, horizon: int) -> np.ndarray:
        return np.arange(history)

    def target_steps(self, history: int, horizon: int) -> np.ndarray:
        return history + np.arange(horizon)
