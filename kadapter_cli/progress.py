"""Rich progress bars and console output, quiet when stderr is not a terminal."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


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
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive(),
        transient=transient,
    )


def info(message: str) -> None:
    """One line about what happened, on stderr (stdout stays clean for --json and pipes)."""
    console.print(message, highlight=False, soft_wrap=True)
