"""The downstream task registry: one module per task, found automatically.

To add a task, drop a module into this package with a `Task` subclass decorated with
`@register_task` (see `base.py`); nothing else needs to change. `get_task("figer")` returns a
ready instance, `TASKS` maps every name to its class.
"""

from __future__ import annotations

from typing import Any

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks.base import RelationTask, Task, TypingTask, discover_tasks, register_task

TASKS: dict[str, type[Task]] = discover_tasks(__name__)


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, configured with its task-specific `options`; `BadInput` if unknown."""
    try:
        task_class = TASKS[name]
    except KeyError:
        raise BadInput(f"unknown task '{name}' (known: {', '.join(TASKS)})") from None
    return task_class(**options)


__all__ = ["TASKS", "RelationTask", "Task", "TypingTask", "discover_tasks", "get_task", "register_task"]
