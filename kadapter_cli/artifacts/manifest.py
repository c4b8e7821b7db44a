"""`manifest.json`, which makes every artifact folder self-describing: its kind, format version,
kadapter version, creation time, command, configuration, inputs and files (each with its sha256),
and statistics."""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Iterable

from kadapter_cli import __version__
from kadapter_cli.artifacts.hub import describe_command
from kadapter_cli.artifacts.io import read_json, sha256_file, write_json
from kadapter_cli.artifacts.layout import OLD_ADAPTER_FILES
from kadapter_cli.errors import BadInput

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
        "command": describe_command(sys.argv if command is None else command),
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


# ---------------------------------------------------------------- copies


def link_artifact(src: str | Path, dst: str | Path) -> None:
    """A copy of an artifact folder made of hard links (copies across file systems), with every
    adapter file under its current name: a file written under an old name (`OLD_ADAPTER_FILES`) is
    linked under the new one, and each manifest.json that lists it is rewritten to say so (the
    source folder is left as it is)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    renamed = False
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
            continue
        new = OLD_ADAPTER_FILES.get(f.name)
        if new is not None and (f.parent / new).exists():
            new = None  # both names present: each is copied as it is
        target = dst / rel.parent / (new or f.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = f.resolve() if f.is_symlink() else f  # the Hub's cache links each file to a blob
        try:
            target.hardlink_to(source)
        except OSError:
            shutil.copy2(source, target)
        renamed = renamed or new is not None
    if renamed:  # innermost manifests first: an outer one holds the sha256 of those inside it
        for manifest in sorted(dst.rglob(MANIFEST), key=lambda p: len(p.parts), reverse=True):
            _list_current_names(manifest)


def _list_current_names(manifest_path: Path) -> None:
    """Rewrites a manifest's `files` for files renamed by `link_artifact` (and the sha256 of the
    manifests inside its folder, which may have been rewritten)."""
    folder = manifest_path.parent
    manifest = read_json(manifest_path)
    files = {}
    for rel, digest in manifest.get("files", {}).items():
        path = PurePosixPath(rel)
        new = OLD_ADAPTER_FILES.get(path.name)
        if new is not None and not (folder / rel).exists() and (folder / path.parent / new).exists():
            rel = (path.parent / new).as_posix()
        if path.name == MANIFEST and (folder / rel).is_file():
            digest = sha256_file(folder / rel)
        files[rel] = digest
    if files != manifest.get("files"):
        manifest_path.unlink()  # a hard link: the source's manifest stays as it was
        write_json(manifest_path, {**manifest, "files": files})
