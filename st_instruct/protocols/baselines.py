"""Evaluation protocols: what is fitted on which windows and which report comes out.

For now the in-domain baseline protocol: one dataset, one chronological split, every baseline fitted on the
train (and validation) windows and scored on the same test windows. The LLM forecaster's in-domain, zero-shot
and few-shot protocols reuse :func:`prepare_windows` and the report schema so that every table puts models
and baselines side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from st_instruct.data.loaders import get_dataset
from st_instruct.data.stdata import STData
from st_instruct.data.windows import STWindows, build_windows, format_split
from st_instruct.evaluation.baselines import BASELINES, SOURCE_SUFFIX, baseline_kind, run_baselines
from st_instruct.evaluation.imputation_baselines import IMPUTATION_BASELINES
from st_instruct.model_dir import GENERATED_ROW, MODEL_ROW, TTA_ROW_SEPARATOR
from st_instruct.tasks import TASKS, Task


def prepare_windows(dataset: str | STData, history: int = 12, horizon: int = 12, split: str = "7:1:2",
                    channels: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                    stride: int = 1, data_dir: str | None = None, spec: dict[str, Any] | None = None) -> STWindows:
    """Load ``dataset`` (a name, a path or an :class:`STData`) with the dataset specification ``spec``
    (:func:`~st_instruct.data.loaders.get_dataset` keywords: ``freq``, ``series_start``, ``adjacency``, ...),
    keep ``channels`` and ``[start, end)``, window it (an unknown calendar is refused there)."""
    if isinstance(dataset, STData):
        if spec:
            raise ValueError("prepare_windows: spec= describes a dataset to load; an STData is already described")
        data = dataset
    else:
        data = get_dataset(dataset, data_dir=data_dir, **(spec or {}))
    data = data.select_channels(list(channels) if channels else None)
    if start is not None or end is not None:
        data = data.slice_time(start, end)
    return build_windows(data, history, horizon, split, stride=stride)


def make_report(windows: STWindows, results: dict[str, dict], task: Task = TASKS["forecasting"]) -> dict[str, Any]:
    """The report dict of :mod:`st_instruct.evaluation.report` for ``results`` (``{model: metrics}``, as from
    :func:`run_baselines`, models' entries beside them) scored by ``task`` on the test windows of ``windows``.

    Entries holding ``"skipped"`` go to ``report["skipped"]``; callers may add keys such as ``"protocol"``.
    """
    data = windows.data
    ts = data.time_index()
    return {
        "dataset": data.name,
        "city": data.city,
        "task": task.name,
        "history": windows.history,
        "horizon": windows.horizon,
        "split": format_split(windows.split),
        "channels": data.channels,
        "time_range": None if ts is None else [str(ts[0]), str(ts[-1])],
        "calendar": data.calendar_text() + ("" if data.has_calendar else "; stid runs without time embeddings"),
        "windows": {name: windows.num_windows(name) for name in windows.starts},
        "results": {name: {**r, "kind": row_kind(name)} for name, r in results.items() if "skipped" not in r},
        "skipped": {name: r["skipped"] for name, r in results.items() if "skipped" in r},
    }


def row_kind(row: str) -> str:
    """What the report row ``row`` is (:data:`~st_instruct.evaluation.baselines.ROW_KINDS`): the forecaster (also
    read after its generated rationale), one of its controls, or a baseline of its kind; a row under test-time
    adaptation (:func:`~st_instruct.model_dir.tta_row`) is of its model's kind. Every imputation baseline is
    target-fitted (its fallbacks, at least, are the train split's means)."""
    row = row.split(TTA_ROW_SEPARATOR)[0]
    if row in (MODEL_ROW, GENERATED_ROW):
        return "forecaster"
    if row in IMPUTATION_BASELINES:
        return "target-fitted"
    if row in BASELINES or row.endswith(SOURCE_SUFFIX):
        return baseline_kind(row)
    return "control"


def baseline_report(windows: STWindows, models: Sequence[str] | None = None, progress: bool = True,
                    seed: int = 0) -> dict[str, Any]:
    """Run the baselines ``models`` (default every one forecasting offers: windows are forecasting windows) on
    ``windows`` and return the report dict of :mod:`st_instruct.evaluation.report`."""
    names = list(TASKS["forecasting"].baselines) if models is None else models
    return make_report(windows, run_baselines(windows, names, split="test", progress=progress, seed=seed))
