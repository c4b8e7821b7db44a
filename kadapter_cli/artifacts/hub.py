"""Facts about the Hugging Face Hub that need no network: what text is a repository id, where the
Hub's cache is, and which repository and commit a folder of that cache holds.

The environment is read when asked, not when kadapter is imported, so that `HF_HUB_OFFLINE`,
`HF_ENDPOINT`, `HF_HOME` and `HF_HUB_CACHE` set by a program (or a test) after import are honoured
as they are by a fresh process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# `org/name` or `org/name@revision`: one `/`, names as the Hub allows them (letters, digits, `-`, `_`, `.`).
_REPO_ID = re.compile(r"(?P<repo_id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
# A folder of the cache: `<cache>/models--<org>--<name>/snapshots/<commit>`.
_CACHE_REPO = re.compile(r"models--(?P<repo>.+)")
HF_URI = "hf://"  # how manifests name a file that came from the Hub: hf://org/name@<commit>/<path>


@dataclass(frozen=True)
class HubRef:
    """A repository on the Hub and a revision (a branch, a tag or a commit; None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_ref(text: str | Path) -> HubRef | None:
    """The repository a text names when it has the form `org/name` or `org/name@revision`; None otherwise.

    Whether it names a repository or a local path is the caller's rule (`sources.model_folder`):
    an existing path always wins.
    """
    s = str(text)
    match = _REPO_ID.fullmatch(s)
    if match is None or ".." in s or s.startswith((".", "~")):
        return None
    return HubRef(match["repo_id"], match["revision"])


@dataclass(frozen=True)
class HubOrigin:
    """Where a folder of the Hub's cache came from: the repository, the commit, and the path inside it."""

    repo_id: str
    revision: str
    path_in_repo: str = ""

    def uri(self) -> str:
        """`hf://org/name@<commit>/<path>`: how manifests and cards name it."""
        return f"{HF_URI}{self.repo_id}@{self.revision}" + (f"/{self.path_in_repo}" if self.path_in_repo else "")


def hub_origin(path: str | Path) -> HubOrigin | None:
    """The repository and commit of a file or folder inside a snapshot of the Hub's cache
    (`.../models--org--name/snapshots/<commit>/...`), wherever that cache is; None for any other path."""
    parts = Path(os.path.abspath(Path(path).expanduser())).parts
    for i in range(len(parts) - 2):
        match = _CACHE_REPO.fullmatch(parts[i])
        if match and parts[i + 1] == "snapshots":
            return HubOrigin(match["repo"].replace("--", "/"), parts[i + 2], "/".join(parts[i + 3:]))
    return None


def describe_command(argv: Sequence[str]) -> list[str]:
    """A command line as an artifact records it (its manifest's `command`, its card's "Training"):
    every argument, or `--flag=value` value, that is a file or folder of the Hub's cache written as
    `hf://org/name@<commit>[/<path>]` (`describe_source`), so that no path of this machine's cache is
    shown; everything else as typed."""
    shown = []
    for arg in map(str, argv):
        flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if not equals and flag:
            flag, value = "", arg
        if value and hub_origin(value) is not None and Path(value).expanduser().exists():
            value = describe_source(value)
        shown.append(f"{flag}={value}" if equals else value)
    return shown


def describe_source(path: str | Path) -> str:
    """A path as an artifact records it: `hf://org/name@<commit>/<path>` for a file or folder that
    came from the Hub (never a path of this machine's cache), the path itself otherwise."""
    origin = hub_origin(path)
    return origin.uri() if origin is not None else str(path)


_COMMIT = re.compile(r"[0-9a-f]{40}")


def cached_commit(ref: HubRef) -> str | None:
    """The commit the Hub's cache holds for `ref`, without the network: a commit that has a snapshot
    there, or the commit the cache's `refs/<branch or tag>` file (`refs/main` for no revision) says
    the revision was when last fetched; None when the cache does not know it."""
    repo = hub_cache_dir() / ("models--" + ref.repo_id.replace("/", "--"))
    revision = ref.revision or "main"
    if _COMMIT.fullmatch(revision):
        return revision if (repo / "snapshots" / revision).is_dir() else None
    try:
        commit = (repo / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if _COMMIT.fullmatch(commit) else None


# ---------------------------------------------------------------- the environment


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return _truthy_env("HF_HUB_OFFLINE") or _truthy_env("TRANSFORMERS_OFFLINE")


def hub_endpoint() -> str:
    """The Hub's address: `HF_ENDPOINT`, else https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    """The Hub's cache as huggingface_hub finds it: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    `~/.cache/huggingface/hub` (`XDG_CACHE_HOME` moves `~/.cache`)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))
