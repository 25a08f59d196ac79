"""Results tables and the JSON schema shared by every evaluation command.

Schema (``st-instruct baselines --json``, later ``st-instruct evaluate``)::

    {"dataset": str, "history": int, "horizon": int, "split": "7:1:2", "channels": [...],
     "time_range": [start, end] | null, "windows": {"train": int, "validation": int, "test": int},
     "results": {MODEL: {"MAE", "RMSE", "MAPE", "WAPE": float | null,
                         "per_horizon": {"1": {...}, ...}, "fit_seconds": float, "predict_seconds": float}},
     "skipped": {MODEL: reason}}

NaN metrics (nothing observed, or WAPE of an all-zero truth) are written as ``null`` -- the file is strict JSON,
never ``NaN`` / ``Infinity`` -- and ``results[MODEL]["undefined"]`` (``{metric: reason}``) says why. Optional
keys: ``"city"``, ``"protocol"`` (e.g. ``"in-domain"``, ``"zero-shot (trained on nyc-taxi)"``,
``"few-shot 5%"``), ``"wall_seconds"``; from ``st-instruct evaluate`` also ``"protocol_version"`` (e.g.
``"zero-shot/2"``), ``"scaling"`` (``"window"`` / ``"train"``) and ``"baselines_fitted_on"`` (``{MODEL: dataset}``
for every fitted baseline row; source-fitted rows are named ``MODEL@source``). Every row of a report made by
``make_report`` says what it is: ``results[MODEL]["kind"]``, one of
:data:`~st_instruct.evaluation.baselines.ROW_KINDS` (forecaster, control, input-only, target-fitted,
source-fitted); the tables show it as a column.

:func:`write_evaluation_outputs` writes one evaluation's folder: ``results.json``, ``report.md`` and the PNG
figures of :mod:`st_instruct.evaluation.plots` (the error per horizon step; the forecasts, one figure per channel).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from st_instruct.evaluation.baselines import ROW_KINDS
from st_instruct.evaluation.plots import model_colors, plot_error_per_horizon, plot_forecasts
from st_instruct.model_dir import MODEL_ROW
from st_instruct.outputs import OutputExistsError, check_writable, staged_file, staged_output
from st_instruct.tasks import report_task
from st_instruct.tasks.metrics import METRICS

# the fixed files of an evaluation folder, beside forecasts_<channel>.png ("forecasts.png": one of an earlier version)
EVALUATION_FILES = ("results.json", "report.md", "error_per_horizon.png", "forecasts.png")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _best_first(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Model names by averaged MAE, missing (NaN / ``None`` from JSON) last."""
    def key(model: str) -> tuple[bool, float]:
        mae = results[model].get("MAE")
        missing = mae is None or math.isnan(mae)
        return missing, 0.0 if missing else mae

    return sorted(results, key=key)


def format_results_table(results: dict[str, dict[str, Any]], horizons: list[int] | None = None,
                         metrics: Sequence[str] = METRICS) -> str:
    """A markdown table: one row per model, the averaged ``metrics`` (a task's, :attr:`Task.metrics
    <st_instruct.tasks.base.Task.metrics>`) plus MAE at selected horizon steps.

    ``horizons`` (1-based) default to the first and last step. Models are listed best MAE first.
    """
    if not results:
        return "(no results)"
    some = next(iter(results.values()))
    steps = sorted(int(h) for h in some.get("per_horizon", {}))
    if horizons is None:
        horizons = sorted({steps[0], steps[-1]}) if steps else []
    kinds = any("kind" in r for r in results.values())  # an evaluation's rows say what they are
    header = ["model", *(["kind"] if kinds else []), *metrics, *(f"MAE@{h}" for h in horizons), "time (s)"]
    rows = []
    for model in _best_first(results):
        r = results[model]
        seconds = r.get("fit_seconds", 0.0) + r.get("predict_seconds", 0.0)
        rows.append([model, *([r.get("kind", "")] if kinds else []), *(_fmt(r[m]) for m in metrics),
                     *(_fmt(r["per_horizon"][str(h)]["MAE"]) for h in horizons), f"{seconds:.1f}"])
    return _markdown_table(header, rows)


def horizon_steps_to_show(horizon: int, most: int = 12) -> list[int]:
    """Every step ``1..horizon`` when there are at most ``most``, else ``most`` evenly spread steps from 1 to
    ``horizon`` inclusive."""
    if horizon <= most:
        return list(range(1, horizon + 1))
    return sorted({int(round(s)) for s in np.linspace(1, horizon, most)})


def format_horizon_table(results: dict[str, dict[str, Any]], metric: str = "MAE",
                         steps: list[int] | None = None) -> str:
    """A markdown table of ``metric`` per horizon step: models (best averaged MAE first) x steps
    (default :func:`horizon_steps_to_show`)."""
    scored = {m: r for m, r in results.items() if r.get("per_horizon")}
    if not scored:
        return "(no results)"
    if steps is None:
        horizon = max(int(h) for r in scored.values() for h in r["per_horizon"])
        steps = horizon_steps_to_show(horizon)
    rows = [[model, *(_fmt(scored[model]["per_horizon"].get(str(h), {}).get(metric)) for h in steps)]
            for model in _best_first(scored)]
    return _markdown_table(["model", *(f"{metric}@{h}" for h in steps)], rows)


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN / infinity as None and numpy scalars and arrays as Python values (strict JSON)."""
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def results_json_text(report: dict[str, Any]) -> str:
    """``report`` as strict, indented JSON (NaN and infinity as ``null``; never ``NaN`` / ``Infinity``)."""
    return json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"


def write_results_json(report: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write ``report`` (the schema above) as indented strict JSON, NaN as ``null``; creates parent folders. Staged
    (:func:`~st_instruct.outputs.staged_file`): an existing file is refused unless ``overwrite`` (``--overwrite``)."""
    with staged_file(path, overwrite) as staged:
        staged.write_text(results_json_text(report))
    return Path(path)


def undefined_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One markdown bullet per model with undefined (``n/a``) metrics and the reasons."""
    return [f"- `{model}`: " + "; ".join(f"{metric} undefined: {reason}" for metric, reason in r["undefined"].items())
            for model, r in results.items() if r.get("undefined")]


def protocol_lines(report: Mapping[str, Any]) -> list[str]:
    """Markdown bullets stating the protocol's version, the scaling of the forecaster's inputs and what every
    baseline was fitted on (empty for a report without them, e.g. ``st-instruct baselines``)."""
    lines = []
    if report.get("protocol_version"):
        lines.append(f"- **Protocol version**: `{report['protocol_version']}`")
    scaling = report.get("scaling")
    if scaling == "window":
        lines.append("- **Scaling**: every sample z-scored with the mean and std of its own history window (strict "
                     "zero-shot: no value outside the input window is used); baselines read raw values and fit "
                     "their own")
    elif scaling == "train":
        lines.append(f"- **Scaling**: z-scored with the train split's mean and std per channel of "
                     f"`{report.get('dataset')}`; baselines read raw values and fit their own")
    kinds = [kind for kind in ROW_KINDS if any(r.get("kind") == kind for r in report.get("results", {}).values())]
    if kinds:
        lines.append("- **Row kinds**: " + "; ".join(f"*{kind}*: {ROW_KINDS[kind]}" for kind in kinds))
    if report.get("channels_unseen"):
        lines.append(f"- **Channels never seen in training**: {', '.join(report['channels_unseen'])} (forecast as "
                     "series identified by their names alone: no trained embedding of these names)")
    fitted_on = report.get("baselines_fitted_on") or {}
    by_dataset: dict[str, list[str]] = {}
    for name, dataset in fitted_on.items():
        by_dataset.setdefault(dataset, []).append(f"`{name}`")
    for dataset, names in by_dataset.items():
        where = ("the evaluated dataset's train split" if dataset == report.get("dataset")
                 else "the sources' train splits, applied to the evaluated test windows")
        lines.append(f"- **Baselines fitted on** `{dataset}` ({where}): {', '.join(names)}")
    return lines


def _setup_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    dataset = report.get("dataset")
    if dataset is not None:
        city = f" (city: {report['city']})" if report.get("city") else ""
        lines.append(f"- **Dataset**: `{dataset}`{city}")
    if report.get("protocol"):
        lines.append(f"- **Protocol**: {report['protocol']}")
    lines += protocol_lines(report)
    if "history" in report and "horizon" in report:
        lines.append(f"- **History -> horizon**: {report['history']} -> {report['horizon']} steps")
    if report.get("split"):
        lines.append(f"- **Split** (train:validation:test, chronological): {report['split']}")
    if report.get("windows"):
        counts = ", ".join(f"{name} {count}" for name, count in report["windows"].items())
        lines.append(f"- **Windows**: {counts}")
    if report.get("channels"):
        lines.append(f"- **Channels**: {', '.join(map(str, report['channels']))}")
    if report.get("time_range"):
        start, end = report["time_range"]
        lines.append(f"- **Time range**: {start} to {end}")
    if report.get("wall_seconds") is not None:
        lines.append(f"- **Wall time**: {report['wall_seconds']:.1f} s")
    return lines


def write_markdown_report(report: dict[str, Any], path: str | Path, plots: Sequence[str | Path] | None = None,
                          title: str | None = None) -> Path:
    """Write ``report`` (the schema above) as a markdown page: the setup, the results table, the MAE per horizon
    step, the skipped baselines with their reasons and ``plots`` embedded by links relative to ``path``.

    Creates parent folders; returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = report.get("results", {})
    heading = title or f"Evaluation on {report.get('dataset', 'a dataset')}"
    parts = [f"# {heading}", "", "## Setup", "", *_setup_lines(report), "",
             "## Results on the test windows", "",
             "Masked metrics in original units (nulls excluded), averaged over windows, horizon steps, nodes and "
             "channels; MAPE and WAPE in %; best MAE first; time = fit + predict.", "",
             format_results_table(results, metrics=report_task(report).metrics), ""]
    undefined = undefined_lines(results)
    if undefined:
        parts += ["n/a = undefined on these windows:", "", *undefined, ""]
    parts += ["## MAE per horizon step", "", format_horizon_table(results), ""]
    skipped = report.get("skipped") or {}
    if skipped:
        parts += ["## Skipped", "", *(f"- `{name}`: {reason}" for name, reason in skipped.items()), ""]
    if plots:
        parts += ["## Figures", ""]
        for plot in plots:
            link = Path(os.path.relpath(Path(plot).resolve(), path.parent.resolve())).as_posix()
            caption = Path(plot).stem.replace("_", " ")
            parts += [f"![{caption}]({link})", ""]
    path.write_text("\n".join(parts))
    return path


def default_plot_models(results: Mapping[str, Mapping[str, Any]], available: Sequence[str]) -> list[str]:
    """The models the forecast figures draw by default, among ``available`` (those with forecasts): every
    forecaster row (``st_forecaster`` and ``st_forecaster_*``: its controls, its generated-rationale forecast) and
    the best other row by averaged MAE (the strongest baseline); best MAE first."""
    ranked = _best_first({m: results.get(m, {}) for m in available})
    ours = {m for m in ranked if m == MODEL_ROW or m.startswith(f"{MODEL_ROW}_")}
    best_other = next((m for m in ranked if m not in ours), None)
    return [m for m in ranked if m in ours or m == best_other]


def forecast_figure_names(channels: Sequence[str]) -> list[str]:
    """One PNG name per channel, ``forecasts_<channel>.png`` (lower case, runs of other characters as ``-``; the
    channel index added where two names would clash or a name has no letter or digit)."""
    slugs = [re.sub(r"[^0-9a-z]+", "-", str(name).lower()).strip("-") for name in channels]
    return [f"forecasts_{slug if slug and slugs.count(slug) == 1 else f'{slug}-{c}'.lstrip('-')}.png"
            for c, slug in enumerate(slugs)]


def _is_evaluation_file(name: str) -> bool:
    return name in EVALUATION_FILES or re.fullmatch(r"forecasts_[0-9a-z-]+\.png", name) is not None


def check_evaluation_folder(out_dir: str | Path) -> None:
    """Before an evaluation (and again when writing it): ``out_dir`` can take it -- a re-run replaces an earlier
    evaluation once complete, but never a folder holding anything else, a file, or a folder that cannot be written;
    each refused with one line naming it."""
    out_dir = Path(out_dir)
    others = sorted(p.name for p in out_dir.iterdir() if not _is_evaluation_file(p.name)) if out_dir.is_dir() else []
    if others:
        raise OutputExistsError(f"{out_dir} holds {', '.join(others[:5])}, not only an earlier evaluation's files; "
                                "nothing was written: choose an empty or new --output folder")
    check_writable(out_dir, overwrite=True, flag="--output")


def write_evaluation_outputs(report: dict[str, Any], out_dir: str | Path, target: np.ndarray | None = None,
                             predictions: Mapping[str, np.ndarray] | None = None, mask: np.ndarray | None = None,
                             node_names: Sequence[str] | None = None, times: np.ndarray | None = None,
                             units: Sequence[str] | None = None, plot_models: Sequence[str] | None = None
                             ) -> dict[str, Path]:
    """Write one evaluation into ``out_dir``: ``results.json``, ``error_per_horizon.png``, one
    ``forecasts_<channel>.png`` per channel (:func:`forecast_figure_names`; only when ``target`` and
    ``predictions`` are given) and ``report.md`` linking the figures.

    Args:
        report: the schema above; its ``channels`` name the channels (default ``channel 0`` ...).
        target / mask: ``[B, P, N, C]`` test targets in original units and their observed mask
            (``STWindows.batch("test")["y"]`` / ``["y_mask"]``).
        predictions: ``{model: [B, P, N, C]}`` on the same windows, e.g. from
            ``run_baselines(..., return_predictions=True)`` plus the model's own.
        node_names / times: passed to :func:`st_instruct.evaluation.plots.plot_forecasts` (``times`` from
            :func:`st_instruct.evaluation.plots.window_times`: lines break where windows are not contiguous).
        units: one unit per channel (``STData.units``) for the y-axis labels; empty: the channel name alone.
        plot_models: the models the forecast figures draw (the error-per-horizon figure draws every row); default
            :func:`default_plot_models` (the forecaster rows and the best other one). A model skipped by the run
            (in ``report["skipped"]``) is left out -- the report says why; any other name without forecasts is a
            ``ValueError`` naming the models that have them.
    Returns:
        ``{"results", "error_per_horizon", "forecasts_<channel>" (when drawn, one per channel), "report"}`` ->
        written paths.
    """
    if (target is None) != (predictions is None):
        raise ValueError("give both target and predictions to plot forecasts, or neither")
    out_dir = Path(out_dir)
    results = report.get("results", {})
    order = _best_first(results)
    names = [*order, *(m for m in (predictions or {}) if m not in results)]
    colors = model_colors(names)
    dataset = report.get("dataset", "")
    shown: list[str] = []
    if predictions is not None:
        available = [m for m in names if m in predictions]
        if plot_models is None:
            shown = default_plot_models(results, available)
        else:
            unknown = [m for m in plot_models if m not in predictions and m not in (report.get("skipped") or {})]
            if unknown:
                raise ValueError(f"--plot-models {' '.join(unknown)}: no forecasts of that model in this evaluation; "
                                 f"known: {', '.join(available)}")
            shown = [m for m in available if m in plot_models]
    channels = list(report.get("channels") or [])
    if target is not None:
        count = np.shape(target)[-1]
        channels = channels if len(channels) == count else [f"channel {c}" for c in range(count)]
        if isinstance(units, str):
            raise ValueError(f"units must list one unit per channel (C={count}), found the string {units!r}")
        units = list(units) if units is not None else [""] * count
        if len(units) != count:
            raise ValueError(f"units has {len(units)} entries, expected one per channel (C={count})")
    # staged: a crash leaves the previous evaluation (or nothing), never a part
    check_evaluation_folder(out_dir)
    with staged_output(out_dir, overwrite=True) as staging:
        paths = {"results": write_results_json(report, staging / "results.json")}
        paths["error_per_horizon"] = plot_error_per_horizon(
            staging / "error_per_horizon.png", results, title=f"{dataset}: MAE per horizon step (test windows)",
            colors=colors)
        if target is not None and predictions is not None:
            drawn = {m: predictions[m] for m in shown}
            for c, (channel, file) in enumerate(zip(channels, forecast_figure_names(channels), strict=True)):
                paths[Path(file).stem] = plot_forecasts(
                    staging / file, target, drawn, mask=mask, channel=c, node_names=node_names, times=times,
                    channel_name=channel, units=units[c], colors=colors,
                    title=f"{dataset}: {channel}, forecast vs truth (test windows)")
        figures = [p for key, p in paths.items() if key != "results"]
        paths["report"] = write_markdown_report(report, staging / "report.md", plots=figures)
    return {key: out_dir / path.name for key, path in paths.items()}
