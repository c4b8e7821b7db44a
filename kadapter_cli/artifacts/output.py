"""Output folders written atomically: a stage builds its output under a hidden sibling
(`.<name>.tmp-<pid>`) and renames it into place when complete, so a later stage never sees half of
one. A lock file beside the output stops two commands from writing the same folder at once.
Resumable training builds under a fixed sibling (`.<name>.partial`) that survives interruption and
is picked up again by `--resume`, with its checkpoints in `checkpoints/step-<N>/`; under several
processes (`accelerate launch`, `torchrun`) the main one owns it (`training_output`).

When an output is complete, every file and folder in it gets the permissions the umask gives new
ones (0644 and 0755 under umask 022), whatever wrote it: safetensors' `save_file` writes its files
0600, which a colleague reading a shared folder could not open (`share_tree`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from kadapter_cli.errors import BadInput, Interrupted, OutputExists, ParamText
from kadapter_cli.processes import is_main_process

# ---------------------------------------------------------------- atomic output folders


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(final: Path) -> Iterator[None]:
    """Exclusive lock on writing `final`; a second writer gets a clear `BadInput`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid) and pid != os.getpid():
                raise BadInput(
                    f"another kadapter command (pid {pid}) is writing this output; wait for it or "
                    f"remove {lock} if it is gone",
                    final,
                ) from None
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def partial_dir(final: str | Path) -> Path:
    """Where a resumable stage builds `final` until it completes."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def _replace(tmp: Path, final: Path) -> None:
    if final.exists():
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_output(
    final: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = False,
) -> Iterator[Path]:
    """Yields a scratch folder that becomes `final` when the block completes.

    - `final` exists, or an interrupted `.<name>.partial` does, and neither `overwrite` nor
      `resume`: `OutputExists` (`check_output`).
    - On any exception (or kill) `final` is untouched. A non-resumable scratch folder is removed;
      a resumable one (`.<name>.partial`) is kept for `--resume`, and Ctrl-C there becomes
      `Interrupted`, whose message names the last checkpoint and how to continue.
    - `resume` with a finished `final` and no partial folder: the stage is already complete, and
      the caller sees `final` itself reopened for a fresh build only if `overwrite` is also given.
    """
    final = Path(final)
    check_output(final, overwrite=overwrite, resume=resume, resumable=resumable)
    with output_lock(final):
        _remove_abandoned_scratch(final)
        if resumable:
            tmp = partial_dir(final)
            if tmp.exists() and not resume:
                shutil.rmtree(tmp)  # only with --overwrite: check_output refused it otherwise
        else:
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            yield tmp
            share_tree(tmp)
            _fsync_tree(tmp)
        except BaseException as e:
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            elif isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(ParamText(
                    "the run is kept in {tmp} ({checkpoint}); rerun the same command with {resume:True} to "
                    "continue or {overwrite:True} to start again", tmp=tmp, checkpoint=_last_checkpoint(tmp))) from None
            if is_disk_full(e):
                kept = ("what was done so far is kept in {tmp}: free some space and rerun with {resume:True}"
                        if resumable else "nothing was written there: free some space and rerun")
                raise BadInput(ParamText(f"no space left on device while writing it ({kept})", tmp=tmp),
                               final) from None
            raise
        _replace(tmp, final)


def check_output(final: str | Path, overwrite: bool = False, resume: bool = False, resumable: bool = False) -> None:
    """Refuses (`OutputExists`) to replace a finished output without `overwrite`, or to discard
    an interrupted resumable one (`.<name>.partial`) without `resume` or `overwrite`.

    Commands call it before their expensive work too, so a refusal comes at once."""
    final = Path(final)
    if overwrite or resume:
        return
    if final.exists():
        raise OutputExists(ParamText("already exists; pass {overwrite:True} to replace it" + (
            " or {resume:True} to continue it" if resumable else "")), final)
    partial = partial_dir(final)
    if resumable and partial.exists():
        raise OutputExists(ParamText("an interrupted run exists ({checkpoint}); pass {resume:True} to continue "
                                     "or {overwrite:True} to start again", checkpoint=_last_checkpoint(partial)),
                           final)


def nothing_to_resume(final: str | Path, resume: bool, overwrite: bool = False) -> bool:
    """`--resume` on a finished output with no interrupted run beside it: says so; the stage has nothing to do."""
    final = Path(final)
    if resume and not overwrite and final.exists() and not partial_dir(final).exists():
        from kadapter_cli.progress import info

        info(f"{final} is complete: nothing to resume")
        return True
    return False


def _last_checkpoint(partial: Path) -> str:
    """'last checkpoint step-40': what `--resume` would continue from."""
    checkpoint = latest_checkpoint(partial)
    return f"last checkpoint {checkpoint.name}" if checkpoint else "no checkpoint yet"


@contextlib.contextmanager
def training_output(final: str | Path, processes, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """`atomic_output(resumable=True)` for a run of one or several processes.

    `processes` is what Accelerate's `Accelerator` or `PartialState` offers: `wait_for_everyone()`.
    The main process (`kadapter_cli.processes.is_main_process`: rank 0 of the whole run, on whichever
    machine) owns the output (lock, the `.<name>.partial` folder, the rename); the others get the
    same folder once it is ready and write only what is their own there (a disk feature cache under a
    sub-folder named by rank). Every process refuses an existing output alike, so a refusal stops
    them all with the same message.

    On another machine whose output folder is its own (not on a file system shared with the main
    process's), the main process's `.<name>.partial` folder is not there: its processes get a
    scratch folder of their own (`.<name>.tmp-<pid>`, for their disk feature cache), removed when
    they are done, and that machine's output folder gets neither a complete artifact nor a
    `.partial` folder: the main machine's is the run's one artifact.
    """
    final = Path(final)
    check_output(final, overwrite=overwrite, resume=resume, resumable=True)
    # Every process has looked before the main one creates the `.partial` folder (it would otherwise
    # look like an interrupted run to a slower process).
    processes.wait_for_everyone()
    if is_main_process():
        with atomic_output(final, overwrite=overwrite, resume=resume, resumable=True) as tmp:
            processes.wait_for_everyone()  # the folder is ready (and a stale one cleared) for the others
            yield tmp
    else:
        processes.wait_for_everyone()
        shared = partial_dir(final)
        if shared.is_dir():
            yield shared
            return
        scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"  # a machine whose output folder is its own
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is the file system running out of space or quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _remove_abandoned_scratch(final: Path) -> None:
    """Deletes what a killed writer of `final` left behind: its scratch folder (`.<name>.tmp-<pid>`)
    or the old output it was replacing (`.<name>.old-<pid>`).

    Called under the output lock, so no live writer owns such a folder unless its pid is still
    running (a writer's pid names its folders).
    """
    for kind in ("tmp", "old"):
        for scratch in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = scratch.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(scratch, ignore_errors=True)


def current_umask() -> int:
    """The process's umask: from `/proc/self/status` where Linux offers it, else by setting and
    restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_tree(folder: str | Path) -> None:
    """Gives `folder`, and every file and folder under it, the mode a new one gets under the umask:
    `0o666 & ~umask` for files, `0o777 & ~umask` for folders (links are left alone)."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        wanted = dir_mode if path.is_dir() else file_mode
        if path.stat().st_mode & 0o7777 != wanted:
            path.chmod(wanted)


def _fsync_tree(folder: Path) -> None:
    """Flushes files to disk before the rename, so a power loss cannot leave a renamed-but-empty file."""
    for f in folder.rglob("*"):
        if f.is_file():
            try:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:  # pragma: no cover - platform dependent
                if e.errno not in (errno.EINVAL, errno.EBADF):
                    raise

CHECKPOINTS = "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under `run_dir/checkpoints/`, or None.

    Only `step-<N>` folders count: one is renamed into place only after all its files are written.
    """
    root = Path(run_dir) / CHECKPOINTS
    complete = [p for p in step_folders(root) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a complete checkpoint folder was written at."""
    return int(json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))["step"])


def remove_checkpoints(run_dir: str | Path) -> None:
    """Deletes `run_dir/checkpoints/` (a command calls this once its artifact is complete)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.exists():
        trash = root.with_name(f".{CHECKPOINTS}.trash-{os.getpid()}")
        os.replace(root, trash)  # one atomic step: never a half-deleted checkpoint that looks complete
        shutil.rmtree(trash, ignore_errors=True)


def step_folders(root: Path) -> list[Path]:
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[5:]))
