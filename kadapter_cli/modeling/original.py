"""microsoft/K-Adapter `pytorch_model.bin` checkpoints → adapter artifacts (`adapters/<name>/`).

The released fac and lin checkpoints are state dicts of the original `AdapterModel`:
`adapter.{i}.…` (the adapter, same names as ours, so importing is a copy), plus the pretraining
head — fac: `com_dense`, `dense`, `out_proj`; lin: `com_dense`, `self_attention.*`, `dense`,
`out_proj`. Adapter depth, width, FFN size, label count and lin's max length are read from the
tensor shapes. What the checkpoints do not store is filled in and said so in the manifest: the tap
layers (0, 11, 22, as the released training scripts), 64-wide attention heads (12 for 768, as the
original code hard-codes), and the relation ids (`rel_0`… unless a relations file is given).

The files are read with `torch.load(weights_only=True)`: a pickle that would run code is refused.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from kadapter_cli.artifacts.cards import adapter_card, write_card
from kadapter_cli.artifacts.io import read_json, sha256_inputs
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.artifacts.output import atomic_output, check_output
from kadapter_cli.data.encoding import ORIGINAL_MARKERS
from kadapter_cli.errors import BadInput, ParamText, shown
from kadapter_cli.modeling.adapter import (
    AdapterConfig,
    KnowledgeAdapter,
    count_parameters,
    save_adapter,
    state_dict_problems,
)
from kadapter_cli.modeling.backbone import BackboneShape
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.options import ORIGINAL_NAMES, ORIGINAL_TAPS

# The original adapters were trained on RoBERTa-large only.
ROBERTA_LARGE = BackboneShape(model_type="roberta", hidden_size=1024, num_layers=24, num_heads=16, name_or_path="roberta-large")
TAPS_NOTE = (
    "The original checkpoints do not store their tap layers; 0,11,22 are those of the released "
    "pretraining and fine-tuning scripts (the paper says 0,11,23)."
)
# Sequence lengths of the released pretraining runs (fac: argparse default; lin: out_proj rows).
FAC_MAX_LENGTH = 256

_ADAPTER_KEY = re.compile(r"^adapter\.(\d+)\.")
_LAYER_KEY = re.compile(r"^adapter\.\d+\.encoder\.layer\.(\d+)\.")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a `pytorch_model.bin`, loaded without executing any pickled code."""
    if not path.is_file():
        raise BadInput("file not found", path)
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle (protocol 2+).
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise BadInput("not a PyTorch checkpoint (neither a zip archive nor a pickle; a failed download?)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BadInput(
            "refused to load: the file is a pickle that would run code or build objects other than "
            f"tensors ({_unpickler_reason(e)}); a K-Adapter checkpoint holds only tensors",
            path,
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load fails on garbage with many error types (KeyError, EOFError...)
        raise BadInput(f"not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})", path) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BadInput("expected a state dict (a mapping of names to tensors)", path)
    return state


def _unpickler_reason(error: Exception) -> str:
    """The part of torch's weights-only error that says what was refused, not its advice to load the
    file unsafely nor its pointer to the documentation. torch says it after "WeightsUnpickler error:"
    (a global that is not allowed, an unknown opcode) or, for a global of a blocked module (`os.system`,
    what a pickle that runs code calls), in a paragraph of its own before the pointer."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s+Please|\n\n|$)", text, re.S)
    if match:
        reason = match.group(1)
    else:
        paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if not p.startswith("Check the documentation")]
        reason = paragraphs[-1] if paragraphs else text
    return " ".join(reason.split())[:200]


def _require(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise BadInput(f"missing key {key} (not a K-Adapter checkpoint?)", path)
    return state[key]


def infer_config(
    state: dict[str, torch.Tensor],
    kind: str,
    name: str,
    path: Path,
    *,
    labels: Sequence[str] | None = None,
    tap_layers: Sequence[int] = ORIGINAL_TAPS,
    backbone: BackboneShape = ROBERTA_LARGE,
) -> AdapterConfig:
    """The `AdapterConfig` of an original checkpoint, from its tensor shapes."""
    depth = len({int(m.group(1)) for k in state if (m := _ADAPTER_KEY.match(k))})
    layers_per_tap = len({int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))})
    if depth == 0 or layers_per_tap == 0:
        raise BadInput("no adapter.{i}.encoder.layer.{j}.* keys (not a K-Adapter checkpoint?)", path)
    if depth != len(tap_layers):
        raise BadInput(f"the checkpoint has {depth} adapter layers but {len(tap_layers)} tap layers were given", path)
    down = _require(state, "adapter.0.down_project.weight", path)
    ffn = _require(state, "adapter.0.encoder.layer.0.intermediate.dense.weight", path)
    width, hidden = int(down.shape[0]), int(down.shape[1])
    if hidden != backbone.hidden_size:
        raise BadInput(f"adapters read {hidden}-wide states, but {backbone.name_or_path} is {backbone.hidden_size} wide", path)
    out_rows = int(_require(state, "out_proj.weight", path).shape[0])
    if kind == "fac":
        if labels is None:
            labels = [f"rel_{i}" for i in range(out_rows)]
        elif len(labels) != out_rows:
            raise BadInput(f"the checkpoint classifies {out_rows} relations but {len(labels)} relation ids were given", path)
        head = {"type": "relation", "num_labels": out_rows, "dropout": 0.1, "com_dense": True}
        max_length = FAC_MAX_LENGTH
    else:
        labels = []
        head = {"type": "lin_original", "max_length": out_rows, "dropout": 0.1, "com_dense": True}
        max_length = out_rows
    return AdapterConfig(
        name=name,
        kind=kind,
        backbone=backbone.name_or_path,
        backbone_model_type=backbone.model_type,
        backbone_hidden_size=hidden,
        backbone_num_layers=backbone.num_layers,
        tap_layers=list(tap_layers),
        adapter_width=width,
        layers_per_tap=layers_per_tap,
        num_heads=max(1, width // 64),
        ffn_size=int(ffn.shape[0]),
        dropout=0.1,
        layer_norm_eps=1e-5,
        init_std=0.0002,
        mask_padding=False,  # the original adapters attended to padding; keep what they learned with
        marker_style=ORIGINAL_MARKERS,  # fac learned the bare "@"/"#" ids (lin reads no markers: None)
        labels=list(labels),
        head=head,
        max_length=max_length,
    )


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True, assign=True)


def convert_checkpoint(
    path: Path, kind: str, name: str, *, labels: Sequence[str] | None = None, tap_layers: Sequence[int] = ORIGINAL_TAPS
) -> tuple[KnowledgeAdapter, AdapterConfig, torch.nn.Module]:
    """(adapter, config, pretraining head) holding exactly the checkpoint's weights."""
    state = read_checkpoint(path)
    config = infer_config(state, kind, name, path, labels=labels, tap_layers=tap_layers)
    adapter_state = {k: v for k, v in state.items() if k.startswith("adapter.")}
    head_state = {k: v for k, v in state.items() if not k.startswith("adapter.")}
    with torch.device("meta"):
        adapter = KnowledgeAdapter(config)
        head = build_head(config.head, config.backbone_hidden_size)
    problems = state_dict_problems(adapter, adapter_state) + state_dict_problems(head, head_state)
    if problems:
        raise BadInput(f"not a K-Adapter {kind} checkpoint as released: " + "; ".join(problems), path)
    _load_into(adapter, adapter_state)
    _load_into(head, head_state)
    return adapter, config, head


def read_relations(path: Path) -> list[str]:
    """Relation ids from a JSON list (`trex-rc/relations.json`) or a text file with one id a line."""
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
            raise BadInput("expected a JSON list of relation ids", path)
        return data
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read: {e}", path) from None


def import_original(
    fac: Path | None,
    lin: Path | None,
    out_root: Path,
    overwrite: bool = False,
    *,
    name_fac: str = ORIGINAL_NAMES["fac"],
    name_lin: str = ORIGINAL_NAMES["lin"],
    relations: Path | None = None,
    tap_layers: Sequence[int] = ORIGINAL_TAPS,
    command: list[str] | None = None,
) -> list[Path]:
    """Writes `out_root/<name_fac>` and/or `out_root/<name_lin>` adapter artifacts; returns their paths.

    Both checkpoints are read and checked before anything is written.
    """
    if fac is None and lin is None:
        raise BadInput(ParamText("give at least one checkpoint ({fac} and/or {lin})"))
    labels = read_relations(relations) if relations is not None else None
    jobs: list[tuple[str, Path, str]] = [(k, p, n) for k, p, n in (("fac", fac, name_fac), ("lin", lin, name_lin)) if p is not None]
    targets = [out_root / n for _, _, n in jobs]
    if len(set(targets)) != len(targets):
        raise BadInput(f"the fac and lin adapters would both be written to {targets[0]}; give different names")
    for target in targets:
        check_output(target, overwrite=overwrite)
    converted = [
        (kind, path, convert_checkpoint(path, kind, name, labels=labels if kind == "fac" else None, tap_layers=tap_layers))
        for kind, path, name in jobs
    ]
    written = []
    for (kind, path, (adapter, config, head)), target in zip(converted, targets):
        inputs = sha256_inputs([path] + ([relations] if relations is not None and kind == "fac" else []))
        manifest_config = _manifest_config(config, path, relations if kind == "fac" else None)
        stats = {"adapter_parameters": count_parameters(adapter), "head_parameters": count_parameters(head),
                 "tensors": len(adapter.state_dict()) + len(head.state_dict())}
        with atomic_output(target, overwrite=overwrite) as tmp:
            save_adapter(tmp, adapter, config, head)
            write_card(tmp, adapter_card(config, {}, inputs, manifest_config, stats, command=command))
            write_manifest(tmp, "adapter", config=manifest_config, inputs=inputs, stats=stats, command=command)
        written.append(target)
    return written


def _manifest_config(config: AdapterConfig, source: Path, relations: Path | None) -> dict[str, Any]:
    notes = [TAPS_NOTE, "Attention heads assumed 64 wide (12 for 768), as the original code hard-codes.",
             "The adapter attends to padding (mask_padding false): batches are padded to max length with the "
             "backbone's pad-token states, as the original padded every sequence."]
    if config.kind == "fac":
        notes.append("Entity markers: the bare '@'/'#' ids the original fac adapter learned (marker_style original).")
    if config.kind == "fac" and relations is None:
        # The note names the parameter as whoever runs the import spells it (the CLI: its flag).
        notes.append(shown(ParamText("The checkpoint has no relation ids; labels are rel_0..rel_{{n-1}} "
                                     "(pass {relations} to name them).")))
    return {
        "source": "microsoft/K-Adapter",
        "checkpoint": str(source),
        "kind": config.kind,
        "name": config.name,
        "tap_layers": config.tap_layers,
        "mask_padding": config.mask_padding,
        "marker_style": config.marker_style,
        "head": config.head,
        "notes": notes,
    }
