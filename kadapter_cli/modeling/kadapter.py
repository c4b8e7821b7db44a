"""`KAdapterModel`: a backbone, any number of knowledge adapters, and their fusion.

The backbone runs once; every adapter reads its own tap layers from the union of all taps, so
adapters with different taps compose. With no adapters the model is the plain backbone (the
baseline). When the backbone is frozen its tapped states can be precomputed (the feature cache)
and passed as `features`, and the model may then be built without a backbone at all.

Freezing is explicit: `freeze_backbone()` / `freeze_adapters()` turn gradients off *and* keep the
frozen parts in eval mode through `model.train()` — unlike the original, whose frozen adapters
kept dropout on during fine-tuning (docs/differences.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from kadapter_cli.data.encoding import SPACED_MARKERS
from kadapter_cli.errors import BadInput, ParamText
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, take_rows
from kadapter_cli.modeling.backbone import (
    BackboneShape,
    backbone_shape,
    backbone_states,
    describe_fingerprint,
    same_backbone,
)
from kadapter_cli.modeling.freezing import FreezableModule
from kadapter_cli.modeling.fusion import make_fusion

Features = tuple[Sequence[torch.Tensor], torch.Tensor]


def _backbone_key(name_or_path: str) -> str:
    """`FacebookAI/roberta-large`, `roberta-large` and `/models/roberta-large/` name the same model."""
    return Path(str(name_or_path).rstrip("/\\")).name


def check_composable(configs: Sequence[AdapterConfig], paths: Sequence[str | Path] | None = None,
                     allow_backbone_mismatch: bool = False) -> None:
    """`BadInput` naming the difference when adapters were built on different backbones.

    Backbone type, hidden size and depth must be equal. The backbones' fingerprints (config and
    weight hashes, or hub id and revision) must match too, unless `allow_backbone_mismatch`;
    adapters without one are compared by backbone id (its last path component). Tap layers,
    widths and depths of the adapters may differ; their entity-marker style (`marker_style`) may not.
    """
    if not configs:
        return
    names = [str(p) for p in paths] if paths is not None else [c.name for c in configs]
    first = configs[0]
    for config, name in zip(configs[1:], names[1:]):
        fingerprinted = first.backbone_fingerprint and config.backbone_fingerprint
        if fingerprinted and not allow_backbone_mismatch \
                and not same_backbone(first.backbone_fingerprint, config.backbone_fingerprint):
            raise BadInput(ParamText(
                "adapters were trained on different backbones: '{first}' on {first_backbone}, '{other}' on "
                "{other_backbone}; pass {allow_backbone_mismatch:True} to use them anyway",
                first=names[0], first_backbone=describe_fingerprint(first.backbone_fingerprint), other=name,
                other_backbone=describe_fingerprint(config.backbone_fingerprint)))
        fields = [
            ("backbone model type", first.backbone_model_type, config.backbone_model_type),
            ("backbone hidden size", first.backbone_hidden_size, config.backbone_hidden_size),
            ("backbone layers", first.backbone_num_layers, config.backbone_num_layers),
        ]
        if not fingerprinted and not allow_backbone_mismatch:  # the name is all there is to compare
            fields.insert(0, ("backbone", _backbone_key(first.backbone), _backbone_key(config.backbone)))
        for field, a, b in fields:
            if a != b:
                raise BadInput(
                    f"adapters were built on different backbones: {field} is {a} for '{names[0]}' "
                    f"but {b} for '{name}'"
                )
    marker_style(configs, names)


def marker_style(configs: Sequence[AdapterConfig], paths: Sequence[str | Path] | None = None) -> str:
    """The entity-marker style a model's encoding must follow: its adapters' (those that read
    markers), kadapter's `spaced` when none does. Different styles are `BadInput`: one encoding
    cannot give each adapter the marker ids it learned."""
    names = [str(p) for p in paths] if paths is not None else [c.name for c in configs]
    styled = [(c.marker_style, name) for c, name in zip(configs, names) if c.marker_style is not None]
    for style, name in styled[1:]:
        if style != styled[0][0]:
            raise BadInput(ParamText(
                "adapters were trained with different entity-marker styles: '{first}' uses {first_style!r} but "
                "'{other}' uses {other_style!r} ('original' = the bare \"@\"/\"#\" ids of microsoft/K-Adapter, "
                "'spaced' = kadapter's); train one again with {marker_style} to match",
                first=styled[0][1], first_style=styled[0][0], other=name, other_style=style))
    return styled[0][0] if styled else SPACED_MARKERS


def check_fits_backbone(config: AdapterConfig, shape: BackboneShape, fingerprint: dict | None = None,
                        allow_backbone_mismatch: bool = False) -> None:
    """`BadInput` when an adapter cannot run on a backbone of this shape (width or depth), or when
    `fingerprint` (of the backbone about to be used) is not that of the backbone it was trained on."""
    if fingerprint and not allow_backbone_mismatch and not same_backbone(config.backbone_fingerprint, fingerprint):
        raise BadInput(ParamText(
            "adapter '{adapter}' was trained on {trained_on}, but the backbone given is {given}; "
            "pass {allow_backbone_mismatch:True} to use it anyway",
            adapter=config.name, trained_on=describe_fingerprint(config.backbone_fingerprint),
            given=describe_fingerprint(fingerprint)))
    if config.backbone_hidden_size != shape.hidden_size:
        raise BadInput(
            f"adapter '{config.name}' was built on a {config.backbone_hidden_size}-wide backbone "
            f"({config.backbone}); '{shape.name_or_path}' is {shape.hidden_size} wide"
        )
    too_deep = [t for t in config.tap_layers if t > shape.num_layers]
    if too_deep:
        raise BadInput(
            f"adapter '{config.name}' taps layers {too_deep}, but '{shape.name_or_path}' has only {shape.num_layers}"
        )


class KAdapterModel(FreezableModule):
    """backbone (optional) + adapters + fusion → fused representation (B, L, H).

    Without a fusion (`fusion=None`) the output is the paper's K-Adapter output: the backbone's last
    hidden state and each adapter's output side by side, `[h ; a_1 ; …]` (B, L, (1 + k)·H), with
    no untrained parameters. Submodule names: `backbone`, `adapters.<name>` (each a
    `KnowledgeAdapter`), `fusion`.
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        adapters: Mapping[str, KnowledgeAdapter],
        fusion: str | None,
        hidden: int,
    ):
        super().__init__()
        self.hidden = hidden
        self.backbone = backbone
        bad_names = [name for name in adapters if not name or "." in name]
        if bad_names:
            raise BadInput(f"adapter names must be non-empty and contain no '.': {bad_names}")
        self.adapters = nn.ModuleDict(dict(adapters))
        self.fusion_mode = fusion if adapters else None
        self.fusion = make_fusion(fusion, hidden, list(adapters)) if adapters and fusion is not None else None
        configs = [a.config for a in self.adapters.values()]
        check_composable(configs)
        for config in configs:
            if config.backbone_hidden_size != hidden:
                raise BadInput(
                    f"adapter '{config.name}' was built on a {config.backbone_hidden_size}-wide backbone "
                    f"({config.backbone}); this model is {hidden} wide"
                )
            if backbone is not None:
                check_fits_backbone(config, backbone_shape(backbone))
        # The union of all taps is computed once; each adapter picks its own from it.
        self.tap_layers: list[int] = sorted({t for c in configs for t in c.tap_layers})
        # Heads read token states, never the backbone's pooled output: its pooler gets no gradient,
        # and under DDP a trainable parameter without one stops training at the second step.
        pooler = getattr(backbone, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)

    # ------------------------------------------------------------ freezing

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and it stays in eval mode (no dropout) through `train()`."""
        if self.backbone is not None:
            self.freeze("backbone")

    def freeze_adapters(self, names: Sequence[str] | None = None, keep_dropout: bool = False) -> None:
        """No gradients for the named adapters (all by default); they stay in eval mode through
        `train()`, unless `keep_dropout` (the original code: frozen adapters keep their dropout on)."""
        for name in self.adapters if names is None else names:
            if name not in self.adapters:
                raise BadInput(f"no adapter named '{name}' (have: {', '.join(self.adapters)})")
            self.freeze(f"adapters.{name}", eval_mode=not keep_dropout)

    # ------------------------------------------------------------ padding

    @property
    def attends_to_padding(self) -> bool:
        """Whether an adapter attends to padded positions (`mask_padding: false`, as imported ones do)."""
        return any(not adapter.config.mask_padding for adapter in self.adapters.values())

    def padded_length(self, max_length: int) -> int | None:
        """The length every batch must be padded to: `max_length` when an adapter attends to padding,
        else None (each batch to its own longest sequence).

        An adapter that attends to padding gives a real token an output that depends on how many pad
        states follow and what they hold. The original padded every sequence to its max length with
        the backbone's pad-token states, which is what such an adapter learned with; doing the same
        makes its outputs at real tokens independent of the batch a record lands in.
        """
        return max_length if self.attends_to_padding else None

    # ------------------------------------------------------------ forward

    def backbone_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Features:
        """(tapped states at `self.tap_layers`, last hidden state): what the feature cache stores."""
        if self.backbone is None:
            raise ValueError("this model has no backbone: pass precomputed `features`")
        # A frozen backbone needs no autograd graph: its inputs are token ids, its weights fixed.
        return backbone_states(self.backbone, input_ids, attention_mask, self.tap_layers, self.attends_to_padding,
                               grad=not self.is_frozen("backbone"))

    def encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        features: Features | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(backbone last hidden state, {adapter name: adapter output}), before fusion: (B, L, H)
        each, or with `positions` (B, P) only those rows (B, P, H) — the same values for less work
        (each adapter's last layer computes only those rows; see `KnowledgeAdapter.forward`)."""
        tapped, last = features if features is not None else self.backbone_features(input_ids, attention_mask)
        if len(tapped) != len(self.tap_layers):
            raise ValueError(f"features hold {len(tapped)} tapped states, the model taps {self.tap_layers}")
        if positions is not None:
            last = take_rows(last, positions)
        # Cached features are fp16 and a backbone may run in bf16: the adapters compute in their own dtype.
        dtype = self._adapter_dtype()
        if dtype is not None:
            tapped, last = [t.to(dtype) for t in tapped], last.to(dtype)
        by_layer = dict(zip(self.tap_layers, tapped))
        outs = {
            name: adapter([by_layer[t] for t in adapter.tap_layers], attention_mask, positions)
            for name, adapter in self.adapters.items()
        }
        return last, outs

    def _adapter_dtype(self) -> torch.dtype | None:
        for module in (self.adapters, self.fusion):
            for p in module.parameters() if module is not None else ():
                return p.dtype
        return None

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        features: Features | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The fused representation (B, L, H); with no adapters, the backbone's last hidden state;
        with adapters but no fusion, `side_by_side` (B, L, (1 + k)·H). With `positions` (B, P): only
        those rows, (B, P, ·). Fusion works row by row, so a task head that reads a few positions
        gets the same values while the adapters' last layers and the fusion skip every other row."""
        last, outs = self.encode(input_ids, attention_mask, features, positions)
        return self.side_by_side(last, outs) if self.fusion is None else self.fusion(last, outs)

    @staticmethod
    def side_by_side(last: torch.Tensor, outs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`[h ; a_1 ; …]`: the backbone's last hidden state and the adapters' outputs (in their order)
        concatenated on the feature axis, (…, (1 + k)·H)."""
        return torch.cat([last, *outs.values()], dim=-1) if outs else last

    # ------------------------------------------------------------ accounting

    def parameter_table(self) -> list[dict[str, int | str]]:
        """Rows `{"component", "total", "trainable"}`: backbone, each adapter, fusion."""
        parts: list[tuple[str, nn.Module]] = []
        if self.backbone is not None:
            parts.append(("backbone", self.backbone))
        parts += [(f"adapter:{name}", adapter) for name, adapter in self.adapters.items()]
        if self.fusion is not None:
            parts.append((f"fusion:{self.fusion_mode}", self.fusion))
        return [
            {
                "component": name,
                "total": sum(p.numel() for p in module.parameters()),
                "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            }
            for name, module in parts
        ]
