"""Where an artifact the user names lives: the one place that turns what was passed (a folder, a
workdir name, or a Hugging Face Hub repository id) into a local folder. Every argument that takes an
adapter, a composition or a finetuned model comes here (`model_folder`, `artifact_folder`).

The rule that tells a repository id from a path: an existing file or folder is that path. Otherwise
text of the form `org/name` or `org/name@revision` (exactly one `/`, not starting with `.`, `/` or
`~`) is a repository on the Hub, fetched into the Hugging Face cache with `snapshot_download`
(`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`; with `HF_HUB_OFFLINE=1` the cache only, no network).
Anything else is a path, and not finding it is an error.

What comes from the Hub is untrusted. Only safetensors weights, JSON configs, text and the card are
fetched (`FETCHED`); nothing is executed. A repository that offers its weights only as a pickle
(`pytorch_model.bin`, `*.pt`), asks for remote code (`auto_map`, `trust_remote_code` in a config), is
not a kadapter artifact, or whose files differ from the sha256 its manifest lists is refused
(`BadInput`, exit 2), saying why.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from kadapter_cli.artifacts.hub import HubRef, cached_commit, hub_cache_dir, hub_endpoint, hub_offline, parse_hub_ref
from kadapter_cli.artifacts.io import read_json, sha256_file
from kadapter_cli.artifacts.layout import resolve_artifact
from kadapter_cli.artifacts.manifest import MANIFEST, read_manifest
from kadapter_cli.errors import BadInput
from kadapter_cli.progress import info

# What is fetched from a repository: weights as safetensors, configs and records as JSON, the card,
# tokenizer vocabularies (text, sentencepiece models). Never code, never a pickle.
FETCHED = ["*.safetensors", "*.json", "*.jsonl", "*.md", "*.txt", "*.model"]
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib")
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
MODEL_KINDS = ("adapter", "composition", "finetuned")  # what a repository id may name

_FETCHED: dict[tuple, Path] = {}  # one fetch per repository, revision and setting in a process


def model_folder(source: str | Path) -> Path:
    """The local folder `source` names: a folder (`~` expanded), or a Hub repository id fetched into
    the cache (see the module's rule); `BadInput` naming it when there is none."""
    path = Path(str(source)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput("not a folder (expected a kadapter artifact folder)", path)
        return path
    ref = parse_hub_ref(str(source))
    if ref is not None:
        return hub_folder(ref)
    raise BadInput("no such folder (expected a kadapter artifact folder: an adapter, a composition or a "
                   "finetuned model; or a Hugging Face Hub repository id, org/name)", path)


def artifact_folder(name_or_source: str | Path, workdir: str | Path, subdir: str) -> Path:
    """A bare name under `<workdir>/<subdir>` (`layout.resolve_artifact`), a path, or a Hub
    repository id fetched into the cache (the module's rule: an existing path wins)."""
    text = str(name_or_source)
    ref = parse_hub_ref(text)
    if ref is not None and not Path(text).expanduser().exists():
        return hub_folder(ref)
    return resolve_artifact(text, workdir, subdir)


def source_name(source: str | Path) -> str:
    """What a run calls an artifact it was given: a folder's name, or a repository's (`org/fac@v1` → `fac`)."""
    text = str(source)
    ref = parse_hub_ref(text)
    if ref is not None and not Path(text).expanduser().exists():
        return ref.repo_id.split("/")[1]
    return Path(text).name


# ---------------------------------------------------------------- the Hub


def hub_folder(ref: HubRef) -> Path:
    """The snapshot of a repository in the Hugging Face cache, fetched when the cache lacks it (or
    always looked up, online, for a branch), and checked (`check_fetched`)."""
    key = (ref, hub_endpoint(), str(hub_cache_dir()), hub_offline())
    if key not in _FETCHED:
        folder, listing = _fetch(ref)
        check_fetched(folder, ref, listing)
        _FETCHED[key] = folder
    return _FETCHED[key]


def hub_commit(ref: HubRef) -> str | None:
    """The commit `ref` names now, fetching no file: asked of the Hub (a branch may have moved since
    it was fetched), or with `HF_HUB_OFFLINE` (or when the Hub cannot be reached) what the cache says
    (`hub.cached_commit`), as a command reading `ref` would then find it; None when neither knows."""
    if not hub_offline():
        from huggingface_hub import HfApi

        try:
            sha = HfApi(endpoint=hub_endpoint()).model_info(ref.repo_id, revision=ref.revision).sha
        except Exception:  # noqa: BLE001 - no answer from the Hub: the cache is what a command would use
            sha = None
        if sha:
            return str(sha)
    return cached_commit(ref)


def hub_file(ref: HubRef, filename: str) -> Path | None:
    """One small file of a repository (a JSON), from the cache or fetched alone; None when the
    repository has no such file or it cannot be had (offline and not in the cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=ref.revision, cache_dir=str(hub_cache_dir()),
                                    endpoint=hub_endpoint(), local_files_only=hub_offline()))
    except Exception:  # noqa: BLE001 - not there, or not reachable: the caller falls back
        return None


def _fetch(ref: HubRef) -> tuple[Path, list[str] | None]:
    """`(snapshot folder, the repository's file names or None offline)`; errors as `BadInput`."""
    from huggingface_hub import HfApi, snapshot_download

    offline, endpoint, cache = hub_offline(), hub_endpoint(), hub_cache_dir()
    listing = None
    try:
        if not offline:
            info(f"fetching {ref} from {endpoint}")
            model = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision=ref.revision)
            listing = [s.rfilename for s in model.siblings or []]
            _refuse_pickles(ref, listing)
        folder = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(cache), endpoint=endpoint,
                                   local_files_only=offline, allow_patterns=FETCHED)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - huggingface_hub's and its HTTP client's errors, told apart below
        raise BadInput(_fetch_failure(ref, e, offline, endpoint, cache)) from None
    return Path(folder), listing


def _fetch_failure(ref: HubRef, error: Exception, offline: bool, endpoint: str, cache: Path) -> str:
    """Why a repository could not be fetched, in words a user acts on."""
    from huggingface_hub import errors

    where = f"{ref}: not a folder here"
    if offline or isinstance(error, errors.OfflineModeIsEnabled):
        return (f"{where}, and not in the Hugging Face cache ({cache}) while HF_HUB_OFFLINE is set: fetch it "
                "once where there is a network (any kadapter command that reads it does, or `hf download "
                f"{ref.repo_id}`), or pass a folder")
    if isinstance(error, errors.RevisionNotFoundError):
        return f"{where}, and the repository {ref.repo_id} on {endpoint} has no revision {ref.revision!r}"
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"{where}, and there is no repository {ref.repo_id} on {endpoint} (a private one needs "
                "`hf auth login` or HF_TOKEN)")
    if isinstance(error, errors.LocalEntryNotFoundError):  # the network failed and the cache lacks it
        return f"{where}, and {endpoint} cannot be reached ({str(error).splitlines()[-1]}) nor is it in the cache"
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{where}, and it could not be fetched from {endpoint}: {first}"


def _is_pickle(name: str) -> bool:
    return any(fnmatch.fnmatch(PurePosixPath(name).name, p) for p in PICKLES)


def _refuse_pickles(ref: HubRef, names: Iterable[str]) -> None:
    """`BadInput` when a repository's weights are pickles only."""
    names = list(names)
    pickles = sorted(n for n in names if _is_pickle(n))
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise BadInput(f"{ref}: the repository offers its weights only as a pickle ({', '.join(pickles[:3])}); "
                       "kadapter loads weights only from safetensors files, because loading a pickle can run "
                       "code: ask its author for safetensors (`kadapter push` writes them)")


def check_fetched(folder: Path, ref: HubRef | str, listing: list[str] | None = None) -> None:
    """Refuses a fetched snapshot that kadapter will not read: no kadapter manifest (another library's
    repository), a kind no argument takes, weights only as pickles (`listing`: the repository's
    files; default what the snapshot holds), a config asking for remote code, or a file that is
    missing or differs from the sha256 its manifest lists."""
    present = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    _refuse_pickles(ref, listing if listing is not None else present)
    if not (folder / MANIFEST).is_file():
        raise BadInput(f"{ref}: not a kadapter artifact (no {MANIFEST}): kadapter reads adapters, compositions "
                       "and finetuned models that kadapter wrote (`kadapter push` publishes them)")
    manifest = read_manifest(folder)
    if manifest["kind"] not in MODEL_KINDS:
        raise BadInput(f"{ref}: a kadapter {manifest['kind']!r} artifact; an adapter, a composition or a finetuned "
                       "model was expected")
    for name in sorted(present):
        if name.endswith(".json"):
            key = _remote_code_key(read_json(folder / name))
            if key is not None:
                raise BadInput(f"{ref}: {name} asks to run code that comes with the repository ({key}); "
                               "kadapter never runs such code, so it does not load this repository")
    for name, digest in manifest.get("files", {}).items():
        if _is_pickle(name):
            raise BadInput(f"{ref}: {name} is a pickle; kadapter loads weights only from safetensors files")
        if not any(fnmatch.fnmatch(name, p) for p in FETCHED):
            continue  # not fetched (tracking logs): not read either
        path = folder / name
        if not path.is_file():
            raise BadInput(f"{ref}: {name} is listed in {MANIFEST} but not in the repository")
        if sha256_file(path) != digest:
            raise BadInput(f"{ref}: {name} differs from the sha256 in {MANIFEST} (changed after it was written)")


def _remote_code_key(value: Any, depth: int = 0) -> str | None:
    """The first key of `REMOTE_CODE_KEYS` set anywhere in a JSON value (a config nests another's)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in REMOTE_CODE_KEYS and item not in (None, False, {}, []):
                return key
            found = _remote_code_key(item, depth + 1) if depth < 8 else None
            if found:
                return found
    elif isinstance(value, list) and depth < 8:
        for item in value:
            found = _remote_code_key(item, depth + 1)
            if found:
                return found
    return None

