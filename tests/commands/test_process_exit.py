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
    end_processes()
    assert not dist.is_initialized()
    end_processes()  # nothing joined: nothing to do


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
