"""A command that succeeded ends the process group its launcher's processes joined, before the
interpreter exits, as torch asks. A command that failed leaves the group alone: another process may
still wait in a collective, and ending the group could wait for it."""

from __future__ import annotations

import sys

import pytest


def test_end_processes_ends_a_joined_process_group():
    import torch.distributed as dist

    from kadapter_cli.processes import end_processes

    if not dist.is_available():
        pytest.skip("torch without distributed support")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    assert end_processes() is True
    assert not dist.is_initialized()
    assert end_processes() is False  # nothing joined: nothing to do


@pytest.mark.parametrize("argv, code, ended", [(["--help"], 0, True), (["no-such-command"], 2, False)])
def test_the_entry_point_ends_the_processes_only_after_success(monkeypatch, argv, code, ended):
    import kadapter_cli.cli

    calls = []
    monkeypatch.setattr(kadapter_cli.cli, "end_processes", lambda: calls.append(True))
    monkeypatch.setattr(sys, "argv", ["kadapter", *argv])
    with pytest.raises(SystemExit) as exit:
        kadapter_cli.cli.main()
    assert (exit.value.code or 0) == code
    assert bool(calls) == ended


def test_after_ending_the_group_the_entry_point_exits_at_once_with_success(monkeypatch):
    import kadapter_cli.cli

    exits = []
    monkeypatch.setattr(kadapter_cli.cli, "end_processes", lambda: True)
    monkeypatch.setattr(kadapter_cli.cli, "exit_now", lambda code: exits.append(code))
    monkeypatch.setattr(sys, "argv", ["kadapter", "--help"])
    with pytest.raises(SystemExit):
        kadapter_cli.cli.main()
    assert exits == [0]


def test_exit_now_runs_the_exit_handlers_and_flushes_what_was_printed(tmp_path):
    import subprocess

    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "print('printed without a newline', end='')\n"
        "sys.stderr.write('to stderr')\n"
        "from kadapter_cli.processes import exit_now\n"
        "exit_now(0)\n"
        "raise SystemExit(3)  # never reached\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == "printed without a newline" and done.stderr == "to stderr"
    assert marker.read_text() == "ran"
