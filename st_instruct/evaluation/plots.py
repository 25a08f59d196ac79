"""PNG figures of an evaluation: forecasts against the truth for a few nodes, and the error per horizon step.

Figures are built as :class:`matplotlib.figure.Figure` objects and saved through the Agg canvas, never through
``pyplot``: nothing is registered in pyplot's global figure list (so nothing leaks, nothing needs closing), no
display is needed, and the backend of a notebook or application that imports this module is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from st_instruct.data.windows import STWindows
from st_instruct.tasks import Task

DPI = 110
PERCENT_METRICS = ("MAPE", "WAPE")
TRUTH_COLOR = "black"
MAX_TRACE_WINDOWS = 288


def model_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per model name (tab10, then tab20), by position in ``names``; pass the same mapping to several
    plots so a model keeps its colour across figures."""
    palette = colormaps["tab10"].colors if len(names) <= 10 else colormaps["tab20"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def window_times(windows: STWindows, split: str = "test", task: Task | None = None) -> np.ndarray:
    """``[B, P]`` time of every target step of every window of ``split`` (the ``task``'s target steps: by default
    forecasting's, the horizon after the history): ``datetime64`` when the dataset has a calendar, else the absolute
    step index (int64). The ``times`` argument of :func:`plot_forecasts`."""
    windows.num_windows(split)  # raises a KeyError naming the known splits
    offsets = (windows.history + np.arange(windows.horizon) if task is None
               else task.target_steps(windows.history, windows.horizon))
    steps = windows.starts[split][:, None] + offsets[None, :]
    index = windows.data.time_index()
    return steps if index is None else index.to_numpy()[steps]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _is_datetime(times: np.ndarray) -> bool:
    return np.issubdtype(times.dtype, np.datetime64)


def _format_time_axis(ax: Any) -> None:
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _check_arrays(target: np.ndarray, predictions: Mapping[str, np.ndarray], mask: np.ndarray | None,
                  times: np.ndarray | None, channel: int) -> None:
    if target.ndim != 4:
        raise ValueError(f"target must be [B, P, N, C], found shape {target.shape}")
    for name, pred in predictions.items():
        if np.shape(pred) != target.shape:
            raise ValueError(f"predictions[{name!r}] has shape {np.shape(pred)}, expected the target's "
                             f"[B, P, N, C] = {target.shape}")
    if mask is not None and mask.shape != target.shape:
        raise ValueError(f"mask has shape {mask.shape}, expected the target's {target.shape}")
    if times is not None and times.shape != target.shape[:2]:
        raise ValueError(f"times has shape {times.shape}, expected [B, P] = {target.shape[:2]} (see window_times)")
    if not 0 <= channel < target.shape[3]:
        raise ValueError(f"channel {channel} is out of range: the target has C={target.shape[3]} channels")


def pick_nodes(target: np.ndarray, mask: np.ndarray, channel: int = 0, count: int = 4) -> list[int]:
    """The ``count`` nodes with the most observed targets of ``channel`` (``[B, P, N, C]`` arrays), ties broken
    by the larger observed volume (the busiest nodes are the most telling), then by the lower index."""
    observed = mask[..., channel]  # [B, P, N]
    volume = np.where(observed, np.abs(np.nan_to_num(target[..., channel])), 0.0).sum((0, 1))
    order = np.lexsort((-volume, -observed.sum((0, 1))))  # the last key is the primary one
    return [int(n) for n in order[:count]]


def axis_label(name: str, unit: str = "") -> str:
    """The y-axis label of a channel: ``"inflow (trips/h)"``, or the name alone when the unit is empty."""
    return f"{name} ({unit})" if unit else name


def _time_step(times: np.ndarray) -> Any:
    """The data's step in the units of ``times`` ``[B, P]``: between a window's first two targets, or with
    ``P = 1`` the smallest spacing of the windows' targets (None for a single window)."""
    if times.shape[1] > 1:
        return times[0, 1] - times[0, 0]
    spacing = np.diff(np.unique(times[:, 0]))
    return spacing.min() if len(spacing) else None


def _with_breaks(x: np.ndarray, y: np.ndarray, step: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(x, y, isolated)``: the points of a line sorted by ``x``, with a NaN point inserted wherever two
    consecutive points are more than ``step`` apart, so the line breaks there instead of joining across the gap
    (a split with missing stretches, sampled windows, a stride). ``isolated``: some point has no neighbour to
    join, so the line needs markers to be seen."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], np.asarray(y, dtype=np.float64)[order]
    gaps = np.zeros(0, dtype=np.int64) if step is None or len(x) < 2 else np.flatnonzero(np.diff(x) > step)
    if len(gaps):
        dated = _is_datetime(x)
        middle = x[gaps] + (x[gaps + 1] - x[gaps]) / 2 if dated else (x[gaps] + x[gaps + 1]) / 2
        x = np.insert(x if dated else x.astype(np.float64), gaps + 1, middle)
        y = np.insert(y, gaps + 1, np.nan)
    missing = np.isnan(y)
    alone = np.concatenate([[True], missing[:-1]]) & np.concatenate([missing[1:], [True]]) & ~missing
    return x, y, bool(alone.any())


def forecast_figure(target: np.ndarray, predictions: Mapping[str, np.ndarray], mask: np.ndarray | None = None,
                    nodes: Sequence[int] | None = None, channel: int = 0, node_names: Sequence[str] | None = None,
                    window: int | None = None, channel_name: str | None = None, units: str = "",
                    max_nodes: int = 4, times: np.ndarray | None = None, max_windows: int | None = None,
                    title: str | None = None, colors: Mapping[str, Any] | None = None) -> Figure:
    """The figure of :func:`plot_forecasts` (same arguments but the path), not saved: its axes and lines can be
    read (``fig.axes``, ``ax.get_ylabel()``, ``line.get_ydata()``)."""
    target = np.asarray(target)
    times = None if times is None else np.asarray(times)
    _check_arrays(target, predictions, mask, times, channel)
    B, P, N, _ = target.shape
    mask = np.isfinite(target) if mask is None else np.asarray(mask, dtype=bool) & np.isfinite(target)
    if B == 0:
        raise ValueError("target has no windows (B = 0); nothing to plot")
    if nodes is None:
        nodes = pick_nodes(target, mask, channel, max_nodes)
    for n in nodes:
        if not 0 <= n < N:
            raise ValueError(f"node {n} is out of range: the target has N={N} nodes")
    if node_names is not None and len(node_names) != N:
        raise ValueError(f"node_names has {len(node_names)} entries, expected one per node (N={N})")
    if window is not None and not 0 <= window < B:
        raise ValueError(f"window {window} is out of range: the target has B={B} windows")
    if times is None:
        times = np.arange(B)[:, None] + np.arange(P)[None, :]
    colors = dict(colors) if colors is not None else model_colors(list(predictions))
    truth = np.where(mask, target, np.nan)[..., channel]  # [B, P, N]
    dated = _is_datetime(times)
    step = _time_step(times)

    if window is not None:
        panels = [("", None)]
    elif P == 1:
        panels = [("1 step ahead", 0)]
    else:
        panels = [("1 step ahead", 0), (f"{P} steps ahead", P - 1)]
    if window is None:
        if max_windows is None:
            # About 300 points keep a 1-step trace readable: a week of hourly steps, a day of 5-minute ones.
            week = int((times[:, 0] < times[0, 0] + np.timedelta64(7, "D")).sum()) if dated else B
            max_windows = min(week, MAX_TRACE_WINDOWS)
        shown = slice(0, max(1, min(B, max_windows)))

    fig = Figure(figsize=(6.2 * len(panels) + 0.6, 2.3 * len(nodes) + 1.0), layout="constrained")
    axes = fig.subplots(len(nodes), len(panels), squeeze=False, sharex=window is None, sharey="row")
    for row, n in enumerate(nodes):
        name = f"node {n}: {node_names[n]}" if node_names is not None else f"node {n}"
        for col, (label, lead) in enumerate(panels):
            ax = axes[row, col]
            if window is not None:
                x = np.arange(1, P + 1)
                ax.plot(x, truth[window, :, n], color=TRUTH_COLOR, lw=1.8, marker="o", ms=3.5, label="truth",
                        zorder=3)
                for model, pred in predictions.items():
                    ax.plot(x, np.asarray(pred)[window, :, n, channel], color=colors[model], lw=1.3, marker=".",
                            label=model)
                ax.set_title(name, fontsize=9)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if row == len(nodes) - 1:
                    ax.set_xlabel("horizon step")
            else:
                # The truth series: every target of the shown windows, each time once (windows overlap).
                t_all, first = np.unique(times[shown].ravel(), return_index=True)
                x, y, isolated = _with_breaks(t_all, truth[shown, :, n].reshape(-1)[first], step)
                ax.plot(x, y, color=TRUTH_COLOR, lw=1.6, label="truth", zorder=3, marker="." if isolated else None,
                        ms=4)
                for model, pred in predictions.items():
                    x, y, isolated = _with_breaks(times[shown, lead], np.asarray(pred)[shown, lead, n, channel], step)
                    ax.plot(x, y, color=colors[model], lw=1.0, alpha=0.9, label=model,
                            marker="." if isolated else None, ms=4)
                ax.set_title(f"{name}: {label}", fontsize=9)
                if dated:
                    _format_time_axis(ax)
                elif row == len(nodes) - 1:
                    ax.set_xlabel("time step of the target")
            if col == 0:
                ax.set_ylabel(axis_label(channel_name or f"channel {channel}", units))
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # Below the panels: above them it would collide with the title under constrained layout.
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    if window is not None:
        when = f", first target at {np.datetime_as_string(times[window, 0], unit='m')}" if dated else ""
        title = f"{title + ': ' if title else ''}window {window}{when}"
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_forecasts(path: str | Path, target: np.ndarray, predictions: Mapping[str, np.ndarray],
                   mask: np.ndarray | None = None, nodes: Sequence[int] | None = None, channel: int = 0,
                   node_names: Sequence[str] | None = None, window: int | None = None,
                   channel_name: str | None = None, units: str = "", max_nodes: int = 4,
                   times: np.ndarray | None = None, max_windows: int | None = None, title: str | None = None,
                   colors: Mapping[str, Any] | None = None) -> Path:
    """Forecasts against the truth of one channel for a few nodes, one row of subplots per node, one line per
    model; saved as a PNG at ``path`` (returned).

    Args:
        path: the PNG to write (parent folders are created).
        target: ``[B, P, N, C]`` truth in original units, NaN where missing, windows in time order.
        predictions: ``{model: [B, P, N, C]}`` forecasts in original units on the same windows; every one is drawn.
        mask: ``[B, P, N, C]`` bool, True where the truth is observed; default: where ``target`` is finite.
            Unobserved truth is not drawn (the line breaks).
        nodes: which nodes to draw; default :func:`pick_nodes` (the ``max_nodes`` most observed).
        channel: which channel to draw (one figure per channel: call once for each).
        node_names: one name per node for the subplot titles.
        window: draw this one window's full horizon (x = horizon step) instead of the traces below.
        channel_name / units: the y-axis label, :func:`axis_label` (e.g. ``"inflow (trips/h)"``; the name alone
            without a unit; default name ``"channel C"``).
        times: ``[B, P]`` time of each target (:func:`window_times`); default: window ``b`` step ``h`` at
            ``b + h`` (consecutive windows, stride 1).
        max_windows: traces cover the first ``max_windows`` windows; default the windows of the first 7 days
            (any number of windows without datetimes), at most ``MAX_TRACE_WINDOWS`` = 288 (a week of hourly
            steps, a day of 5-minute steps).
        title: figure title.
        colors: ``{model: colour}`` (see :func:`model_colors`); default one colour per model in order.

    Without ``window`` each node gets two panels over the test windows: the *1-step-ahead* forecast
    (``pred[b, 0]`` at the time of ``target[b, 0]``) and the *P-step-ahead* forecast (``pred[b, P-1]`` at the
    time of ``target[b, P-1]``), both against the truth series, so the loss of accuracy with lead time is
    visible at a glance. With ``P = 1`` there is one panel. A line joins two points only when they are one data
    step apart (the step between a window's first two targets; with ``P = 1`` the windows' smallest spacing):
    across a gap between windows -- a split with missing stretches, sampled windows, a stride above 1 -- it
    breaks (a NaN point in its data), and a point left alone gets a marker.
    """
    return _save(forecast_figure(target, predictions, mask, nodes, channel, node_names, window, channel_name, units,
                                 max_nodes, times, max_windows, title, colors), path)


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_error_per_horizon(path: str | Path, results: Mapping[str, Mapping[str, Any]], metric: str = "MAE",
                           title: str | None = None, colors: Mapping[str, Any] | None = None) -> Path:
    """One line per model: ``metric`` at every horizon step, from the results schema of
    :mod:`st_instruct.evaluation.report` (``results[model]["per_horizon"][str(h)][metric]``).

    Models without ``per_horizon`` (skipped) are left out; ``None`` / NaN points are not drawn (markers keep an
    isolated finite point visible). Models are listed best averaged ``metric`` first.
    """
    scored = {m: r for m, r in results.items() if r.get("per_horizon")}
    available = {k for r in scored.values() for step in r["per_horizon"].values() for k in step}
    if scored and metric not in available:
        raise ValueError(f"metric {metric!r} is not in the per-horizon results; available: {sorted(available)}")

    def average(model: str) -> float:
        value = _as_float(scored[model].get(metric))
        return math.inf if math.isnan(value) else value

    order = sorted(scored, key=average)
    colors = dict(colors) if colors is not None else model_colors(order)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for model in order:
        per_horizon = scored[model]["per_horizon"]
        steps = sorted(int(h) for h in per_horizon)
        values = np.array([_as_float(per_horizon[str(h)].get(metric)) for h in steps])
        finite = bool(np.isfinite(values).any())
        drawn |= finite
        label = model if finite else f"{model} (no finite values)"
        ax.plot(steps, values, color=colors[model], lw=1.6, marker="o", ms=3.5, label=label)
    if not drawn:
        ax.text(0.5, 0.5, f"no finite {metric} values (nothing observed)", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_xlabel("horizon step")
    ax.set_ylabel(f"{metric} (%)" if metric in PERCENT_METRICS else metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{metric} per horizon step", fontsize=11)
    if order:
        ax.legend(fontsize=8, frameon=False, loc="best")
    return _save(fig, path)
