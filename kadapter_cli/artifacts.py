"""Artifacts: self-describing folders that stages write and later stages read.

Every artifact is a folder with a `manifest.json` (CONTRACT §2). Folders are written atomically: a
stage builds its output under a hidden sibling (`.<name>.tmp-<pid>`) and renames it into place
when complete, so a later stage never sees half of one. A lock file beside the output stops two
commands from writing the same folder at once. Resumable training builds under a fixed sibling
(`.<name>.partial`) that survives interruption and is picked up again by `--resume`; under several
processes (`accelerate launch`, `torchrun`) the main one owns it (`training_output`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from kadapter_cli import __version__
from kadapter_cli.errors import BadInput, Interrupted, OutputExists

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# ---------------------------------------------------------------- hashing


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_inputs(paths: Iterable[str | Path]) -> list[dict[str, str]]:
    """`[{"path", "sha256"}]` for every file under the given files and folders (sorted, stable)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out.append({"path": str(f), "sha256": sha256_file(f)})
    return out


# ---------------------------------------------------------------- JSON and JSON Lines


def write_json(path: str | Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is skipped
            return json.load(f)
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except UnicodeDecodeError as e:
        raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise BadInput(f"malformed JSON: {e.msg}", path, f"line {e.lineno} column {e.colno}") from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yields `(line_number, record)`; a malformed line is `BadInput` naming the file and line."""
    path = Path(path)
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"malformed JSON: {e.msg}", path, f"line {lineno}") from None
        if not isinstance(rec, dict):
            raise BadInput(f"expected a JSON object, got {type(rec).__name__}", path, f"line {lineno}")
        yield lineno, rec


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line)` of a UTF-8 text file, newline kept, a leading byte-order mark
    dropped (every reader built on it accepts files saved by Windows editors); unreadable files and
    invalid UTF-8 are `BadInput` naming the file and the line that holds the bad bytes.

    Lines are decoded one at a time: a text-mode reader decodes whole chunks ahead of the line it
    returns, so its error would point at the wrong line.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, expected a file", path) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", path,
                               f"line {lineno}") from None


def read_jsonl(path: str | Path) -> list[dict]:
    return [r for _, r in iter_jsonl(path)]


# ---------------------------------------------------------------- train/dev split


def in_dev_split(record_id: str, seed: int, dev_ratio: float) -> bool:
    """Whether the record with this id goes to dev: a seeded sha256 of the id, so the split is
    reproducible and independent of input order, workers and shards (Python's `hash` is salted)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < dev_ratio * 2.0**64


# ---------------------------------------------------------------- manifests


def write_manifest(
    folder: str | Path,
    kind: str,
    config: dict | None = None,
    inputs: list[dict] | None = None,
    stats: dict | None = None,
    command: list[str] | None = None,
) -> dict:
    """Writes `manifest.json` listing the sha256 of every file in `folder` (checkpoints excluded)."""
    folder = Path(folder)
    files = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel != MANIFEST and not rel.startswith("checkpoints/"):
            files[rel] = sha256_file(f)
    manifest = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "kadapter_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv if command is None else command),
        "config": config or {},
        "inputs": inputs or [],
        "files": files,
        "stats": stats or {},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("no such artifact folder", folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BadInput("not a kadapter artifact (no manifest.json)", folder)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise BadInput("manifest.json has no 'kind'", path)
    if manifest.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise BadInput(
            f"format_version {manifest['format_version']} is newer than this kadapter understands "
            f"({FORMAT_VERSION}); upgrade kadapter",
            path,
        )
    return manifest


def verify_files(folder: str | Path, manifest: dict | None = None) -> None:
    """Checks every file listed in the manifest against its sha256; `BadInput` names the first that differs."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    for name, digest in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise BadInput("listed in manifest.json but missing", path)
        if sha256_file(path) != digest:
            raise BadInput("sha256 differs from manifest.json (file changed or corrupted)", path)


def input_files(inputs: Iterable[str | Path], wanted, description: str) -> list[Path]:
    """Files as given; folders walked in sorted order for files where `wanted(path)` holds.
    `description` names those files in the error for a folder that holds none."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p))
            if not found:
                raise BadInput(f"folder holds no {description} files", path)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BadInput("file not found", path)
    return files


def find_artifacts(paths: Iterable[str | Path], what: str) -> list[Path]:
    """Artifact folders named by `paths`: an artifact folder itself, or a folder whose subfolders
    are artifacts (sorted), as `--merge SHARD_DIR...` takes them. `what` names them in errors."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if (path / MANIFEST).is_file():
            found.append(path)
        elif path.is_dir() and (subs := sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())):
            found.extend(subs)
        else:
            raise BadInput(f"not a {what} (no manifest.json in it or its subfolders)", path)
    return found


def load_yaml_mapping(path: str | Path, what: str = "YAML file", shape: str = "expected a mapping") -> dict:
    """A YAML mapping read with `yaml.safe_load` (no `!!python` tags); empty file → {}.
    `shape` says in errors what the mapping should be."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{what} not found", path) from None
    except UnicodeDecodeError as e:
        raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
    except OSError as e:
        raise BadInput(f"cannot read {what}: {e.strerror or e}", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise BadInput(f"malformed YAML: {getattr(e, 'problem', e)}", path,
                       f"line {mark.line + 1}" if mark else None) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{shape}, got {type(data).__name__}", path)
    return data


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
            _fsync_tree(tmp)
        except BaseException as e:
            if not resumable:
                shutil.rmtree(tmp, ignore_errors=True)
            elif isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(f"the run is kept in {tmp} ({_last_checkpoint(tmp)}); rerun the same "
                                  "command with --resume to continue or --overwrite to start again") from None
            if is_disk_full(e):
                kept = (f"what was done so far is kept in {tmp}: free some space and rerun with --resume"
                        if resumable else "nothing was written there: free some space and rerun")
                raise BadInput(f"no space left on device while writing it ({kept})", final) from None
            raise
        _replace(tmp, final)


def check_output(final: str | Path, overwrite: bool = False, resume: bool = False, resumable: bool = False) -> None:
    """Refuses (`OutputExists`) to replace a finished output without `--overwrite`, or to discard
    an interrupted resumable one (`.<name>.partial`) without `--resume` or `--overwrite`.

    Commands call it before their expensive work too, so a refusal comes at once."""
    final = Path(final)
    if overwrite or resume:
        return
    if final.exists():
        raise OutputExists("already exists; pass --overwrite to replace it" + (
            " or --resume to continue it" if resumable else ""), final)
    partial = partial_dir(final)
    if resumable and partial.exists():
        raise OutputExists(f"an interrupted run exists ({_last_checkpoint(partial)}); pass --resume to continue "
                           "or --overwrite to start again", final)


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
    from kadapter_cli.checkpoints import latest_checkpoint

    checkpoint = latest_checkpoint(partial)
    return f"last checkpoint {checkpoint.name}" if checkpoint else "no checkpoint yet"


@contextlib.contextmanager
def training_output(final: str | Path, processes, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """`atomic_output(resumable=True)` for a run of one or several processes.

    `processes` is what Accelerate's `Accelerator` or `PartialState` offers: `is_main_process` and
    `wait_for_everyone()`. The main process owns the output (lock, the `.<name>.partial` folder,
    the rename); the others get the same folder once it is ready and write only what is their own
    there (a disk feature cache under a sub-folder named by rank). Every process refuses an
    existing output alike, so a refusal stops them all with the same message.
    """
    final = Path(final)
    check_output(final, overwrite=overwrite, resume=resume, resumable=True)
    # Every process has looked before the main one creates the `.partial` folder (it would otherwise
    # look like an interrupted run to a slower process).
    processes.wait_for_everyone()
    if processes.is_main_process:
        with atomic_output(final, overwrite=overwrite, resume=resume, resumable=True) as tmp:
            processes.wait_for_everyone()  # the folder is ready (and a stale one cleared) for the others
            yield tmp
    else:
        processes.wait_for_everyone()
        yield partial_dir(final)


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


# ---------------------------------------------------------------- workdir layout


def workdir_path(workdir: str | Path, *parts: str) -> Path:
    return Path(workdir).joinpath(*parts)


def resolve_artifact(name_or_path: str | Path, workdir: str | Path, subdir: str) -> Path:
    """A bare name (`fac`) resolves to `<workdir>/<subdir>/<name>`; anything path-like to itself."""
    s = str(name_or_path)
    p = Path(s)
    if os.sep in s or s.startswith(".") or p.is_absolute() or (p.exists() and not (Path(workdir) / subdir / s).exists()):
        return p
    return Path(workdir) / subdir / s
