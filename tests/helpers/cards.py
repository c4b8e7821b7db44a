"""Reading a model card back: its YAML front matter and its body."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body
