"""Tasks: what a window holds, the head's output length, the loss and the baselines of each task the
stack runs (:class:`~st_instruct.tasks.base.Task`), selected by the recipe key ``task``. Forecasting today."""

from st_instruct.tasks.base import Task
from st_instruct.tasks.forecasting import Forecasting

TASKS: dict[str, Task] = {task.name: task for task in (Forecasting(),)}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (the recipe key ``task``; configs checks the name against its mirror)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
