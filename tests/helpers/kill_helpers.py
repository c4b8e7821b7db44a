"""kill -9 of a training command as soon as it has written a checkpoint: the power-loss tests'
one way of interrupting a run (the toy loop, the CLI under `accelerate launch`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kadapter_cli.artifacts.output import latest_checkpoint


def kill_after_checkpoint(command: list[str], env: dict[str, str], run_dir: Path, min_step: int,
                          timeout: float = 60, cwd: Path | None = None) -> None:
    """Starts `command` in its own process group and SIGKILLs all of it (a launcher and its
    workers too) once `run_dir` holds a complete checkpoint of at least `min_step`."""
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is not None and int(ckpt.name[5:]) >= min_step:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed:\n{proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.01)
        else:
            pytest.fail(f"no checkpoint appeared within {timeout:.0f} s")
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
