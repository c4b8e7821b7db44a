"""`compose`: adapters that share a backbone, written as one self-contained composition folder; and
how every stage that reads adapters resolves them (a name, a folder, a composition, a list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kadapter_cli.artifacts.cards import composition_card, write_card
from kadapter_cli.artifacts.hub import describe_source
from kadapter_cli.artifacts.io import read_json, sha256_inputs, write_json
from kadapter_cli.artifacts.layout import ADAPTERS, COMPOSITION_FILE, COMPOSITIONS, NO_ADAPTERS, adapter_dir
from kadapter_cli.artifacts.manifest import link_artifact, write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.artifacts.sources import artifact_folder, source_name
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, load_adapter
from kadapter_cli.modeling.backbone import (
    DEFAULT_BACKBONE,
    backbone_fingerprint,
    backbone_name,
    backbone_shape,
    describe_fingerprint,
    load_backbone,
    load_tokenizer,
    locate_backbone,
)
from kadapter_cli.modeling.kadapter import check_composable, check_fits_backbone, marker_style
from kadapter_cli.modeling.options import DEFAULT_FUSION, FUSION_MODES

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------- adapters and compositions


@dataclass
class AdapterSet:
    """The adapters a run uses (in order) and how they are fused."""

    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    fusion: str = DEFAULT_FUSION


def resolve_adapters(spec: str | None, workdir: Path, fusion: str | None) -> AdapterSet:
    """`fac,lin` (workdir names, folders or Hub repository ids: `sources.artifact_folder`), a
    composition (a folder or a repository id), or empty/`none` for the baseline."""
    if spec is None or spec.strip() in ("", "none", NO_ADAPTERS):
        return AdapterSet([], [], fusion or DEFAULT_FUSION)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1:
        path = artifact_folder(parts[0], workdir, COMPOSITIONS)
        if is_composition(path):
            adapter_set = read_composition(path)
            if fusion is not None and fusion != adapter_set.fusion:
                raise BadParameter("{fusion:{value}}: this composition fuses with {saved}; leave {fusion} out, "
                                   "or compose again with {fusion:{value}}", fusion, path, saved=adapter_set.fusion)
            return adapter_set
    paths = [artifact_folder(p, workdir, ADAPTERS) for p in parts]
    names = [source_name(p) for p in parts]
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

    name_or_path: str  # what was loaded (a Hub id or a folder of this machine)
    model: Any  # the Hugging Face encoder
    tokenizer: Any
    fingerprint: dict

    @property
    def name(self) -> str:
        """How artifacts record it: its Hub id, package or folder name (`backbone.backbone_name`)."""
        return backbone_name(self.fingerprint, self.name_or_path)


def load_matching_backbone(configs: Sequence[AdapterConfig], backbone: str | None = None,
                           allow_backbone_mismatch: bool = False,
                           names: Sequence[str] | None = None, dtype: "torch.dtype | None" = None) -> MatchingBackbone:
    """`backbone` (default: the one the first adapter was trained on, found on this machine;
    `DEFAULT_BACKBONE` without adapters) with its tokenizer and fingerprint; `BadInput` when an
    adapter does not fit it (width, depth) or was trained on other weights (its recorded
    fingerprint), unless `allow_backbone_mismatch`. `names`: the adapters' names for messages
    (default: their configs'). `dtype`: the weights' dtype (a frozen backbone in a bf16/fp16 run's
    compute dtype); None keeps the checkpoint's."""
    if backbone is None and configs:
        name = recorded_backbone(configs[0], (names or [configs[0].name])[0])
    else:
        name = str(backbone or DEFAULT_BACKBONE)
    try:
        tokenizer = load_tokenizer(name)
        model = load_backbone(name, dtype)
    except BadInput as e:
        if backbone is not None or not configs:
            raise
        raise _backbone_missing(configs[0], (names or [configs[0].name])[0],
                                f"it cannot be loaded here ({e.render()})") from None
    fingerprint = backbone_fingerprint(name, model)
    for config in configs:
        check_fits_backbone(config, backbone_shape(model), fingerprint, allow_backbone_mismatch)
    return MatchingBackbone(name, model, tokenizer, fingerprint)


def recorded_backbone(config: AdapterConfig, adapter: str) -> str:
    """What to load for the backbone an adapter records (`backbone.locate_backbone`); `BadInput`
    naming the adapter, and saying to pass `backbone`, when it is not on this machine."""
    located = locate_backbone(config.backbone_fingerprint, config.backbone)
    if located is None:
        raise _backbone_missing(config, adapter, "it is not on this machine")
    return located


def _backbone_missing(config: AdapterConfig, adapter: str, why: str) -> BadInput:
    trained_on = describe_fingerprint(config.backbone_fingerprint) if config.backbone_fingerprint else config.backbone
    return BadInput(ParamText(
        "adapter '{adapter}' was trained on the backbone {trained_on}, and {why}: pass {backbone} with that "
        "backbone (a Hugging Face id or a folder; a copy elsewhere is fine, its fingerprint is checked)",
        adapter=adapter, trained_on=trained_on, why=why))


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
            link_artifact(path, adapter_dir(tmp, name))
        comp = {"fusion": fusion, "backbone": first.backbone, "marker_style": marker_style(configs),
                "adapters": [{"name": n, "source": describe_source(p), "kind": c.kind, "tap_layers": c.tap_layers,
                              "adapter_width": c.adapter_width}
                             for n, p, c in zip(adapter_set.names, adapter_set.paths, configs)]}
        write_json(tmp / COMPOSITION_FILE, comp)
        write_card(tmp, composition_card(Path(out).name, comp, [c.to_dict() for c in configs]))
        write_manifest(tmp, "composition", config={"adapters": list(adapter_names), "fusion": fusion},
                                 inputs=sha256_inputs(adapter_set.paths), stats={"adapters": len(configs)})
    return comp

