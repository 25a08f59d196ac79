"""Results tables and the JSON schema shared by every evaluation command.

Schema (``st-instruct baselines --json``, later ``st-instruct evaluate``)::

    {"dataset": str, "history": int, "horizon": int, "split": "7:1:2", "channels": [...],
     "time_range": [start, end] | null, "windows": {"train": int, "validation": int, "test": int},
     "results": {MODEL: {"MAE", "RMSE", "MAPE", "WAPE": float | null,
                         "per_horizon": {"1": {...}, ...}, "fit_seconds": float, "predict_seconds": float}},
     "skipped": {MODEL: reason}}

NaN metrics (nothing observed) are written as ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from st_instruct.evaluation.metrics import METRICS


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_results_table(results: dict[str, dict[str, Any]], horizons: list[int] | None = None) -> str:
    """A markdown table: one row per model, averaged metrics plus MAE at selected horizon steps.

    ``horizons`` (1-based) default to the first and last step. Models are listed best MAE first.
    """
    if not results:
        return "(no results)"
    some = next(iter(results.values()))
    steps = sorted(int(h) for h in some.get("per_horizon", {}))
    if horizons is None:
        horizons = sorted({steps[0], steps[-1]}) if steps else []
    header = ["model", *METRICS, *(f"MAE@{h}" for h in horizons), "time (s)"]
    rows = []
    order = sorted(results, key=lambda m: (math.isnan(results[m]["MAE"]), results[m]["MAE"]))
    for model in order:
        r = results[model]
        seconds = r.get("fit_seconds", 0.0) + r.get("predict_seconds", 0.0)
        rows.append([model, *(_fmt(r[m]) for m in METRICS),
                     *(_fmt(r["per_horizon"][str(h)]["MAE"]) for h in horizons), f"{seconds:.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_results_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` (the schema above) as indented JSON, NaN as ``null``; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    return path
