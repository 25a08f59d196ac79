"""The records of what was measured: every evaluation of a forecaster kept in its folder (``st_evaluations.json``)
and shown in its model card -- the evaluation section and the ``model-index`` -- which always equal the
``results.json`` of those evaluations."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from huggingface_hub import EvalResult

from st_instruct.evaluation.report import format_results_table, protocol_lines
from st_instruct.model_dir import EVALUATIONS_FILE, LOCK_FILE, MODEL_ROW, read_evaluations
from st_instruct.models.card import write_model_card
from st_instruct.outputs import write_text_atomic
from st_instruct.protocols.baselines import row_kind
from st_instruct.tasks import report_task


def record_evaluation(directory: str | Path, report: dict[str, Any]) -> Path:
    """Record ``report`` (``st-instruct evaluate``'s, as written to ``results.json``) in ``directory``'s
    ``st_evaluations.json`` -- replacing an earlier one of the same dataset, split and protocol -- and rewrite the
    model card, whose ``model-index`` then holds it. Returns the card's path.

    Several evaluations of one model may run at once (other datasets, protocols), each ending here: the read, the
    write and the card's rewrite happen under a lock on the folder (:data:`LOCK_FILE`), so none drops another's
    record, and each file is replaced with one rename, so a reader sees the old file or the new, never a part."""
    directory = Path(directory)
    key = (report.get("dataset"), report.get("split_name", "test"), report.get("protocol_version"))
    with FileLock(directory / LOCK_FILE):
        kept = [r for r in read_evaluations(directory)
                if (r.get("dataset"), r.get("split_name", "test"), r.get("protocol_version")) != key]
        write_text_atomic(directory / EVALUATIONS_FILE, json.dumps([*kept, report], indent=1, allow_nan=False) + "\n")
        return write_card_with_evaluations(directory)


def write_card_with_evaluations(directory: str | Path) -> Path:
    """Rewrite the folder's model card with every evaluation recorded in its ``st_evaluations.json``: their section
    and the ``model-index`` (none recorded: the card says so). Returns the card's path."""
    evaluations = read_evaluations(directory)
    return write_model_card(directory, evaluation=evaluation_section(evaluations) or None,
                            eval_results=model_index(evaluations))


def model_index(evaluations: list[dict[str, Any]]) -> list[EvalResult]:
    """The forecaster's metrics of every report, as the card's ``model-index`` entries."""
    results = []
    for report in evaluations:
        row = report.get("results", {}).get(MODEL_ROW, {})
        task = report_task(report)
        for metric in task.metrics:
            if row.get(metric) is not None:
                results.append(EvalResult(
                    task_type=task.hub_task_type, task_name=task.description,
                    dataset_type=report["dataset"], dataset_name=report["dataset"],
                    dataset_split=report.get("split_name", "test"), dataset_config=report.get("protocol_version"),
                    metric_type=metric.lower(), metric_name=metric, metric_value=row[metric]))
    return results


def evaluation_section(evaluations: list[dict[str, Any]]) -> list[str]:
    """The model card's evaluation section: per recorded report, its setup, protocol, controls and results table."""
    lines = []
    for report in evaluations:
        rows = report.get("results", {})
        controls = [row for row, result in rows.items() if result.get("kind", row_kind(row)) == "control"]
        lines += [f"### `{report.get('dataset')}`, {report.get('split_name', 'test')} split: "
                  f"{report.get('protocol', 'in-domain')}", "",
                  f"History {report.get('history')} -> horizon {report.get('horizon')} steps, "
                  f"{report.get('windows', {}).get(report.get('split_name', 'test'), '?')} windows, channels "
                  f"{report.get('channels')}; lower is better; n/a: nothing observed.", "",
                  *protocol_lines(report),
                  f"- **Controls**: {', '.join(f'`{c}`' for c in controls)} (the same recipe, data and budget, "
                  "only `control` changed)" if controls else
                  "- **Controls**: none scored; the LLM's contribution is unmeasured here "
                  "(`--train-controls no_llm`)", "",
                  _metrics_table(rows, report_task(report).metrics), ""]
    return lines


def _metrics_table(results: dict[str, Any], metrics: Sequence[str]) -> str:
    # format_results_table wants every metric as a float (NaN prints as n/a)
    return format_results_table({model: {**r, **{m: _nan_if_none(r.get(m)) for m in metrics}}
                                 for model, r in results.items() if "skipped" not in r}, metrics=metrics)


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)
