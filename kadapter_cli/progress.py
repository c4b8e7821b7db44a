"""Rich progress bars and console output, quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from kadapter_cli.errors import ParamText, shown

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """`123.4 examples/s`: the task's speed in its own unit (`unit=` field, default `it`)."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit", "it")
        if task.speed is None:
            return Text(f"– {unit}/s", style="progress.data.speed")
        return Text(f"{task.speed:,.1f} {unit}/s", style="progress.data.speed")


def interactive() -> bool:
    if os.environ.get("KADAPTER_PROGRESS") == "1":
        return True
    if os.environ.get("KADAPTER_PROGRESS") == "0":
        return False
    return sys.stderr.isatty()


def progress(*extra_columns, transient: bool = False) -> Progress:
    """A progress bar on stderr; disabled (no output) when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive(),
        transient=transient,
    )


@contextlib.contextmanager
def waiting(description: str) -> Iterator[None]:
    """A bar for a wait with nothing to count (loading a model): what, and how long so far."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  disable=not interactive(), transient=True) as bar:
        bar.add_task(description, total=None)
        yield


def info(message: str | ParamText) -> None:
    """One line about what happened, on stderr (stdout stays clean for `--json` and pipes); a message
    that names parameters spells them as the running command does (`kadapter_cli.errors.shown`)."""
    console.print(shown(message), highlight=False, soft_wrap=True)
