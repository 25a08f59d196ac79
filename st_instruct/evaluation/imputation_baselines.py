"""Imputation baselines as pure array functions: each fills the entries of a window it is not given.

Every imputer follows :class:`Imputer`: ``fit`` reads a training series ``[T, N, C]`` with its ``visible`` mask
(values where not visible are never read), ``impute`` fills windows ``[B, L, N, C]``: the result equals the input
bit for bit wherever visible and is finite everywhere (each baseline's fallbacks end at the training means).
Hidden values are never read, so NaN, 0 or the hidden truth there give the same output.

The classical baselines follow the protocol of the spatio-temporal imputation papers (mean, linear interpolation,
graph-neighbour mean, historical average: GRIN, Cini et al., ICLR 2022; SPIN, Marisca et al., NeurIPS 2022); the
learned ones are PyPOTS' (Du et al., JMLR 2023) SAITS (Du et al., ESWA 2023) and BRITS (Cao et al., NeurIPS 2018),
with every (node, channel) series a feature.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from st_instruct.evaluation.baselines import BaselineNotApplicable


class Imputer(Protocol):
    """What the harness needs from an imputation baseline (module docstring)."""

    name: str

    def fit(self, values: np.ndarray, visible: np.ndarray, *, time_of_week: np.ndarray | None = None,
            adjacency: np.ndarray | None = None, seed: int = 0) -> Imputer: ...

    def impute(self, values: np.ndarray, visible: np.ndarray, *, time_of_week: np.ndarray | None = None
               ) -> np.ndarray: ...


def _checked(values: np.ndarray, visible: np.ndarray, ndim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, visible as bool)`` after checking shapes and that every visible value is finite."""
    values, visible = np.asarray(values), np.asarray(visible, dtype=bool)
    if values.ndim != ndim or values.shape != visible.shape:
        layout = "[T, N, C]" if ndim == 3 else "[B, L, N, C]"
        raise ValueError(f"{name}: values and visible must both be {layout}, got {values.shape} and {visible.shape}")
    if not np.isfinite(values[visible]).all():
        raise ValueError(f"{name}: values must be finite where visible")
    return values, visible


def _series_mean(values: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """``[N, C]`` float64 mean of each (node, channel)'s visible values of ``[T, N, C]``; the global mean of the
    visible values where a series has none (0 when nothing is visible)."""
    x = np.where(visible, values, 0.0).astype(np.float64)
    counts = visible.sum(0)
    overall = x.sum() / max(int(counts.sum()), 1)
    return np.where(counts > 0, x.sum(0) / np.maximum(counts, 1), overall)


def _merged(values: np.ndarray, visible: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``values`` where visible, ``fill`` elsewhere, in ``values``' float dtype (float64 for integers)."""
    return np.where(visible, values, fill).astype(np.result_type(values.dtype, np.float32))


class _Fitted:
    """Shared state: the training per-(node, channel) mean and the checks of fitted windows."""

    name: str
    node_mean: np.ndarray | None = None  # [N, C] float64

    def _fit_mean(self, values: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, visible = _checked(values, visible, 3, self.name)
        self.node_mean = _series_mean(values, visible)
        return values, visible

    def _windows(self, values: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.node_mean is None:
            raise RuntimeError(f"{self.name}: call fit(...) before impute")
        values, visible = _checked(values, visible, 4, self.name)
        if values.shape[2:] != self.node_mean.shape:
            raise ValueError(f"{self.name}: fitted on [N, C] = {list(self.node_mean.shape)}, "
                             f"got windows of {list(values.shape[2:])}")
        return values, visible


class MeanImputer(_Fitted):
    """Mean of the window's visible values per (node, channel); the training mean of the series where the window
    shows none (then the global training mean)."""

    name = "mean"

    def fit(self, values, visible, *, time_of_week=None, adjacency=None, seed=0) -> MeanImputer:
        self._fit_mean(values, visible)
        return self

    def fill(self, values: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """``[B, L, N, C]`` float64 mean fill of checked windows."""
        counts = visible.sum(1)
        window_mean = np.where(visible, values, 0.0).sum(1) / np.maximum(counts, 1)
        fill = np.where(counts > 0, window_mean, self.node_mean)
        return np.broadcast_to(fill[:, None], values.shape)

    def impute(self, values, visible, *, time_of_week=None) -> np.ndarray:
        values, visible = self._windows(values, visible)
        return _merged(values, visible, self.fill(values, visible))


class LinearInterpolation(_Fitted):
    """Linear interpolation in time of each (node, channel) series of the window between its visible neighbours;
    the nearest visible value before the first / after the last one; :class:`MeanImputer`'s fallback (the training
    mean) for a series with nothing visible in the window."""

    name = "linear_interpolation"

    def fit(self, values, visible, *, time_of_week=None, adjacency=None, seed=0) -> LinearInterpolation:
        self._fit_mean(values, visible)
        return self

    def fill(self, values: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """``[B, L, N, C]`` float64 interpolation of checked windows."""
        x = np.moveaxis(np.where(visible, values, 0.0).astype(np.float64), 1, -1)  # [B, N, C, L]
        seen = np.moveaxis(visible, 1, -1)
        L = x.shape[-1]
        t = np.arange(L)
        prev = np.maximum.accumulate(np.where(seen, t, -1), axis=-1)  # latest visible step <= t, -1 if none
        following = np.flip(np.minimum.accumulate(np.flip(np.where(seen, t, L), -1), axis=-1), -1)  # L if none
        at_prev = np.take_along_axis(x, np.clip(prev, 0, L - 1), -1)
        at_next = np.take_along_axis(x, np.clip(following, 0, L - 1), -1)
        between = at_prev + (at_next - at_prev) * (t - prev) / np.maximum(following - prev, 1)
        has_prev, has_next = prev >= 0, following < L
        fill = np.where(has_prev & has_next, between, np.where(has_prev, at_prev, at_next))
        fill = np.where(has_prev | has_next, fill, self.node_mean[..., None])
        return np.moveaxis(fill, -1, 1)

    def impute(self, values, visible, *, time_of_week=None) -> np.ndarray:
        values, visible = self._windows(values, visible)
        return _merged(values, visible, self.fill(values, visible))


class NeighbourMean(LinearInterpolation):
    """At each step, the adjacency-weighted mean of the visible values of the node's graph neighbours (self
    excluded); :class:`LinearInterpolation` where no neighbour is visible. Needs an adjacency ``[N, N]`` with
    non-negative weights (GRIN / SPIN's graph-neighbour baseline)."""

    name = "neighbour_mean"

    def __init__(self) -> None:
        self.weights: np.ndarray | None = None  # [N, N], zero diagonal

    def fit(self, values, visible, *, time_of_week=None, adjacency=None, seed=0) -> NeighbourMean:
        if adjacency is None:
            raise BaselineNotApplicable("neighbour_mean needs a graph (adjacency [N, N]), and none was given")
        values, _ = self._fit_mean(values, visible)
        weights = np.array(adjacency, dtype=np.float64)
        N = values.shape[1]
        if weights.shape != (N, N) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"neighbour_mean: adjacency must be a finite non-negative [{N}, {N}] array, "
                             f"got shape {weights.shape}")
        np.fill_diagonal(weights, 0.0)
        self.weights = weights
        return self

    def impute(self, values, visible, *, time_of_week=None) -> np.ndarray:
        values, visible = self._windows(values, visible)
        x = np.where(visible, values, 0.0).astype(np.float64)
        total = np.einsum("ij,bljc->blic", self.weights, x)
        weight = np.einsum("ij,bljc->blic", self.weights, visible.astype(np.float64))
        fill = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), self.fill(values, visible))
        return _merged(values, visible, fill)


class HistoricalAverage(_Fitted):
    """Training mean of the visible values per (time-of-week slot, node, channel); the training mean of the series
    for a slot never seen (GRIN / SPIN's HA baseline). Needs ``time_of_week`` in ``fit`` and ``impute``."""

    name = "historical_average"

    def __init__(self) -> None:
        self.table: np.ndarray | None = None  # [S, N, C] float64

    @staticmethod
    def _slots(time_of_week: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        if time_of_week is None:
            raise BaselineNotApplicable("historical_average needs the time-of-week slot of every step, "
                                        "and none was given")
        slots = np.asarray(time_of_week)
        if slots.shape != shape or not np.issubdtype(slots.dtype, np.integer) or (slots < 0).any():
            raise ValueError(f"historical_average: time_of_week must be non-negative integers of shape {list(shape)}, "
                             f"got {slots.dtype} {list(slots.shape)}")
        return slots

    def fit(self, values, visible, *, time_of_week=None, adjacency=None, seed=0) -> HistoricalAverage:
        slots = self._slots(time_of_week, np.shape(values)[:1])
        values, visible = self._fit_mean(values, visible)
        sums = np.zeros((int(slots.max(initial=0)) + 1,) + values.shape[1:])
        counts = np.zeros_like(sums)
        np.add.at(sums, slots, np.where(visible, values, 0.0))
        np.add.at(counts, slots, visible)
        self.table = np.where(counts > 0, sums / np.maximum(counts, 1), self.node_mean)
        return self

    def impute(self, values, visible, *, time_of_week=None) -> np.ndarray:
        values, visible = self._windows(values, visible)
        slots = self._slots(time_of_week, values.shape[:2])
        known = slots < len(self.table)
        fill = np.where(known[..., None, None], self.table[np.where(known, slots, 0)], self.node_mean)
        return _merged(values, visible, fill)


@contextlib.contextmanager
def _quiet_pypots() -> Iterator[None]:
    """PyPOTS' logger at ERROR (it logs every epoch at INFO) and its import banner muted, restored after."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        from pypots.utils.logging import logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _PyPOTSImputer(_Fitted):
    """A PyPOTS imputer on windows of ``window`` steps, every (node, channel) series one feature, z-scored with
    its training mean and deviation. ``fit`` cuts the training series into windows every ``stride`` steps (default a
    quarter window) and trains about ``steps`` optimiser steps: ``epochs`` = ``steps * batch_size / windows``,
    rounded, at least 1 (or ``epochs`` given), so a short series is not left under-trained nor a long one run for
    hours."""

    def __init__(self, window: int = 24, steps: int = 1000, epochs: int | None = None, batch_size: int = 32,
                 stride: int | None = None, patience: int | None = None, device: str = "cpu") -> None:
        self.window, self.steps, self.epochs, self.batch_size, self.patience, self.device = (
            window, steps, epochs, batch_size, patience, device)
        self.stride = stride or max(1, window // 4)
        self.epochs_run: int | None = None  # what fit ran
        self.scale: np.ndarray | None = None  # [N, C]
        self.model = None

    def _build(self, n_features: int):
        raise NotImplementedError

    def _scaled(self, values: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """``[..., N * C]`` float32 z-scores, NaN where not visible."""
        z = np.where(visible, (np.where(visible, values, 0.0) - self.node_mean) / self.scale, np.nan)
        return z.reshape(*z.shape[:-2], -1).astype(np.float32)

    def fit(self, values, visible, *, time_of_week=None, adjacency=None, seed=0):
        values, visible = self._fit_mean(values, visible)
        T, N, C = values.shape
        if T < self.window:
            raise BaselineNotApplicable(f"{self.name} needs at least window={self.window} training steps, got {T}")
        counts = visible.sum(0)
        variance = ((np.where(visible, values, self.node_mean) - self.node_mean) ** 2).sum(0) / np.maximum(counts, 1)
        deviation = np.sqrt(variance)
        self.scale = np.where(deviation > 1e-8, deviation, 1.0)
        starts = np.arange(0, T - self.window + 1, self.stride)
        scaled = self._scaled(values, visible)
        train = scaled[starts[:, None] + np.arange(self.window)[None, :]]  # [windows, window, N * C]
        self.epochs_run = self.epochs or max(1, round(self.steps * self.batch_size / len(starts)))
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]), _quiet_pypots():
                np.random.seed(seed)
                torch.manual_seed(seed)
                self.model = self._build(N * C)
                self.model.fit({"X": train})
        finally:
            np.random.set_state(numpy_state)
        return self

    def impute(self, values, visible, *, time_of_week=None) -> np.ndarray:
        values, visible = self._windows(values, visible)
        B, L, N, C = values.shape
        if L != self.window:
            raise ValueError(f"{self.name}: fitted on windows of {self.window} steps, got {L}; pass window={L}")
        with torch.random.fork_rng(devices=[]), _quiet_pypots():  # its DataLoader draws a seed from torch's RNG
            z = self.model.impute({"X": self._scaled(values, visible)})
        fill = np.asarray(z, dtype=np.float64).reshape(B, L, N, C) * self.scale + self.node_mean
        return _merged(values, visible, np.where(np.isfinite(fill), fill, self.node_mean))


class SAITS(_PyPOTSImputer):
    """SAITS (Du et al., "SAITS: Self-attention-based imputation for time series", ESWA 2023) from PyPOTS, small
    by default: 2 layers, d_model 64, 4 heads of 16, feed-forward 64."""

    name = "saits"

    def __init__(self, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, d_k: int = 16, d_v: int = 16,
                 d_ffn: int = 64, dropout: float = 0.0, **options) -> None:
        super().__init__(**options)
        self.sizes = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_k=d_k, d_v=d_v, d_ffn=d_ffn,
                          dropout=dropout)

    def _build(self, n_features: int):
        from pypots.imputation import SAITS as Model

        return Model(n_steps=self.window, n_features=n_features, **self.sizes, batch_size=self.batch_size,
                     epochs=self.epochs_run, patience=self.patience, device=self.device, model_saving_strategy=None)


class BRITS(_PyPOTSImputer):
    """BRITS (Cao et al., "BRITS: Bidirectional recurrent imputation for time series", NeurIPS 2018) from PyPOTS,
    with a 64-unit recurrent state by default."""

    name = "brits"

    def __init__(self, *, rnn_hidden_size: int = 64, **options) -> None:
        super().__init__(**options)
        self.rnn_hidden_size = rnn_hidden_size

    def _build(self, n_features: int):
        from pypots.imputation import BRITS as Model

        return Model(n_steps=self.window, n_features=n_features, rnn_hidden_size=self.rnn_hidden_size,
                     batch_size=self.batch_size, epochs=self.epochs_run, patience=self.patience, device=self.device,
                     model_saving_strategy=None)


IMPUTATION_BASELINES: dict[str, type] = {
    "mean": MeanImputer,
    "linear_interpolation": LinearInterpolation,
    "neighbour_mean": NeighbourMean,
    "historical_average": HistoricalAverage,
    "saits": SAITS,
    "brits": BRITS,
}


def build_imputer(name: str, **options) -> Imputer:
    """Construct the imputation baseline registered as ``name`` with constructor ``options``."""
    if name not in IMPUTATION_BASELINES:
        raise ValueError(f"unknown imputation baseline {name!r}; known: {sorted(IMPUTATION_BASELINES)}")
    return IMPUTATION_BASELINES[name](**options)


def run_imputers(names: Sequence[str], train_values: np.ndarray, train_visible: np.ndarray, values: np.ndarray,
                 visible: np.ndarray, *, train_time_of_week: np.ndarray | None = None,
                 time_of_week: np.ndarray | None = None, adjacency: np.ndarray | None = None, seed: int = 0,
                 options: dict[str, dict] | None = None) -> dict[str, dict]:
    """Fit every imputer of ``names`` on the training series and fill the windows ``values`` / ``visible``.

    Returns ``{name: {"pred": [B, L, N, C] filled, "fit_seconds", "predict_seconds"}}``, or ``{name: {"skipped":
    reason}}`` for one that cannot run here (:class:`BaselineNotApplicable`); ``options`` maps a name to
    constructor arguments, e.g. ``{"saits": {"epochs": 50}}``.
    """
    options = options or {}
    for name in [*names, *options]:
        if name not in IMPUTATION_BASELINES:
            raise ValueError(f"unknown imputation baseline {name!r}; known: {sorted(IMPUTATION_BASELINES)}")
    results: dict[str, dict] = {}
    for name in names:
        imputer = build_imputer(name, **options.get(name, {}))
        try:
            tic = time.perf_counter()
            imputer.fit(train_values, train_visible, time_of_week=train_time_of_week, adjacency=adjacency, seed=seed)
            fit_seconds = time.perf_counter() - tic
            tic = time.perf_counter()
            pred = imputer.impute(values, visible, time_of_week=time_of_week)
        except BaselineNotApplicable as err:
            results[name] = {"skipped": str(err)}
            continue
        results[name] = {"pred": pred, "fit_seconds": fit_seconds, "predict_seconds": time.perf_counter() - tic}
    return results
