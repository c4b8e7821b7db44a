"""Starting the real CLI under a launcher from a test: `accelerate launch` with two CPU processes
over gloo on one machine, or as two "machines" on loopback (two launchers, machine ranks 0 and 1,
one process each, `--main_process_ip 127.0.0.1`).

A launch that hangs (a collective one process never joins) is killed whole when its time is up,
workers included, and the test fails instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", KADAPTER_PROGRESS="0", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("KADAPTER_DEBUG", None)
    env.update(extra)
    return env


def one_machine(*args: str, processes: int = 2) -> list[str]:
    """`accelerate launch` of the CLI with `processes` CPU processes on this machine."""
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0",
            "-m", "kadapter_cli.cli", *args]


def machine(rank: int, port: int, *args: str, machines: int = 2) -> list[str]:
    """The launcher of machine `rank` of `machines`, one process each, the main one on loopback: what a
    user runs on every node, with this node's `--machine_rank`."""
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_machines", str(machines), "--machine_rank", str(rank),
            "--num_processes", str(machines), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "-m", "kadapter_cli.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    if not ACCELERATE.exists():
        pytest.skip(f"no accelerate beside {sys.executable}")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait(process: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    """(stdout, stderr, timed out); a launch past `timeout` is killed with all its workers."""
    try:
        out, err = process.communicate(timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        out, err = process.communicate()
        return out, err, True


def kill_tree(pid: int) -> None:
    """Kills a launcher and every process under it: its workers run in sessions of their own, so
    killing its process group would leave them running (holding the pipes a test reads)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def run(command: list[str], timeout: float = 240, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Runs one launch to its end (killed whole past `timeout`); `check`: it must succeed."""
    process = _start(command, env or launch_env())
    out, err, timed_out = _wait(process, timeout)
    assert not timed_out, f"{' '.join(command)} hung (killed after {timeout} s)\n{err[-4000:]}"
    done = subprocess.CompletedProcess(command, process.returncode, out, err)
    if check:
        assert done.returncode == 0, f"{' '.join(command)}\n{out[-2000:]}\n{err[-4000:]}"
    return done


def start_machines(commands: list[list[str]], env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Starts every machine's launcher at once, their output piped; `kill_tree` ends one."""
    return [_start(c, env or launch_env()) for c in commands]


def run_machines(commands: list[list[str]], timeout: float = 300, env: dict[str, str] | None = None,
                 check: bool = True) -> list[subprocess.CompletedProcess]:
    """Starts every machine's launcher at once and waits for all of them; `check`: each must succeed."""
    processes = start_machines(commands, env)
    done = []
    for command, process in zip(commands, processes):
        out, err, timed_out = _wait(process, timeout)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
        if timed_out:
            for other in processes:
                if other.poll() is None:
                    kill_tree(other.pid)
            raise AssertionError(f"{' '.join(command)} hung (killed after {timeout} s)\n{err[-4000:]}")
    for d in done:
        assert d.returncode == 0 or not check, f"{' '.join(d.args)}\n{d.stdout[-2000:]}\n{d.stderr[-4000:]}"
    return done


def assert_one_owner_wrote(folder: Path) -> dict:
    """A complete artifact: no scratch or lock beside it, a manifest over its files, one log line per step."""
    assert not any(p.name.startswith(f".{folder.name}.") for p in folder.parent.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    log = folder / "train_log.jsonl"
    if log.exists():
        steps = [line["step"] for line in map(json.loads, log.read_text().splitlines()) if "loss" in line]
        assert steps == sorted(set(steps)) and steps  # written once, by one process
    return manifest
