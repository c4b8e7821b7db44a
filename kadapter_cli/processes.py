"""Which process this is, when a launcher started several (`accelerate launch`, `torchrun`).

Every process of a run computes; one — the main process — writes the outputs and prints. The
launchers give each process its rank in the environment before anything runs, so the question has
one answer, asked one way, from the first line of a command to its last: the stage functions (who
writes an artifact), the training loop (who logs) and the commands (who prints) all ask
`is_main_process()`. Accelerate's own `process_index` is the same rank.
"""

from __future__ import annotations

import os


def process_index() -> int:
    """This process's rank among all the run's processes: `RANK` as `accelerate launch` and `torchrun`
    set it (`LOCAL_RANK` where only that is set); 0 for a process started alone."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def process_count() -> int:
    """How many processes the run has: `WORLD_SIZE` as the launchers set it; 1 for a process started alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes the outputs and reports: rank 0, or the only process."""
    return process_index() == 0


def end_processes() -> bool:
    """Ends the process group this process joined under a launcher, once its command has succeeded,
    as torch asks of every process before it exits (rather than leaving the group's C++ threads to
    the interpreter's teardown). Every process first waits for the others at a barrier: a process
    that tore its group down while another still talked to it aborted ("terminate called without an
    active exception", once in 10 launches of a repro on a loaded 2-core machine). Only after
    success: a process that failed may leave another waiting in a collective (the launcher then
    stops the rest). Returns whether a group was ended; nothing to do (and torch is not imported)
    for a command that never used one."""
    import sys

    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def exit_now(code: int = 0) -> None:
    """Exits at once with `code` after the interpreter's exit handlers and a flush of the standard
    streams, skipping the C++ teardown of torch's threads: a launched process whose work is over
    and whose files are written and closed has nothing left that teardown could do, and it is where
    torch's distributed threads abort a process that succeeded (a std::thread still joinable)."""
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written
            pass
    os._exit(code)
