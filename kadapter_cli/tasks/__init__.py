"""The downstream task registry: one module per task, found automatically.

To add a task, drop a module into this package with a `Task` subclass decorated with
`@register_task` (see `base.py`, and `cosmosqa.py` for a complete example); nothing else needs to
change: `kadapter finetune --task NAME` and its `--task-option key=value` find it. `get_task("figer")` returns a
ready instance, `TASKS` maps every name to its class.
"""

from __future__ import annotations

import json
from typing import Any

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks.base import (
    ClassificationTask,
    RelationTask,
    Task,
    TaskOption,
    TypingTask,
    discover_tasks,
    parse_task_options,
    register_task,
)

TASKS: dict[str, type[Task]] = discover_tasks(__name__)


def task_class(name: str) -> type[Task]:
    """The class of the task called `name` (what its options are checked against); `BadInput` if unknown."""
    try:
        return TASKS[name]
    except KeyError:
        raise BadInput(f"unknown task '{name}' (known: {', '.join(TASKS)})") from None


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, configured with its task-specific `options`; `BadInput` if unknown."""
    return task_class(name)(**options)


def task_options_help() -> str:
    """Every task's options, one line each: what `--task-option` accepts."""
    lines = [f"{name}: {key}={json.dumps(option.default)} — {option.help}"
             for name, cls in TASKS.items() for key, option in cls.options.items()]
    return "; ".join(lines) or "no task has options"


__all__ = ["TASKS", "ClassificationTask", "RelationTask", "Task", "TaskOption", "TypingTask", "discover_tasks",
           "get_task", "parse_task_options", "register_task", "task_class", "task_options_help"]
