"""The main process: one answer (`kadapter_cli.processes.is_main_process`), the same as Accelerate's,
under `accelerate launch --num_processes 2` (CPU processes over gloo). The library (who writes an
artifact) and the CLI (who prints) both ask it; tests/end_to_end/test_multiprocess.py shows, through the CLI,
that one process writes and prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def _launch(*args: str) -> subprocess.CompletedProcess:
    if not ACCELERATE.exists():
        pytest.skip(f"no accelerate beside {sys.executable}")
    env = dict(os.environ, OMP_NUM_THREADS="1", KADAPTER_PROGRESS="0", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_is_main_process_is_accelerates_answer_in_every_process(tmp_path):
    _launch(str(REPO / "tests" / "helpers" / "main_process_report.py"), str(tmp_path))
    rows = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["kadapter_processes"] for r in rows] == [r["accelerate_processes"] for r in rows] == [2, 2]
    assert [r["kadapter_index"] for r in rows] == [r["accelerate_index"] for r in rows] == [0, 1]
    assert [r["kadapter_main"] for r in rows] == [r["accelerate_main"] for r in rows] == [True, False]
