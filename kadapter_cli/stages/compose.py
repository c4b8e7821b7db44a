"""`compose`: adapters that share a backbone, written as one self-contained composition folder; and
how every stage that reads adapters resolves them (a name, a folder, a composition, a list)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kadapter_cli.artifacts.io import read_json, sha256_inputs, write_json
from kadapter_cli.artifacts.layout import ADAPTERS, COMPOSITIONS, NO_ADAPTERS, adapter_dir, resolve_artifact
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, load_adapter
from kadapter_cli.modeling.backbone import (
    DEFAULT_BACKBONE,
    backbone_fingerprint,
    backbone_shape,
    load_backbone,
    load_tokenizer,
)
from kadapter_cli.modeling.fusion import DEFAULT_FUSION, FUSION_MODES
from kadapter_cli.modeling.kadapter import check_composable, check_fits_backbone, marker_style

COMPOSITION_FILE = "composition.json"

# ---------------------------------------------------------------- adapters and compositions


@dataclass
class AdapterSet:
    """The adapters a run uses (in order) and how they are fused."""

    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    fusion: str = DEFAULT_FUSION


def resolve_adapters(spec: str | None, workdir: Path, fusion: str | None) -> AdapterSet:
    """`fac,lin` (names or paths), a composition folder, or empty/`none` for the baseline."""
    if spec is None or spec.strip() in ("", "none", NO_ADAPTERS):
        return AdapterSet([], [], fusion or DEFAULT_FUSION)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1:
        path = resolve_artifact(parts[0], workdir, COMPOSITIONS)
        if is_composition(path):
            adapter_set = read_composition(path)
            if fusion is not None and fusion != adapter_set.fusion:
                raise BadParameter("{fusion:{value}}: this composition fuses with {saved}; leave {fusion} out, "
                                   "or compose again with {fusion:{value}}", fusion, path, saved=adapter_set.fusion)
            return adapter_set
    paths = [resolve_artifact(p, workdir, ADAPTERS) for p in parts]
    names = [Path(p).name for p in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(ParamText("two adapters share the name '{twice}': give each adapter once, or rename one "
                                 "with {name} when training it", twice=twice[0]))
    return AdapterSet(names, paths, fusion or DEFAULT_FUSION)


def is_composition(folder: Path) -> bool:
    return (Path(folder) / COMPOSITION_FILE).is_file()


def read_composition(folder: Path) -> AdapterSet:
    """The adapters a composition folder holds, in its order, and its fusion."""
    comp = read_json(Path(folder) / COMPOSITION_FILE)
    names = [a["name"] for a in comp["adapters"]]
    return AdapterSet(names, [adapter_dir(folder, n) for n in names], comp["fusion"])


def load_adapters(adapter_set: AdapterSet, allow_backbone_mismatch: bool = False,
                  ) -> tuple[dict[str, KnowledgeAdapter], list[AdapterConfig]]:
    adapters, configs = {}, []
    for name, path in zip(adapter_set.names, adapter_set.paths):
        adapter, config, _ = load_adapter(path)
        adapters[name] = adapter
        configs.append(config)
    check_composable(configs, adapter_set.paths, allow_backbone_mismatch)
    return adapters, configs


@dataclass
class MatchingBackbone:
    """The backbone adapters run on, loaded and checked against them."""

    name_or_path: str
    model: Any  # the Hugging Face encoder
    tokenizer: Any
    fingerprint: dict


def load_matching_backbone(configs: Sequence[AdapterConfig], backbone: str | None = None,
                           allow_backbone_mismatch: bool = False) -> MatchingBackbone:
    """`backbone` (default: the one the first adapter was trained on; `DEFAULT_BACKBONE` without
    adapters) with its tokenizer and fingerprint; `BadInput` when an adapter does not fit it (width,
    depth) or was trained on other weights (its recorded fingerprint), unless `allow_backbone_mismatch`."""
    name = str(backbone or (configs[0].backbone if configs else DEFAULT_BACKBONE))
    tokenizer = load_tokenizer(name)
    model = load_backbone(name)
    fingerprint = backbone_fingerprint(name, model)
    for config in configs:
        check_fits_backbone(config, backbone_shape(model), fingerprint, allow_backbone_mismatch)
    return MatchingBackbone(name, model, tokenizer, fingerprint)


def compose(adapter_names: Sequence[str], workdir: Path, out: Path, fusion: str, overwrite: bool = False,
            allow_backbone_mismatch: bool = False) -> dict:
    """Checks that adapters compose and writes `compositions/<a>+<b>/` (adapters hard-linked in)."""
    if fusion not in FUSION_MODES:
        raise BadParameter("{fusion} must be concat, add or gated, got {value!r}", fusion)
    adapter_set = resolve_adapters(",".join(adapter_names), workdir, fusion)
    _, configs = load_adapters(adapter_set, allow_backbone_mismatch)
    first = configs[0]
    for config, path in zip(configs[1:], adapter_set.paths[1:]):
        if config.backbone_hidden_size != first.backbone_hidden_size:
            raise BadInput(f"adapter width differs: {first.backbone_hidden_size} vs {config.backbone_hidden_size}", path)
    with atomic_output(out, overwrite=overwrite) as tmp:
        for name, path in zip(adapter_set.names, adapter_set.paths):
            _link_tree(path, adapter_dir(tmp, name))
        comp = {"fusion": fusion, "backbone": first.backbone, "marker_style": marker_style(configs),
                "adapters": [{"name": n, "source": str(p), "kind": c.kind, "tap_layers": c.tap_layers,
                              "adapter_width": c.adapter_width}
                             for n, p, c in zip(adapter_set.names, adapter_set.paths, configs)]}
        write_json(tmp / COMPOSITION_FILE, comp)
        write_manifest(tmp, "composition", config={"adapters": list(adapter_names), "fusion": fusion},
                                 inputs=sha256_inputs(adapter_set.paths), stats={"adapters": len(configs)})
    return comp


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (copies across file systems) of an artifact folder: a composition is self-contained."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(f)
        except OSError:
            shutil.copy2(f, target)
