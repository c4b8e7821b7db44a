"""`kadapter inspect DIR`: what an artifact is, where it came from, and how many parameters it holds.

Parameter counts come from the safetensors headers (shapes only), so inspecting a large model
reads no weights. Components, by artifact:
- adapter (`adapters/<name>/`): the adapter and its pretraining head, both trained in pretraining;
- composition (`compositions/<a>+<b>/`): each adapter it holds (frozen wherever it is used: 0 trainable);
- finetuned model (`model.safetensors`): grouped as `backbone`, `adapter:<name>`, `fusion`, `head`
  (a leading `body.` is dropped); trainable = all but the adapters (always frozen in fine-tuning)
  and, if its `config.json` says `freeze_backbone`, the backbone;
- backbone folder (`kadapter tiny-backbone`): one `backbone` row.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from kadapter_cli.artifacts.hub import describe_source
from kadapter_cli.artifacts.io import read_json
from kadapter_cli.artifacts.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS, OLD_ADAPTER_FILES, adapter_file
from kadapter_cli.artifacts.manifest import read_manifest
from kadapter_cli.errors import BadInput


def tensor_sizes(path: Path) -> dict[str, int]:
    """`{tensor name: element count}` from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: math.prod(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise BadInput(f"not a readable safetensors file ({e})", path) from None


def _row(component: str, total: int, trainable: int | None) -> dict[str, Any]:
    return {"component": component, "total": total, "trainable": trainable}


def _adapter_name(folder: Path) -> str:
    config_path = adapter_file(folder, ADAPTER_CONFIG)
    config = read_json(config_path) if config_path.is_file() else None
    return str(config.get("name", folder.name)) if isinstance(config, dict) else folder.name


def _component_of(key: str) -> str:
    """`body.adapters.fac.adapter.0...` → `adapter:fac`; `body.backbone.embeddings...` → `backbone`."""
    parts = key.split(".")
    if parts[0] == "body" and len(parts) > 1:
        parts = parts[1:]
    if parts[0] == "adapters" and len(parts) > 1:
        return f"adapter:{parts[1]}"
    return parts[0]


def _finetune_frozen(folder: Path) -> set[str] | None:
    """Components a finetuned model kept frozen, from its `config.json` (None when it does not say)."""
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else None
    if not isinstance(config, dict) or "freeze_backbone" not in config:
        return None
    frozen = {f"adapter:{a['name']}" for a in config.get("adapters", []) if isinstance(a, dict) and "name" in a}
    if config["freeze_backbone"]:
        frozen.add("backbone")
    return frozen


def parameter_table(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Rows `{"component", "total", "trainable"}` (trainable None when the artifact does not decide it)."""
    rows: list[dict[str, Any]] = []
    weights, head = adapter_file(folder, ADAPTER_WEIGHTS), adapter_file(folder, HEAD_WEIGHTS)
    if weights.is_file():
        total = sum(tensor_sizes(weights).values())
        rows.append(_row(f"adapter:{_adapter_name(folder)}", total, total))
        if head.is_file():
            total = sum(tensor_sizes(head).values())
            rows.append(_row("head", total, total))
    if kind == "composition" and (folder / "adapters").is_dir():
        for sub in sorted(p for p in (folder / "adapters").iterdir() if adapter_file(p, ADAPTER_WEIGHTS).is_file()):
            rows.append(_row(f"adapter:{sub.name}", sum(tensor_sizes(adapter_file(sub, ADAPTER_WEIGHTS)).values()), 0))
    adapter_files = {ADAPTER_WEIGHTS, HEAD_WEIGHTS, *OLD_ADAPTER_FILES}
    model_files = sorted(p for p in folder.glob("*.safetensors") if p.name not in adapter_files)
    if model_files and kind == "backbone":
        rows.append(_row("backbone", sum(sum(tensor_sizes(p).values()) for p in model_files), None))
    elif model_files:
        totals: Counter[str] = Counter()
        for path in model_files:
            for key, size in tensor_sizes(path).items():
                totals[_component_of(key)] += size
        frozen = _finetune_frozen(folder)
        for component, total in totals.items():
            rows.append(_row(component, total, None if frozen is None else (0 if component in frozen else total)))
    return rows


def _json_or_empty(path: Path) -> Any:
    return read_json(path) if path.is_file() else {}


def _adapter_list(adapters: list) -> str:
    return ", ".join(f"{a.get('name')} ({a.get('kind') or a.get('config', {}).get('kind', '?')})"
                     for a in adapters if isinstance(a, dict)) or "none (the baseline)"


def about(folder: Path, kind: str) -> dict[str, Any]:
    """What the artifact is, from its own files: an adapter's kind, backbone and dev metrics; a
    composition's adapters and fusion; a finetuned model's task, backbone, adapters and metrics."""
    from kadapter_cli.modeling.backbone import describe_fingerprint

    if kind == "adapter":
        config = _json_or_empty(adapter_file(folder, ADAPTER_CONFIG))
        metrics = _json_or_empty(folder / "metrics.json")
        return {"adapter kind": config.get("kind"), "backbone": config.get("backbone"),
                "backbone fingerprint": describe_fingerprint(config.get("backbone_fingerprint") or {}),
                "tap layers": config.get("tap_layers"), "adapter width": config.get("adapter_width"),
                "labels": len(config.get("labels") or []), "dev": metrics.get("dev", {})}
    if kind == "composition":
        comp = _json_or_empty(folder / "composition.json")
        return {"adapters": _adapter_list(comp.get("adapters", [])), "fusion": comp.get("fusion"),
                "backbone": comp.get("backbone")}
    if kind == "finetuned":
        config = _json_or_empty(folder / "config.json")
        metrics = _json_or_empty(folder / "metrics.json")
        return {"task": config.get("task"), "backbone": config.get("backbone"),
                "backbone fingerprint": describe_fingerprint(config.get("backbone_fingerprint") or {}),
                "backbone frozen": config.get("freeze_backbone"),
                "adapters": _adapter_list(config.get("adapters", [])),
                "fusion": config.get("fusion") if config.get("adapters") else None,
                **{split: values for split, values in metrics.items() if isinstance(values, dict)}}
    return {}


def inspect(folder: str | Path) -> dict[str, Any]:
    """Manifest summary of an artifact folder, what it is (`about`) and, for model artifacts, its
    parameter table."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    rows = parameter_table(folder, str(manifest.get("kind")))
    trainable = [r["trainable"] for r in rows]
    return {
        "path": describe_source(folder),  # a repository's hf://org/name@<commit>, not its place in the cache
        "kind": manifest.get("kind"),
        "about": about(folder, str(manifest.get("kind"))),
        "format_version": manifest.get("format_version"),
        "kadapter_version": manifest.get("kadapter_version"),
        "created": manifest.get("created"),
        "command": manifest.get("command", []),
        "config": manifest.get("config", {}),
        "inputs": manifest.get("inputs", []),
        "files": sorted(manifest.get("files", {})),
        "stats": manifest.get("stats", {}),
        "parameters": rows,
        "total_parameters": sum(r["total"] for r in rows),
        "trainable_parameters": None if None in trainable else sum(trainable),
    }
