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


def end_processes() -> None:
    """Ends the process group this process joined under a launcher, once its command has succeeded,
    as torch asks of every process before it exits (rather than leaving the group's C++ threads to
    the interpreter's teardown). Only after success: a process that failed may leave another
    waiting in a collective, and ending the group there could wait for it. Nothing to do (and torch
    is not imported) for a command that never used it."""
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
