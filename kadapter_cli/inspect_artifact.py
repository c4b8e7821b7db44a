"""`kadapter inspect DIR`: what an artifact is, where it came from, and how many parameters it holds.

Parameter counts come from the safetensors headers (shapes only), so inspecting a large model
reads no weights. Components: an adapter artifact has its adapter and pretraining head; a model
file (`model.safetensors`) is grouped by top-level prefix (`backbone`, `adapters.<name>`, `fusion`,
`head`, ...). Trainable counts are what the producing stage trained: adapter and head for adapter
pretraining; for a model file, everything not listed under `"frozen"` in its `config.json`
(unknown when the config does not say).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from kadapter_cli.artifacts import read_json, read_manifest
from kadapter_cli.errors import BadInput


def tensor_sizes(path: Path) -> dict[str, int]:
    """`{tensor name: element count}` from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: math.prod(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise BadInput(f"not a readable safetensors file ({e})", path) from None


def _component_of(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "adapters" and len(parts) >= 2:
        return f"adapter:{parts[1]}"
    return parts[0]


def _frozen_components(folder: Path) -> set[str] | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = read_json(config_path)
    frozen = config.get("frozen") if isinstance(config, dict) else None
    if not isinstance(frozen, list):
        return None
    return {_component_of(str(path)) for path in frozen}


def parameter_table(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Rows `{"component", "total", "trainable"}` (trainable None when the artifact does not say)."""
    rows: list[dict[str, Any]] = []
    adapter_file, head_file = folder / "adapter.safetensors", folder / "head.safetensors"
    if adapter_file.is_file():
        name = folder.name
        config_path = folder / "adapter_config.json"
        if config_path.is_file():
            config = read_json(config_path)
            name = config.get("name", name) if isinstance(config, dict) else name
        total = sum(tensor_sizes(adapter_file).values())
        rows.append({"component": f"adapter:{name}", "total": total, "trainable": total})
    if head_file.is_file():
        total = sum(tensor_sizes(head_file).values())
        rows.append({"component": "head", "total": total, "trainable": total})
    model_files = sorted(p for p in folder.glob("*.safetensors") if p not in (adapter_file, head_file))
    if model_files and kind == "backbone":
        total = sum(sum(tensor_sizes(p).values()) for p in model_files)
        rows.append({"component": "backbone", "total": total, "trainable": None})
    elif model_files:
        totals: Counter[str] = Counter()
        for path in model_files:
            for key, size in tensor_sizes(path).items():
                totals[_component_of(key)] += size
        frozen = _frozen_components(folder)
        for component, total in totals.items():
            trainable = None if frozen is None else (0 if component in frozen else total)
            rows.append({"component": component, "total": total, "trainable": trainable})
    return rows


def inspect(folder: str | Path) -> dict[str, Any]:
    """Manifest summary of an artifact folder plus, for model artifacts, its parameter table."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    rows = parameter_table(folder, str(manifest.get("kind")))
    known = [r["trainable"] for r in rows]
    return {
        "path": str(folder),
        "kind": manifest.get("kind"),
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
        "trainable_parameters": None if None in known else sum(known),
    }
