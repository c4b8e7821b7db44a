"""Running the real CLI as a user does, in a process of its own, its output a terminal (a pty) or a pipe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kadapter(workdir: Path, *args, terminal: bool, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """`kadapter --workdir W args...` as a process, its stderr a pty (a terminal) or a pipe; it must
    succeed. Returns its output (stdout and stderr). `env`: variables added to this process's."""
    import pty

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160", "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("KADAPTER_PROGRESS", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    argv = [sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(workdir), *map(str, args)]
    if not terminal:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=timeout) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def plain(shown: str) -> str:
    """A terminal's output without its escape sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
