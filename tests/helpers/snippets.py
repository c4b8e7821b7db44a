"""Running the Python a page or a model card shows: its ```python blocks, one after the other, as a user would."""

from __future__ import annotations

import re
from pathlib import Path


def python_blocks(markdown: str, section: str | None = None) -> list[str]:
    """The ```python blocks of a Markdown text, or of its `## section` only."""
    if section is not None:
        start = markdown.index(f"## {section}\n")
        end = markdown.find("\n## ", start + 1)
        markdown = markdown[start:end if end >= 0 else None]
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def run_blocks(blocks: list[str], where: Path, monkeypatch) -> dict:
    """Executes the blocks one after the other in one namespace, from `where` (as a user's shell)."""
    assert blocks, "no Python to run"
    monkeypatch.chdir(where)
    namespace: dict = {"__name__": "__main__"}
    for block in blocks:
        exec(compile(block, "<snippet>", "exec"), namespace)
    return namespace
