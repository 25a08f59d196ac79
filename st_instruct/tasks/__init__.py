"""Tasks: what a window holds, the head's output length, the loss, the metrics, the baselines and the card's name of
each task the stack runs (:class:`~st_instruct.tasks.base.Task`), selected by the recipe key ``task``: forecasting
and imputation."""

from collections.abc import Mapping
from typing import Any

from st_instruct.tasks.base import Task
from st_instruct.tasks.forecasting import Forecasting
from st_instruct.tasks.imputation import Imputation

TASKS: dict[str, Task] = {task.name: task for task in (Forecasting(), Imputation())}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (the recipe key ``task``; configs checks the name against its mirror)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


def report_task(report: Mapping[str, Any]) -> Task:
    """The task a results report was scored for: its ``"task"`` (reports written before tasks existed hold none and
    are forecasting's)."""
    return get_task(report.get("task", "forecasting"))


__all__ = ["TASKS", "Task", "get_task", "report_task"]
