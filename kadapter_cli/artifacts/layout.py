"""Where artifacts live in a workdir: a bare name (`fac`) resolves to `<workdir>/<kind>/<name>`, a
path to itself."""

from __future__ import annotations

import os
from pathlib import Path

# ---------------------------------------------------------------- workdir layout


# The demo's data, shipped in the package (made by tools/make_demo_data.py and tools/make_demo_lama.py).
DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"


def workdir_path(workdir: str | Path, *parts: str) -> Path:
    return Path(workdir).joinpath(*parts)


def resolve_artifact(name_or_path: str | Path, workdir: str | Path, subdir: str) -> Path:
    """A bare name (`fac`) resolves to `<workdir>/<subdir>/<name>`; anything path-like to itself."""
    s = str(name_or_path)
    p = Path(s)
    if os.sep in s or s.startswith(".") or p.is_absolute() or (p.exists() and not (Path(workdir) / subdir / s).exists()):
        return p
    return Path(workdir) / subdir / s
