"""Sliding windows over an :class:`STData`: history ``L`` -> horizon ``P``, chronological splits, a train-only
scaler, null masks and calendar features.

Conventions shared with the field (docs/design.md §5): the series is cut chronologically into train / validation /
test segments first, and windows are taken *inside* each segment, so a segment of ``T_s`` steps gives
``(T_s - L - P) // stride + 1`` windows and no window reads across a split border. The scaler (z-score per
channel) is fitted on the observed values of the train segment only. Windows are index arrays into one
scaled copy of the series, never ``L + P`` copies of it; :meth:`STWindows.batch` gathers on demand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from st_instruct.data.missing import forward_fill
from st_instruct.data.stdata import STData, STDataError

SPLITS = ("train", "validation", "test")


def parse_split(split: str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """``"7:1:2"`` or ``(0.7, 0.1, 0.2)`` -> three fractions summing to 1."""
    if isinstance(split, str):
        parts = split.replace(",", ":").split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError as err:
            raise ValueError(f"split {split!r} must look like '7:1:2' (train:validation:test)") from err
    else:
        numbers = [float(p) for p in split]
    if len(numbers) != 3 or any(n < 0 for n in numbers) or sum(numbers) <= 0 or numbers[0] == 0 or numbers[2] == 0:
        raise ValueError(f"split {split!r} must give three non-negative parts (train:validation:test) with "
                         "train and test > 0, e.g. '7:1:2'")
    total = sum(numbers)
    return (numbers[0] / total, numbers[1] / total, numbers[2] / total)


def format_split(split: tuple[float, float, float]) -> str:
    """``(0.7, 0.1, 0.2)`` -> ``"7:1:2"``: parts out of 10 (or 100) when exact, else decimals."""
    for scale in (10, 100):
        parts = [r * scale for r in split]
        if all(abs(p - round(p)) < 1e-9 for p in parts):
            return ":".join(str(round(p)) for p in parts)
    return ":".join(f"{r:.4g}" for r in split)


def split_borders(num_steps: int, split: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Chronological ``[lo, hi)`` step ranges of train / validation / test."""
    train_end = int(round(num_steps * split[0]))
    val_end = int(round(num_steps * (split[0] + split[1])))
    return {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, num_steps)}


@dataclass
class StandardScaler:
    """Z-score per channel: ``(x - mean[c]) / std[c]``; statistics from observed values only."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]

    @classmethod
    def fit(cls, values: np.ndarray, observed: np.ndarray) -> StandardScaler:
        """Fit on ``values [T, N, C]`` where ``observed [T, N, C]`` is True."""
        C = values.shape[-1]
        mean = np.zeros(C, dtype=np.float32)
        std = np.ones(C, dtype=np.float32)
        for c in range(C):
            v = values[..., c][observed[..., c]].astype(np.float64)
            if v.size:
                mean[c] = v.mean()
                std[c] = v.std() if v.std() > 1e-8 else 1.0
        return cls(mean=mean, std=std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def window_statistics(values: np.ndarray, observed: np.ndarray, axis: tuple[int, ...]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the observed ``values`` over ``axis`` (kept as size-1 axes), float32: the strict zero-shot
    scaler, fitted on one sample's history window so that no value outside it is read.

    The conventions of :class:`StandardScaler`: a std below 1e-8 becomes 1; where nothing is observed, mean 0 and
    std 1. E.g. ``values`` / ``observed`` ``[B, L, N, C]`` and ``axis=(1,)`` give ``[B, 1, N, C]``.
    """
    v = np.where(observed, np.nan_to_num(values), 0.0).astype(np.float64)
    count = observed.sum(axis=axis, keepdims=True)
    mean = v.sum(axis=axis, keepdims=True) / np.maximum(count, 1)
    var = np.where(observed, (v - mean) ** 2, 0.0).sum(axis=axis, keepdims=True) / np.maximum(count, 1)
    std = np.sqrt(var)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


@dataclass
class STWindows:
    """Windows of one dataset, ready for baselines, sample builders and models.

    Attributes:
        data: the source dataset.
        history / horizon / stride: ``L``, ``P`` and the step between consecutive windows.
        borders: ``{split: (lo, hi)}`` step ranges.
        starts: ``{split: [B_s]}`` index of the first history step of every window.
        scaler: fitted on the observed train values.
        scaled: ``[T, N, C]`` float32 scaled series, unobserved entries set to 0 (the scaled mean).
        observed: ``[T, N, C]`` bool, True where observed.
        time_of_day: ``[T]`` int step within the day (0 .. steps_per_day - 1); 0 with ``no_calendar``.
        day_of_week: ``[T]`` int, Monday = 0; 0 with ``no_calendar``.
    """

    data: STData
    history: int
    horizon: int
    stride: int
    split: tuple[float, float, float]
    borders: dict[str, tuple[int, int]]
    starts: dict[str, np.ndarray]
    scaler: StandardScaler
    scaled: np.ndarray
    observed: np.ndarray
    time_of_day: np.ndarray
    day_of_week: np.ndarray

    @property
    def steps_per_day(self) -> int:
        return self.data.steps_per_day

    def hiding(self, hidden: np.ndarray) -> STWindows:
        """These windows as a user whose series lacks the ``hidden`` entries (``[T, N, C]`` bool) has them: those
        values NaN and unobserved, every other array and the scaler (fitted on the full series) unchanged. What the
        baselines fit on and read in the sparse-history setting (``missing_pattern`` on a forecaster). Nothing
        hidden: these windows themselves (no copy of the series: 8,600 sensors' are hundreds of MB)."""
        if not hidden.any():
            return self
        values = np.where(hidden, np.nan, self.data.values)
        return dataclasses.replace(self, data=dataclasses.replace(self.data, values=values),
                                   observed=self.observed & ~hidden, scaled=np.where(hidden, 0.0, self.scaled))

    def split_steps(self, split: str) -> np.ndarray:
        """``[T, 1, 1]`` bool: the steps inside ``split``'s borders (broadcasts against ``[T, N, C]`` masks)."""
        inside = np.zeros((self.data.num_steps, 1, 1), dtype=bool)
        lo, hi = self.borders[split]
        inside[lo:hi] = True
        return inside

    def forward_filled(self) -> STWindows:
        """These windows after the simplest impute-then-forecast step: every entry not observed takes its series'
        last observed value (:func:`~st_instruct.data.missing.forward_fill`, causal) and counts as observed; the
        entries before a series' first observation stay missing. What the baselines fit on and read with
        ``history_fill: forward``."""
        values, available = forward_fill(self.data.values, self.observed)
        scaled, _ = forward_fill(self.scaled, self.observed)
        data = dataclasses.replace(self.data, values=np.where(available, values, np.nan))
        return dataclasses.replace(self, data=data, observed=available, scaled=np.where(available, scaled, 0.0))

    @property
    def has_calendar(self) -> bool:
        """False when the data run with ``no_calendar`` (time features are zero); windows are never built on an
        unknown calendar (:func:`build_windows` refuses)."""
        return self.data.has_calendar

    @property
    def time_of_week(self) -> np.ndarray:
        """``[T]`` slot within the week (0 .. 7 * steps_per_day - 1)."""
        return self.day_of_week * self.steps_per_day + self.time_of_day

    def keeping_windows(self, split: str, rows: np.ndarray) -> STWindows:
        """A copy whose ``split`` keeps only its windows ``rows`` (indices into ``starts[split]``): what is scored
        of a split when an evaluation covers some of its windows; the series, the scaler, the borders and the
        other splits are unchanged (a model fitted on the train split fits the same)."""
        return dataclasses.replace(self, starts={**self.starts, split: self.starts[split][np.asarray(rows)]})

    def first_train_windows(self, count: int) -> STWindows:
        """A copy whose train split keeps only its first ``count`` windows (few-shot), the train border ending
        with the last step they cover; the scaler, the other splits and the series are unchanged."""
        train = self.starts["train"]
        if not 1 <= count <= len(train):
            raise ValueError(f"the few-shot train split needs 1 .. {len(train)} windows of {self.data.name!r}, "
                             f"found {count}")
        kept = train[:count]
        border = (self.borders["train"][0], int(kept[-1]) + self.history + self.horizon)
        return dataclasses.replace(self, starts={**self.starts, "train": kept},
                                   borders={**self.borders, "train": border})

    def num_windows(self, split: str) -> int:
        return len(self._starts(split))

    def _starts(self, split: str) -> np.ndarray:
        if split not in self.starts:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.starts[split]

    def batch(self, split: str, index: np.ndarray | slice | None = None) -> dict[str, np.ndarray]:
        """Gather windows of ``split`` (all, or ``index`` into that split's windows).

        Returns a dict of arrays, ``B`` windows:
            x ``[B, L, N, C]`` scaled history (unobserved = 0); x_mask ``[B, L, N, C]`` bool;
            y ``[B, P, N, C]`` target in original units (NaN where missing); y_mask ``[B, P, N, C]`` bool;
            x_tod / x_dow ``[B, L]`` and y_tod / y_dow ``[B, P]`` calendar features; start ``[B]``.
        """
        starts = self._starts(split)
        if index is not None:
            starts = starts[index]
        L, P = self.history, self.horizon
        hist = starts[:, None] + np.arange(L)[None, :]
        fut = starts[:, None] + L + np.arange(P)[None, :]
        return {
            "x": self.scaled[hist],
            "x_mask": self.observed[hist],
            "y": self.data.values[fut],
            "y_mask": self.observed[fut],
            "x_tod": self.time_of_day[hist],
            "x_dow": self.day_of_week[hist],
            "y_tod": self.time_of_day[fut],
            "y_dow": self.day_of_week[fut],
            "start": starts,
        }


def calendar_features(data: STData) -> tuple[np.ndarray, np.ndarray]:
    """``([T] time-of-day step, [T] day-of-week)`` as int64; zeros when the user chose ``no_calendar``.

    An unknown calendar is refused (:meth:`STData.require_calendar` names the flags to give), never assumed."""
    if not data.require_calendar():
        zeros = np.zeros(data.num_steps, dtype=np.int64)
        return zeros, zeros.copy()
    ts = data.time_index()
    seconds = (ts - ts.normalize()).total_seconds().to_numpy()
    step_seconds = 86400.0 / data.steps_per_day
    tod = np.minimum((seconds // step_seconds).astype(np.int64), data.steps_per_day - 1)
    return tod, ts.day_of_week.to_numpy().astype(np.int64)


def build_windows(data: STData, history: int, horizon: int, split: str | tuple[float, ...] = "7:1:2",
                  stride: int = 1) -> STWindows:
    """Cut ``data`` into chronological splits and index the ``history -> horizon`` windows of each (``horizon`` 0:
    windows of ``history`` steps alone, the imputation task's)."""
    if history < 1 or horizon < 0 or stride < 1:
        raise ValueError(f"history and stride must be >= 1 and horizon >= 0, found {history}, {horizon}, {stride}")
    ratios = parse_split(split)
    borders = split_borders(data.num_steps, ratios)
    need = history + horizon
    if data.num_steps < need:
        raise STDataError(f"dataset {data.name!r}: the series has T={data.num_steps} steps, shorter than "
                          f"history + horizon = {history} + {horizon} = {need}")
    starts = {}
    for name, (lo, hi) in borders.items():
        length = hi - lo
        if length < need and not (name == "validation" and length == 0):
            raise STDataError(
                f"dataset {data.name!r}: the {name} split has {length} steps ({lo}..{hi}), shorter than "
                f"history + horizon = {need}; use a longer series, a shorter history/horizon or a different "
                f"split than {format_split(ratios)}")
        starts[name] = np.arange(lo, hi - need + 1, stride, dtype=np.int64)
    tod, dow = calendar_features(data)  # refuses an unknown calendar before any work
    observed = data.mask()
    _check_observed(data, observed, borders)
    train_lo, train_hi = borders["train"]
    scaler = StandardScaler.fit(data.values[train_lo:train_hi], observed[train_lo:train_hi])
    scaled = _scaled_series(data, observed, scaler)
    return STWindows(data=data, history=history, horizon=horizon, stride=stride, split=ratios, borders=borders,
                     starts=starts, scaler=scaler, scaled=scaled, observed=observed, time_of_day=tod,
                     day_of_week=dow)


def windows_at(data: STData, history: int, horizon: int, starts: np.ndarray, scaler: StandardScaler,
               stride: int = 1) -> STWindows:
    """The windows of ``data`` starting at ``starts``, all in the ``test`` split (train and validation empty), scaled
    with ``scaler`` fitted elsewhere: what a saved forecaster reads to forecast new values
    (:mod:`st_instruct.inference`; the scaler is its training data's, from the data profile). Steps after the input
    whose values are unknown are NaN in ``data`` and only ever appear as (unobserved) targets."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) and (starts.min() < 0 or starts.max() + history + horizon > data.num_steps):
        raise ValueError(f"dataset {data.name!r}: windows of {history} + {horizon} steps starting at "
                         f"{starts.min()}..{starts.max()} do not fit its {data.num_steps} steps")
    tod, dow = calendar_features(data)
    observed = data.mask()
    scaled = _scaled_series(data, observed, scaler)
    empty = np.zeros(0, dtype=np.int64)
    return STWindows(data=data, history=history, horizon=horizon, stride=stride, split=(0.0, 0.0, 1.0),
                     borders={"train": (0, 0), "validation": (0, 0), "test": (0, data.num_steps)},
                     starts={"train": empty, "validation": empty.copy(), "test": starts}, scaler=scaler,
                     scaled=scaled, observed=observed, time_of_day=tod, day_of_week=dow)


def _scaled_series(data: STData, observed: np.ndarray, scaler: StandardScaler) -> np.ndarray:
    """``[T, N, C]`` float32 z-scores of ``data``, unobserved entries 0 (the scaled mean)."""
    return np.where(observed, scaler.transform(np.nan_to_num(data.values)), 0.0).astype(np.float32)


def _check_observed(data: STData, observed: np.ndarray, borders: dict[str, tuple[int, int]]) -> None:
    """Refuse a series (or a split) with no observed value: its scaler, forecasts and metrics would be empty."""
    null = "NaN" if data.null_value is None else f"NaN or the null value {data.null_value:g}"
    if not observed.any():
        raise STDataError(f"dataset {data.name!r}: every one of its {observed.size} values is missing ({null}); "
                          "check the file, or the declared null value (--null-value / dataset_null_value)")
    for name, (lo, hi) in borders.items():
        if hi > lo and not observed[lo:hi].any():
            raise STDataError(f"dataset {data.name!r}: the {name} split (steps {lo}..{hi}) has no observed value "
                              f"(all {null}); use another --split or time range (--start / --end)")


# the value range a rendered image colours (st_instruct.samples.render): these quantiles of the train split, so one
# outlier does not wash every colour out
RANGE_QUANTILES = (0.005, 0.995)


def image_value_range(windows: STWindows, channel: int) -> tuple[float, float]:
    """``(low, high)`` of ``channel``: the :data:`RANGE_QUANTILES` of its observed train-split values (a constant
    channel gets ``(v, v + 1)``). Fixed per dataset, so a colour means the same value in every window."""
    lo, hi = windows.borders["train"]
    values = windows.data.values[lo:hi, :, channel]
    observed = windows.observed[lo:hi, :, channel]
    kept = values[observed]
    if kept.size == 0:
        raise STDataError(f"dataset {windows.data.name!r}: channel {channel} has no observed value in the train "
                          "split, so there is no value range to colour it by")
    low, high = (float(q) for q in np.quantile(kept, RANGE_QUANTILES))
    return (low, high) if high > low else (low, low + 1.0)
