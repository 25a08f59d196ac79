"""Checks of new values where they enter a trained forecaster (``forecast()``, ``st-instruct predict``).

A forecaster answers whatever it is given, so a forecast of garbage looks as plausible as a real one: a history with
nothing observed gives the mean of the training data, a value of 1e30 a forecast from saturated activations, a
missing row in a timestamped input a forecast shifted by a step, channels in another order a forecast of the wrong
quantity. These checks refuse such inputs with one line naming the culprit (step, node, channel, value), or -- for
single windows of a longer input -- withhold that window's forecast and say so:

- **clock** (:func:`regular_clock`): the timestamps must follow one step; the first gap is named, or the missing
  steps are inserted as unobserved on request (``fill_gaps``).
- **channels** (:func:`order_channels`): named channels are matched to the model's channels by name and put in its
  order; a name the model does not know is refused (unnamed channels ``ch0, ch1, ...`` are read by position).
- **values** (:func:`check_value_range`): no value beyond ``±MAX_ABS_VALUE``; with the training dataset's profile,
  none further than ``PROFILE_RANGE_STDS`` training standard deviations from its training mean; without one
  (zero-shot), none further than ``INPUT_RANGE_SPREADS`` times the input's own spread from its median.
- **observed share** (:func:`observed_fractions`): the share of a window's history that was observed (not NaN, not
  the declared null); below ``min_observed`` (default :data:`DEFAULT_MIN_OBSERVED`), and always at 0, no forecast.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from st_instruct.data.stdata import STData, STDataError

DEFAULT_MIN_OBSERVED = 0.25
MAX_ABS_VALUE = 1e15  # float32 statistics of larger values (squares in a standard deviation) overflow
PROFILE_RANGE_STDS = 100.0
INPUT_RANGE_SPREADS = 100.0


def check_timestamps(timestamps: Any) -> pd.DatetimeIndex:
    """``timestamps`` as a ``DatetimeIndex``; numbers are refused (pandas would read them as nanoseconds since 1970
    and the step as ``1ns``), as is text that is no date."""
    values = np.asarray(timestamps)
    if values.dtype.kind in "iufb":
        raise STDataError(f"timestamps must be dates and times, found {values.dtype} numbers (first {values[0]!r}); "
                          "convert them first, e.g. pd.to_datetime(seconds, unit='s'), or leave timestamps out for "
                          "a forecaster trained without a calendar")
    try:
        return pd.DatetimeIndex(pd.to_datetime(values))
    except (ValueError, TypeError) as err:
        raise STDataError(f"timestamps are not dates and times ({err}); give datetime64 values or ISO text") from err


def regular_clock(data: STData, fill_gaps: bool = False) -> STData:
    """``data`` with one timestamp per step of ``data.freq``: unchanged when its timestamps are regular (or it has
    none); with ``fill_gaps`` missing steps are inserted as unobserved (NaN); otherwise the first gap is refused."""
    index = data.timestamps
    if index is None or data.freq is None or len(index) < 2:
        return data
    step = pd.Timedelta(data.freq)
    offsets = (index - index[0]) / step
    irregular = np.flatnonzero(np.asarray(index[1:] - index[:-1]) != step.to_timedelta64())
    if not len(irregular):
        return data
    i = int(irregular[0])
    on_grid = bool(np.allclose(offsets, np.round(offsets)))
    if not (fill_gaps and on_grid):
        remedy = ("give every step (NaN where nothing was observed), or pass --fill-gaps (fill_gaps=True) to insert "
                  "the missing steps as unobserved" if on_grid else
                  "some timestamps are off that step's grid: resample the input to one value per step")
        gap = _duration(index[i + 1] - index[i])
        raise STDataError(f"the input's clock is irregular: row {i + 1} ({index[i]}) is followed by row {i + 2} "
                          f"({index[i + 1]}), {gap} later where the step is {data.freq}; {remedy}")
    rows = np.round(offsets).astype(np.int64)
    values = np.full((int(rows[-1]) + 1, *data.values.shape[1:]), np.nan, dtype=np.float32)
    values[rows] = data.values
    full = pd.date_range(index[0], periods=len(values), freq=data.freq)
    return dataclasses.replace(data, values=values, timestamps=full, start=None)


def _duration(delta: pd.Timedelta) -> str:
    """``2h``, ``90min``, ``3D``: a time difference as a step is written."""
    return pd.tseries.frequencies.to_offset(delta).freqstr


def order_channels(data: STData, known: list[str] | None, whose: str) -> STData:
    """``data`` with its named channels in the order of ``known`` (the channels of ``whose``, e.g. "the training
    dataset 'nyc-bike'"). Unnamed channels (``ch0, ch1, ...``) and ``known=None`` (unknown) leave it as it
    is; a name not in ``known`` is refused. An input with fewer channels keeps them (a model may read a selection of
    its training dataset's channels by name)."""
    if known is None or data.channels == [f"ch{i}" for i in range(data.num_channels)]:
        return data
    unknown = [name for name in data.channels if name not in known]
    if unknown:
        raise STDataError(f"the input's channel {unknown[0]!r} (channels {', '.join(data.channels)}) is not one of "
                          f"the channels of {whose} ({', '.join(known)}): name them as the model knows them (they "
                          "are matched by name and put in its order), or leave the names out to read them by position")
    order = sorted(range(data.num_channels), key=lambda c: known.index(data.channels[c]))
    if order == list(range(data.num_channels)):
        return data
    return dataclasses.replace(data, values=data.values[:, :, order], channels=[data.channels[c] for c in order],
                               units=[data.units[c] for c in order])


def check_value_range(data: STData, profile: dict[str, Any] | None) -> None:
    """Refuse the first observed value of ``data`` outside the range this module's docstring states: by the
    training statistics of ``profile`` for a channel it names (the training dataset's), else by the input's own."""
    values, observed = data.values, data.mask()
    known = profile["channels"] if profile is not None else []
    for c, channel in enumerate(data.channels):
        column, seen = values[:, :, c], observed[:, :, c]
        if not seen.any():
            continue
        if channel in known:
            k = known.index(channel)
            mean, std = float(profile["scaler_mean"][k]), float(profile["scaler_std"][k])
            low, high = mean - PROFILE_RANGE_STDS * std, mean + PROFILE_RANGE_STDS * std
            rule = (f"training mean ± {PROFILE_RANGE_STDS:g} standard deviations of {profile['name']!r}, "
                    f"{mean:.4g} ± {PROFILE_RANGE_STDS:g} × {std:.4g}")
        else:
            q01, median, q99 = np.quantile(column[seen], [0.01, 0.5, 0.99])
            spread = max(float(q99 - q01), 1.0)
            low, high = median - INPUT_RANGE_SPREADS * spread, median + INPUT_RANGE_SPREADS * spread
            rule = (f"the input's median ± {INPUT_RANGE_SPREADS:g} × max(1, its 1-99 % spread), {median:.4g} ± "
                    f"{INPUT_RANGE_SPREADS:g} × {spread:.4g}")
        low, high = max(low, -MAX_ABS_VALUE), min(high, MAX_ABS_VALUE)
        outside = seen & ((column < low) | (column > high))
        if outside.any():
            t, n = (int(i) for i in np.argwhere(outside)[0])
            when = f"row {t + 1}" + (f" ({data.timestamps[t]})" if data.timestamps is not None else "")
            node = data.node_names[n] if data.node_names else f"node {n}"
            raise STDataError(f"the input's value {column[t, n]:.6g} at {when}, {node!r}, channel {channel!r} is "
                              f"outside [{low:.6g}, {high:.6g}], the range this forecaster accepts ({rule}; at most "
                              f"±{MAX_ABS_VALUE:g}); {int(outside.sum())} value(s) of {channel!r} are: check the "
                              "units and the file, and give NaN for values that were not observed")


def observed_fractions(data: STData, starts: np.ndarray, history: int) -> np.ndarray:
    """``[W]`` the share of observed values (:meth:`STData.mask`) in the ``history`` steps from each of ``starts``."""
    per_step = np.concatenate([[0.0], np.cumsum(data.mask().reshape(data.num_steps, -1).mean(axis=1))])
    starts = np.asarray(starts, dtype=np.int64)
    return (per_step[starts + history] - per_step[starts]) / history
