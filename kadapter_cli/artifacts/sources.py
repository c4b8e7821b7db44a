"""Where a model the user names lives: the one place that turns what was passed to a loader (a folder
today) into a local folder. Every loader of the public API and `kadapter encode` go through
`model_folder`, so a new kind of source (a Hub repository id, downloaded to the cache) is added here
once."""

from __future__ import annotations

from pathlib import Path

from kadapter_cli.errors import BadInput


def model_folder(source: str | Path) -> Path:
    """The local folder `source` names (`~` expanded); `BadInput` naming it when there is none."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise BadInput("no such folder (expected a kadapter artifact folder: an adapter, a composition or a "
                       "finetuned model)", path)
    if not path.is_dir():
        raise BadInput("not a folder (expected a kadapter artifact folder)", path)
    return path
