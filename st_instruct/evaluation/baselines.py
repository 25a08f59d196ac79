"""Forecasting baselines that run in the same harness, on the same windows, as the LLM models (docs/design.md §5).

Every baseline follows one small protocol: ``fit(windows)`` reads the train split (and the validation split for
model selection or early stopping, never the test split), ``predict(windows, split)`` returns ``[B, P, N, C]``
forecasts in *original units* for every window of ``split`` with no NaN, so :func:`run_baselines` can score all
of them with the same masked metrics against the same targets.

Classical baselines live here; the learned STID baseline lives in :mod:`st_instruct.evaluation.stid`.

Source-fitted baselines (UrbanGPT's zero-shot protocol, Li et al., KDD 2024): :func:`run_source_baselines` fits
a baseline on the *source* dataset's windows and applies it, with its source scaler, to the *target*'s windows
(:func:`transfer_windows`), as row ``NAME@source``. What transfers, and why (:func:`transfer_reason`):

- ``historical_average``, ``ridge``, ``stid`` hold per-node parameters (a slot table per node, weights per
  node, node embeddings): they apply only to the same node set (same node count and names, e.g. nyc-taxi ->
  nyc-bike over the same 69 zones); otherwise skipped, "per-node parameters of the source's N nodes do not apply
  to the target's M nodes". ``historical_average`` and ``stid`` (with its time embeddings) also need the same
  steps per day; every baseline needs the same channel count.
- ``last_value`` and the seasonal naive baselines fit nothing but a fallback for unobserved values: their forecast
  is read from the target's own series, so a source-fitted row would repeat the target row; skipped with that
  reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, overload

import numpy as np

from st_instruct.data.windows import STWindows
from st_instruct.evaluation.stid import STIDBaseline
from st_instruct.tasks import TASKS, Task


class BaselineNotApplicable(ValueError):
    """Raised by ``fit`` when a baseline cannot forecast these windows (e.g. a seasonal period shorter than the
    horizon); :func:`run_baselines` records the message and skips the baseline."""


class Baseline(Protocol):
    """What the harness needs from a baseline.

    ``fit(windows)`` uses the train split (validation only for model selection / early stopping) and raises
    :class:`BaselineNotApplicable` when ``is_applicable(windows)`` is False; ``predict(windows, split)`` returns
    ``[B, P, N, C]`` float32 forecasts in original units for all ``B`` windows of ``split``, without NaN.
    """

    name: str
    reads: str  # "window": only each window's own history (input-only); "train": fitted on a train split

    def is_applicable(self, windows: STWindows) -> bool: ...

    def fit(self, windows: STWindows) -> None: ...

    def predict(self, windows: STWindows, split: str) -> np.ndarray: ...


def _target_steps(windows: STWindows, split: str) -> np.ndarray:
    """``[B, P]`` absolute step index of every target of every window of ``split``."""
    windows.num_windows(split)  # raises a KeyError naming the known splits
    return windows.starts[split][:, None] + windows.history + np.arange(windows.horizon)[None, :]


def _raw_history(windows: STWindows, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``([B, L, N, C] float64 history values in original units, 0 where unobserved; [B, L, N, C] observed)`` of
    every window of ``split``: what an input-only baseline may read."""
    steps = windows.starts[split][:, None] + np.arange(windows.history)[None, :]
    observed = windows.observed[steps]
    return np.where(observed, np.nan_to_num(windows.data.values[steps]), 0.0).astype(np.float64), observed


def _window_statistics(x: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([B, N, C] mean, [B, N, C] standard deviation)`` of each series' observed history values (``x`` /
    ``observed`` as :func:`_raw_history`), read from the window alone. A series with nothing observed takes the
    mean of its channel over the window's observed values of every node (0 when the channel has none). The
    deviation is floored at a tenth of the channel's mean magnitude in the window (and 1e-6), so a flat series
    (a night of zero counts) does not blow its normalised values up."""
    counts = observed.sum(axis=1)  # [B, N, C]
    series_mean = x.sum(axis=1) / np.maximum(counts, 1)
    channel_counts = observed.sum(axis=(1, 2))  # [B, C]
    channel_mean = x.sum(axis=(1, 2)) / np.maximum(channel_counts, 1)
    channel_scale = np.abs(x).sum(axis=(1, 2)) / np.maximum(channel_counts, 1)
    mean = np.where(counts > 0, series_mean, channel_mean[:, None, :])
    variance = (np.where(observed, x - mean[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(counts, 1)
    floor = np.maximum(0.1 * channel_scale, 1e-6)[:, None, :]
    return mean, np.maximum(np.sqrt(variance), floor)


def _train_node_mean(windows: STWindows) -> np.ndarray:
    """``[N, C]`` float64 mean of the observed train values; the scaler's channel mean where never observed."""
    lo, hi = windows.borders["train"]
    observed = windows.observed[lo:hi]
    values = np.where(observed, np.nan_to_num(windows.data.values[lo:hi]), 0.0).astype(np.float64)
    counts = observed.sum(0)
    return np.where(counts > 0, values.sum(0) / np.maximum(counts, 1), windows.scaler.mean[None, :])


def _require_calendar(windows: STWindows, needs: str) -> None:
    """Skip (:class:`BaselineNotApplicable`) a calendar baseline on data run with ``--no-calendar``."""
    if not windows.has_calendar:
        raise BaselineNotApplicable(f"needs {needs}, but the data run without a calendar (--no-calendar); "
                                    "give --freq and --series-start instead to run it")


class HistoricalAverage:
    """Mean of the observed train values per (time-of-week slot, node, channel), read at the target timestamps.

    Slots never observed in train fall back to the (node, channel) train mean, and a (node, channel) never
    observed falls back to the channel mean of the scaler. Needs a calendar: skipped with ``--no-calendar``
    (it would only be a per-node mean under a calendar name).
    """

    name = "historical_average"
    reads = "train"

    def __init__(self) -> None:
        self.table: np.ndarray | None = None  # [S, N, C] in original units
        self.node_mean: np.ndarray | None = None  # [N, C]

    def is_applicable(self, windows: STWindows) -> bool:
        return windows.has_calendar

    def fit(self, windows: STWindows) -> None:
        _require_calendar(windows, "the time of week of every step")
        lo, hi = windows.borders["train"]
        observed = windows.observed[lo:hi]
        values = np.where(observed, np.nan_to_num(windows.data.values[lo:hi]), 0.0).astype(np.float64)
        self.node_mean = _train_node_mean(windows)
        num_slots = 7 * windows.steps_per_day
        slots = windows.time_of_week[lo:hi]
        slot_sums = np.zeros((num_slots,) + values.shape[1:])
        slot_counts = np.zeros((num_slots,) + values.shape[1:])
        np.add.at(slot_sums, slots, values)
        np.add.at(slot_counts, slots, observed)
        self.table = np.where(slot_counts > 0, slot_sums / np.maximum(slot_counts, 1), self.node_mean[None])

    def at_steps(self, windows: STWindows, steps: np.ndarray) -> np.ndarray:
        """Historical average at absolute steps ``[...]`` -> ``[..., N, C]`` float32, original units."""
        if self.table is None:
            raise RuntimeError("historical_average: call fit(windows) before predict")
        return self.table[windows.time_of_week[steps]].astype(np.float32)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        return self.at_steps(windows, _target_steps(windows, split))


class LastValue:
    """The last observed history value of each (node, channel), repeated over the horizon.

    When the last history step is unobserved the last observed step of the window is used; when the whole
    window is unobserved, the (node, channel) train mean.
    """

    name = "last_value"
    reads = "train"  # its fallback, for a series with nothing observed in the window, is the train mean

    def __init__(self) -> None:
        self.node_mean: np.ndarray | None = None  # [N, C]

    def is_applicable(self, windows: STWindows) -> bool:
        return True

    def fit(self, windows: STWindows) -> None:
        self.node_mean = _train_node_mean(windows).astype(np.float32)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        if self.node_mean is None:
            raise RuntimeError("last_value: call fit(windows) before predict")
        batch = windows.batch(split)
        x, x_mask = batch["x"], batch["x_mask"]  # [B, L, N, C]
        L = x.shape[1]
        # argmax over the time-reversed mask finds the latest observed step of every (window, node, channel).
        last = L - 1 - np.argmax(x_mask[:, ::-1], axis=1)  # [B, N, C]
        value = np.take_along_axis(x, last[:, None], axis=1)[:, 0]
        value = windows.scaler.inverse_transform(value)
        value = np.where(x_mask.any(axis=1), value, self.node_mean[None])
        return np.repeat(value[:, None], windows.horizon, axis=1).astype(np.float32)


class SeasonalNaive:
    """The value one period earlier, ``y[t - period]``, with ``period`` = ``days`` days of steps.

    Needs a calendar (skipped with ``--no-calendar``). The value is known at forecast time only when
    ``period >= horizon``; otherwise ``fit`` raises
    :class:`BaselineNotApplicable`. It also refuses a series so short that the first test target looks back
    before the series start (Los-loop's 7 days for a weekly period): it would silently be the historical
    average. Where ``t - period`` falls before the start or is unobserved, the historical average at ``t`` is used.
    """

    name: str
    days: int
    reads = "train"

    def __init__(self) -> None:
        self.average: HistoricalAverage | None = None

    def period(self, windows: STWindows) -> int:
        return self.days * windows.steps_per_day

    def _first_test_target(self, windows: STWindows) -> int:
        return int(windows.borders["test"][0]) + windows.history

    def is_applicable(self, windows: STWindows) -> bool:
        if not windows.has_calendar:
            return False
        period = self.period(windows)
        return period >= windows.horizon and self._first_test_target(windows) - period >= 0

    def fit(self, windows: STWindows) -> None:
        _require_calendar(windows, f"the step to know how many steps make {self.days} day(s) and the "
                          "time of week for its fallback")
        period = self.period(windows)
        if period < windows.horizon:
            raise BaselineNotApplicable(
                f"the period ({period} steps = {self.days} day(s) at "
                f"{windows.data.freq}) is shorter than the horizon ({windows.horizon} steps), so y[t - period] "
                "is not yet known at forecast time; use a horizon <= period")
        if self._first_test_target(windows) - period < 0:
            raise BaselineNotApplicable(
                f"the first test target (step {self._first_test_target(windows)}) would look back "
                f"{period} steps, before the series start; the series is too short for this period")
        self.average = HistoricalAverage()
        self.average.fit(windows)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        if self.average is None:
            raise RuntimeError(f"{self.name}: call fit(windows) before predict")
        steps = _target_steps(windows, split)  # [B, P]
        source = steps - self.period(windows)
        valid = source >= 0
        source = np.maximum(source, 0)
        known = windows.observed[source] & valid[..., None, None]  # [B, P, N, C]
        value = np.nan_to_num(windows.data.values[source])
        return np.where(known, value, self.average.at_steps(windows, steps)).astype(np.float32)


class SeasonalNaiveDay(SeasonalNaive):
    """Seasonal naive with a period of one day."""

    name = "seasonal_naive_day"
    days = 1


class SeasonalNaiveWeek(SeasonalNaive):
    """Seasonal naive with a period of one week."""

    name = "seasonal_naive_week"
    days = 7


class RidgeBaseline:
    """Closed-form ridge regression per (node, channel, horizon step) from the ``L`` scaled history values and a
    bias to the scaled target.

    Unobserved history values enter as 0, the scaled train mean (the convention of :class:`STWindows`).
    Unobserved *targets* are left out of the fit: every (node, channel, horizon step) is a weighted least
    squares with weight 1 on observed and 0 on unobserved targets, so a null is never taught as a value and no
    imputation model is needed. ``alpha`` (the bias is not penalised) is picked from ``alphas`` by the masked
    MAE in original units on the validation split; without validation windows it is ``default_alpha``.
    All (node, channel, step) systems are solved at once with a batched ``np.linalg.solve``.
    """

    name = "ridge"
    reads = "train"

    def __init__(self, alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0),
                 default_alpha: float = 10.0) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.default_alpha = default_alpha
        self.alpha: float | None = None
        self.weights: np.ndarray | None = None  # [N*C, P, L+1]
        self.validation_mae: dict[float, float] = {}

    def is_applicable(self, windows: STWindows) -> bool:
        return True

    @staticmethod
    def _features(x: np.ndarray) -> np.ndarray:
        """``[B, L, N, C]`` scaled history -> ``[N*C, B, L+1]`` float32 design matrices with a bias column."""
        B, L, N, C = x.shape
        feats = np.ones((N * C, B, L + 1), dtype=np.float32)
        feats[:, :, :L] = x.transpose(2, 3, 0, 1).reshape(N * C, B, L)
        return feats

    def fit(self, windows: STWindows) -> None:
        batch = windows.batch("train")
        X = self._features(batch["x"])  # [K, B, F], K = N*C
        K, B, F = X.shape
        # The scaled series holds 0 at unobserved entries, so y * weight needs no further masking.
        y = windows.scaled[_target_steps(windows, "train")]  # [B, P, N, C]
        P = y.shape[1]
        weight = batch["y_mask"].transpose(2, 3, 0, 1).reshape(K, B, P)  # [K, B, P]
        target = y.transpose(2, 3, 0, 1).reshape(K, B, P)
        gram = np.empty((K, P, F, F))
        rhs = np.empty((K, P, F, 1))
        # One (node, channel) at a time in float64 keeps memory at a few MB; the Gram matrices of its P systems
        # come from a single [P*F, B] @ [B, F] product on the row-wise Khatri-Rao product of weights and
        # features, far faster than P small products.
        for k in range(K):
            Xk, wk = X[k].astype(np.float64), weight[k].astype(np.float64)
            weighted = (wk[:, :, None] * Xk[:, None, :]).reshape(B, P * F)
            gram[k] = (weighted.T @ Xk).reshape(P, F, F)
            rhs[k, :, :, 0] = (target[k] * wk).T @ Xk
        penalty = np.ones(F)
        penalty[-1] = 0.0
        # A tiny floor keeps systems with no observed target solvable (they then predict the scaled mean, 0).
        eye = np.eye(F) * 1e-6

        def solve(alpha: float) -> np.ndarray:
            return np.linalg.solve(gram + alpha * np.diag(penalty) + eye, rhs)[..., 0]  # [K, P, F]

        if windows.num_windows("validation") == 0:
            self.alpha = self.default_alpha
            self.weights = solve(self.alpha)
            return
        val = windows.batch("validation")
        X_val = self._features(val["x"])
        best = None
        for alpha in self.alphas:
            weights = solve(alpha)
            pred = self._predict_from(windows, X_val, weights)
            mae = float(np.abs(pred - np.nan_to_num(val["y"]))[val["y_mask"]].mean())
            self.validation_mae[alpha] = mae
            if best is None or mae < best:
                best, self.alpha, self.weights = mae, alpha, weights

    @staticmethod
    def _predict_from(windows: STWindows, X: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``[K, B, F]`` features and ``[K, P, F]`` weights -> ``[B, P, N, C]`` original units."""
        N, C = windows.data.num_nodes, windows.data.num_channels
        scaled = np.matmul(X, weights.transpose(0, 2, 1))  # [K, B, P]
        scaled = scaled.reshape(N, C, X.shape[1], -1).transpose(2, 3, 0, 1)
        return windows.scaler.inverse_transform(scaled).astype(np.float32)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("ridge: call fit(windows) before predict")
        return self._predict_from(windows, self._features(windows.batch(split)["x"]), self.weights)


class InputOnlyBaseline:
    """A baseline that fits nothing and reads only each window's own history (:func:`_raw_history`): what a user
    with no history of the target beyond the input can run (zero-shot/2's *input-only* rows). A series with
    nothing observed in its window falls back to its channel's mean over the window's nodes
    (:func:`_window_statistics`), never to a train statistic."""

    name: str
    reads = "window"

    def is_applicable(self, windows: STWindows) -> bool:
        return True

    def fit(self, windows: STWindows) -> None:
        """Nothing to fit."""

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        x, observed = _raw_history(windows, split)
        return self.forecast(x, observed, windows.horizon).astype(np.float32)

    def forecast(self, x: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        """``[B, L, N, C]`` history (:func:`_raw_history`) -> ``[B, P, N, C]`` forecast, original units."""
        raise NotImplementedError


class WindowLastValue(InputOnlyBaseline):
    """The last observed history value of each series, repeated over the horizon (input-only)."""

    name = "window_last_value"

    def forecast(self, x: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        last = x.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)  # latest observed step, [B, N, C]
        value = np.take_along_axis(x, last[:, None], axis=1)[:, 0]
        value = np.where(observed.any(axis=1), value, _window_statistics(x, observed)[0])
        return np.repeat(value[:, None], horizon, axis=1)


class WindowMean(InputOnlyBaseline):
    """The mean of each series' observed history values, repeated over the horizon (input-only)."""

    name = "window_mean"

    def forecast(self, x: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        return np.repeat(_window_statistics(x, observed)[0][:, None], horizon, axis=1)


class WindowLinearTrend(InputOnlyBaseline):
    """The least-squares line through each series' observed history values, extended over the horizon
    (input-only); the window mean where fewer than two steps are observed."""

    name = "window_linear_trend"

    def forecast(self, x: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        history = x.shape[1]
        weight = observed.astype(np.float64)
        count = weight.sum(axis=1)  # [B, N, C]
        time = np.arange(history, dtype=np.float64)[None, :, None, None]
        t_mean = (weight * time).sum(axis=1) / np.maximum(count, 1)
        mean = _window_statistics(x, observed)[0]
        dt = np.where(observed, time - t_mean[:, None], 0.0)
        spread = (dt ** 2).sum(axis=1)
        slope = np.where(spread > 0, (dt * (x - mean[:, None])).sum(axis=1) / np.where(spread > 0, spread, 1.0), 0.0)
        future = np.arange(history, history + horizon, dtype=np.float64)[None, :, None, None]
        return mean[:, None] + slope[:, None] * (future - t_mean[:, None])


class GlobalRidge:
    """One ridge regression shared by every series of every node and channel: the ``L`` history values, each
    window normalised by its own mean and deviation (:func:`_window_statistics`, gaps at the mean), plus a bias,
    to the ``P`` normalised targets; the forecast is de-normalised with the same window statistics.

    No parameter belongs to a node, a channel or a time slot, so a ridge fitted on other datasets forecasts any
    node set, channel count and frequency: the source-fitted reference of zero-shot/2 (a linear model on
    per-window normalised series, as DLinear with RevIN). Fitted on the train windows of one or several
    datasets (:meth:`fit_sources`), unobserved targets weighted 0; ``alpha`` (the bias unpenalised) picked by the
    masked MAE in original units on their validation windows, else ``default_alpha``. At most ``max_rows``
    (window, node, channel) rows per dataset enter the fit, drawn with ``seed``.
    """

    name = "global_ridge"
    reads = "train"
    clip = 10.0  # the largest normalised target a fit reads (:meth:`_targets`)

    def __init__(self, alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0), default_alpha: float = 1.0,
                 max_rows: int = 400_000, seed: int = 0) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.default_alpha, self.max_rows, self.seed = default_alpha, max_rows, seed
        self.alpha: float | None = None
        self.weights: np.ndarray | None = None  # [L+1, P]

    def is_applicable(self, windows: STWindows) -> bool:
        return True

    @staticmethod
    def _rows(windows: STWindows, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``([R, L+1] features, [R] mean, [R] deviation)``: one row per (window, node, channel) of ``split``."""
        x, observed = _raw_history(windows, split)
        mean, deviation = _window_statistics(x, observed)
        normalised = np.where(observed, (x - mean[:, None]) / deviation[:, None], 0.0)
        B, L, N, C = x.shape
        features = np.ones((B, N, C, L + 1))
        features[..., :L] = normalised.transpose(0, 2, 3, 1)
        return features.reshape(-1, L + 1), mean.reshape(-1), deviation.reshape(-1)

    def _targets(self, windows: STWindows, split: str, mean: np.ndarray, deviation: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``([R, P] normalised targets, 0 where unobserved, clipped to +-``:attr:`clip`; [R, P] observed)``, rows
        as :meth:`_rows`. The clip keeps a least-squares fit from being ruled by the few windows whose future leaps
        far beyond their own history (the first rain after a dry window: a deviation near 0)."""
        batch = windows.batch(split)
        P = windows.horizon
        target = np.nan_to_num(batch["y"]).astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, P)
        observed = batch["y_mask"].transpose(0, 2, 3, 1).reshape(-1, P)
        normalised = np.clip((target - mean[:, None]) / deviation[:, None], -self.clip, self.clip)
        return np.where(observed, normalised, 0.0), observed

    def fit(self, windows: STWindows) -> None:
        self.fit_sources([windows])

    def fit_sources(self, sources: Sequence[STWindows]) -> None:
        """Fit on the train windows of every dataset of ``sources`` (they must share the history and horizon)."""
        rng = np.random.default_rng(self.seed)
        grams, rhs, validation = 0.0, 0.0, []
        for windows in sources:
            features, mean, deviation = self._rows(windows, "train")
            target, observed = self._targets(windows, "train", mean, deviation)
            if len(features) > self.max_rows:
                keep = np.sort(rng.choice(len(features), self.max_rows, replace=False))
                features, target, observed = features[keep], target[keep], observed[keep]
            weight = observed.astype(np.float64)
            # [P, F, F] Gram matrices of the P weighted least squares, and their right-hand sides [P, F]
            grams = grams + np.einsum("rp,rf,rg->pfg", weight, features, features, optimize=True)
            rhs = rhs + np.einsum("rp,rf->pf", weight * target, features, optimize=True)
            if windows.num_windows("validation") > 0:
                validation.append(windows)
        features_count = grams.shape[-1]
        penalty = np.diag(np.r_[np.ones(features_count - 1), 0.0]) + np.eye(features_count) * 1e-9

        def solve(alpha: float) -> np.ndarray:
            return np.linalg.solve(grams + alpha * penalty, rhs[..., None])[..., 0].T  # [F, P]

        if not validation:
            self.alpha, self.weights = self.default_alpha, solve(self.default_alpha)
            return
        best = None
        for alpha in self.alphas:
            weights = solve(alpha)
            errors = [np.abs(self._forecast(w, "validation", weights) - np.nan_to_num(w.batch("validation")["y"]))
                      [w.batch("validation")["y_mask"]] for w in validation]
            mae = float(np.concatenate(errors).mean())
            if best is None or mae < best:
                best, self.alpha, self.weights = mae, alpha, weights

    def _forecast(self, windows: STWindows, split: str, weights: np.ndarray) -> np.ndarray:
        """``[B, P, N, C]`` forecast in original units with ``weights`` ``[L+1, P]``."""
        features, mean, deviation = self._rows(windows, split)
        forecast = (features @ weights) * deviation[:, None] + mean[:, None]  # [R, P]
        B, N, C = windows.num_windows(split), windows.data.num_nodes, windows.data.num_channels
        return forecast.reshape(B, N, C, -1).transpose(0, 3, 1, 2)

    def predict(self, windows: STWindows, split: str) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("global_ridge: call fit(windows) before predict")
        return self._forecast(windows, split, self.weights).astype(np.float32)


BASELINES: dict[str, Callable[..., Baseline]] = {
    "historical_average": HistoricalAverage,
    "last_value": LastValue,
    "seasonal_naive_day": SeasonalNaiveDay,
    "seasonal_naive_week": SeasonalNaiveWeek,
    "ridge": RidgeBaseline,
    "stid": STIDBaseline,
    "global_ridge": GlobalRidge,
    "window_last_value": WindowLastValue,
    "window_mean": WindowMean,
    "window_linear_trend": WindowLinearTrend,
}


def build_baseline(name: str, **kwargs) -> Baseline:
    """Construct the baseline registered as ``name`` with constructor ``kwargs``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known baselines: {sorted(BASELINES)}")
    return BASELINES[name](**kwargs)


PER_NODE = ("historical_average", "ridge", "stid")  # parameters per node: transfer only to the same node set
NO_FIT = ("last_value", "seasonal_naive_day", "seasonal_naive_week")  # only a fallback is fitted
SERIES_AGNOSTIC = ("global_ridge",)  # no parameter of a node, channel or time slot: fits several sources at once
SOURCE_SUFFIX = "@source"
# what a row of an evaluation is (results[row]["kind"]; docs/evaluation.md): the reference kinds of zero-shot/2
ROW_KINDS = {"forecaster": "the LLM forecaster", "control": "the forecaster's control (the same recipe, one change)",
             "input-only": "reads only each window's own history: runnable with no other data of the target",
             "target-fitted": "fitted on the evaluated dataset's train split (zero-shot: an oracle with data "
                              "zero-shot does not have; few-shot: the same few-shot windows)",
             "source-fitted": "fitted on the forecaster's training datasets, applied to the target"}


def baseline_kind(row: str) -> str:
    """The kind (:data:`ROW_KINDS`) of the baseline row ``row`` (``NAME`` or ``NAME@source``)."""
    if row.endswith(SOURCE_SUFFIX):
        return "source-fitted"
    return "input-only" if BASELINES[row].reads == "window" else "target-fitted"


def transfer_windows(target: STWindows, source: STWindows) -> STWindows:
    """``target``'s windows scaled with ``source``'s scaler (its train-split statistics), for a baseline fitted
    on ``source``: no statistic of the target enters its forecast."""
    scaled = np.where(target.observed, source.scaler.transform(np.nan_to_num(target.data.values)), 0.0)
    return dataclasses.replace(target, scaler=source.scaler, scaled=scaled.astype(np.float32))


def transfer_reason(name: str, sources: Sequence[STWindows], target: STWindows) -> str | None:
    """Why the baseline ``name`` fitted on ``sources`` cannot forecast ``target`` (module docstring), or None."""
    if name in NO_FIT or BASELINES[name].reads == "window":
        return (f"fits nothing but a fallback for unobserved values; its forecast reads the target's own series, "
                f"so it is the row `{name}`")
    if name in SERIES_AGNOSTIC:
        return None
    if len(sources) != 1:
        return (f"fitted on one dataset's nodes, channels and time slots; the forecaster was trained on "
                f"{len(sources)} datasets ({', '.join(s.data.name for s in sources)})")
    source = sources[0]
    src, tgt = source.data, target.data
    if src.num_channels != tgt.num_channels:
        return (f"fitted on the source's {src.num_channels} channel(s) {src.channels}; the target has "
                f"{tgt.num_channels} {tgt.channels}")
    if name in PER_NODE and (src.num_nodes != tgt.num_nodes or src.node_names != tgt.node_names):
        if src.num_nodes == tgt.num_nodes:
            return (f"per-node parameters of the source's {src.num_nodes} nodes do not apply to the target's "
                    f"{tgt.num_nodes} nodes: they are other nodes (the node names differ)")
        return (f"per-node parameters of the source's {src.num_nodes} nodes do not apply to the target's "
                f"{tgt.num_nodes} nodes")
    calendar = name == "historical_average" or (name == "stid" and (source.has_calendar or target.has_calendar))
    if calendar and (source.has_calendar != target.has_calendar or source.steps_per_day != target.steps_per_day):
        def describe(w: STWindows) -> str:
            return f"{w.steps_per_day} steps a day" if w.has_calendar else "no calendar"

        return f"its time slots are the source's ({describe(source)}); the target has {describe(target)}"
    return None


def _fit_predict(name: str, fit_on: Sequence[STWindows], predict_on: STWindows, split: str, seed: int,
                 progress: bool, options: dict, task: Task) -> tuple[dict, np.ndarray | None]:
    """``(result, [B, P, N, C] forecast or None)`` of baseline ``name`` fitted on the datasets ``fit_on`` (several
    only for a :data:`SERIES_AGNOSTIC` one) and scored by ``task`` on ``split`` of ``predict_on``;
    ``{"skipped": reason}`` when not applicable."""
    factory = BASELINES[name]
    accepted = inspect.signature(factory).parameters
    kwargs = {key: value for key, value in (("seed", seed), ("progress", progress)) if key in accepted}
    baseline = factory(**{**kwargs, **options})
    tic = time.perf_counter()
    try:
        if len(fit_on) == 1:
            baseline.fit(fit_on[0])
        else:
            baseline.fit_sources(fit_on)
    except BaselineNotApplicable as err:
        return {"skipped": str(err)}, None
    fit_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    pred = baseline.predict(predict_on, split)
    predict_seconds = time.perf_counter() - tic
    target = predict_on.batch(split)
    return {**task.score(pred, target["y"], target["y_mask"]), "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds}, pred


def _check_names(names: Sequence[str], options: dict[str, dict]) -> None:
    for name in [*names, *options]:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; known baselines: {sorted(BASELINES)}")


def run_source_baselines(sources: STWindows | Sequence[STWindows], target: STWindows,
                         names: Sequence[str] | None = None, split: str = "test", progress: bool = True, seed: int = 0,
                         options: dict[str, dict] | None = None, task: Task = TASKS["forecasting"]
                         ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Fit every baseline of ``names`` (default all) on the source dataset(s) ``sources`` and score it on ``split``
    of ``target``, scaled with the (first) source's scaler (:func:`transfer_windows`): rows ``NAME@source``, as
    :func:`run_baselines` with ``return_predictions``; those that cannot transfer (:func:`transfer_reason`, or not
    applicable to the source) are ``{"skipped": reason}``. Only :data:`SERIES_AGNOSTIC` baselines fit several
    sources."""
    sources = [sources] if isinstance(sources, STWindows) else list(sources)
    names = list(BASELINES) if names is None else list(names)
    options = options or {}
    _check_names(names, options)
    transferred = transfer_windows(target, sources[0])
    results: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    for name in names:
        row = f"{name}{SOURCE_SUFFIX}"
        reason = transfer_reason(name, sources, target)
        if reason is not None:
            results[row] = {"skipped": reason}
            continue
        results[row], pred = _fit_predict(name, sources, transferred, split, seed, progress, options.get(name, {}),
                                          task)
        if pred is not None:
            predictions[row] = pred
    return results, predictions


@overload
def run_baselines(windows: STWindows, names: Sequence[str] | None = ..., split: str = ..., progress: bool = ...,
                  seed: int = ..., options: dict[str, dict] | None = ...,
                  return_predictions: Literal[False] = ..., task: Task = ...) -> dict[str, dict]: ...


@overload
def run_baselines(windows: STWindows, names: Sequence[str] | None = ..., split: str = ..., progress: bool = ...,
                  seed: int = ..., options: dict[str, dict] | None = ..., *,
                  return_predictions: Literal[True], task: Task = ...
                  ) -> tuple[dict[str, dict], dict[str, np.ndarray]]: ...


def run_baselines(windows: STWindows, names: Sequence[str] | None = None, split: str = "test",
                  progress: bool = True, seed: int = 0, options: dict[str, dict] | None = None,
                  return_predictions: bool = False, task: Task = TASKS["forecasting"]
                  ) -> dict[str, dict] | tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Fit every baseline in ``names`` (default: all) and score it on ``split`` with ``task``'s masked metrics
    (:meth:`~st_instruct.tasks.base.Task.score`; the baselines forecast, so forecasting's by default).

    Returns ``{name: {"MAE", "RMSE", "MAPE", "WAPE", "per_horizon", "fit_seconds", "predict_seconds"}}``; a
    baseline that cannot forecast these windows (:class:`BaselineNotApplicable`) appears as
    ``{name: {"skipped": reason}}``. ``seed`` and ``progress`` go to the baselines that take them (STID);
    ``options`` maps a name to further constructor arguments, e.g. ``{"stid": {"max_epochs": 20}}``.
    With ``return_predictions`` the result is ``(results, {name: [B, P, N, C] forecast in original units})``,
    skipped baselines absent from the second dict (for plots of forecast vs truth).
    """
    names = list(BASELINES) if names is None else list(names)
    options = options or {}
    _check_names(names, options)
    results: dict[str, dict] = {}
    predictions: dict[str, np.ndarray] = {}
    for name in names:
        results[name], pred = _fit_predict(name, [windows], windows, split, seed, progress, options.get(name, {}),
                                           task)
        if return_predictions and pred is not None:
            predictions[name] = pred
    return (results, predictions) if return_predictions else results
