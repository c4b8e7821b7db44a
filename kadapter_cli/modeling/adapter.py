"""The knowledge adapter: one module for every kind (fac, lin, ...), its config, and its artifact files.

A `KnowledgeAdapter` is K `AdapterLayer`s, one per tapped backbone layer (the paper, §3.1).
Adapter layer k reads `tapped[k] + state_{k-1}` (state_0 = 0) — the element-wise sum of the
original code, not the paper's concatenation — and returns its input plus
`up_project(encoder(down_project(input)))`. The encoder is N post-LN BERT layers whose parameter
names equal Hugging Face `BertEncoder`'s, so the original checkpoints load by plain copy:

    adapter.{i}.down_project.{weight,bias}
    adapter.{i}.encoder.layer.{j}.attention.self.{query,key,value}.{weight,bias}
    adapter.{i}.encoder.layer.{j}.attention.output.{dense,LayerNorm}.{weight,bias}
    adapter.{i}.encoder.layer.{j}.intermediate.dense.{weight,bias}
    adapter.{i}.encoder.layer.{j}.output.{dense,LayerNorm}.{weight,bias}
    adapter.{i}.up_project.{weight,bias}

Unlike the original, padded positions are masked out of attention by default (`mask_padding`);
`mask_padding=False` reproduces the original behaviour and is what imported checkpoints use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kadapter_cli.artifacts.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS, adapter_file
from kadapter_cli.data.encoding import MARKER_STYLES, SPACED_MARKERS
from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.backbone import BackboneShape
from kadapter_cli.modeling.options import MASK_PADDING

# Tap points of the released adapters on a 24-layer backbone (0, 11, 22), as relative depths.
_DEFAULT_TAP_FRACTIONS = (0 / 24, 11 / 24, 22 / 24)


@dataclass
class AdapterConfig:
    """Everything needed to rebuild a `KnowledgeAdapter` and to check it fits a backbone.

    `tap_layers` index the backbone's hidden states (0 = embeddings). `labels` is the label set
    of the pretraining task (relation ids for fac; empty for lin). `head` describes the pretraining
    head (`heads.build_pretraining_head` reads it). `max_length` is the sequence length the
    adapter was pretrained with. `marker_style` is how its pretraining encoded entity markers
    (`kadapter_cli.data.encoding`: `spaced`, kadapter's, or `original`, the released fac adapter's); a
    lin adapter reads no markers and has none (None). Configs written before the field existed
    read as `spaced`, the only style kadapter then had.
    """

    name: str
    kind: str
    backbone: str
    backbone_model_type: str
    backbone_hidden_size: int
    backbone_num_layers: int
    tap_layers: list[int]
    adapter_width: int = 768
    layers_per_tap: int = 2
    num_heads: int = 12
    ffn_size: int = 3072
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.0002
    mask_padding: bool = MASK_PADDING
    labels: list[str] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)
    max_length: int = 256
    # What the backbone was, beyond its shape (`backbone.backbone_fingerprint`); {} = not recorded
    # (imported checkpoints, adapters written before it was).
    backbone_fingerprint: dict[str, Any] = field(default_factory=dict)
    marker_style: str | None = SPACED_MARKERS

    def __post_init__(self) -> None:
        self.tap_layers = [int(t) for t in self.tap_layers]
        self.labels = [str(label) for label in self.labels]
        self.head = dict(self.head)
        self.backbone_fingerprint = dict(self.backbone_fingerprint or {})
        problems = []
        if not self.tap_layers:
            problems.append("tap_layers is empty")
        bad_taps = [t for t in self.tap_layers if not 0 <= t <= self.backbone_num_layers]
        if bad_taps:
            problems.append(f"tap_layers {bad_taps} are outside 0..{self.backbone_num_layers}")
        for name in ("backbone_hidden_size", "adapter_width", "layers_per_tap", "num_heads", "ffn_size", "max_length"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.num_heads >= 1 and self.adapter_width % self.num_heads:
            problems.append(f"adapter_width {self.adapter_width} is not a multiple of num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.kind == "lin":
            self.marker_style = None  # dependency heads: no markers, so it composes with either style
        elif self.marker_style not in MARKER_STYLES:
            problems.append(f"marker_style must be one of {', '.join(MARKER_STYLES)} (got {self.marker_style!r})")
        if problems:
            raise BadInput("invalid adapter config: " + "; ".join(problems))

    # ------------------------------------------------------------ construction

    @classmethod
    def for_backbone(cls, shape: BackboneShape, kind: str, **overrides: Any) -> "AdapterConfig":
        """The default adapter for a backbone of this shape; `overrides` replace any field.

        Default rule (reproduces the paper's adapters on RoBERTa-large, 24 layers × 1024):
        - taps at the relative depths 0, 11/24 and 22/24 of the backbone, rounded half up
          (duplicates dropped on very shallow backbones): 24 layers → 0, 11, 22; 12 → 0, 6, 11;
          6 → 0, 3, 6; 4 → 0, 2, 4;
        - adapter width = 3/4 of the hidden size rounded to the nearest multiple of 64 (at least
          64): 1024 → 768, 768 → 576, 384 → 320, 64 → 64;
        - heads = width / 64 (768 → 12); FFN = 4 × width (768 → 3072); 2 layers per tap;
          dropout 0.1, LayerNorm eps 1e-5, projection init std 0.0002, padding masked.
        """
        taps = sorted({math.floor(f * shape.num_layers + 0.5) for f in _DEFAULT_TAP_FRACTIONS})
        width = max(64, 64 * math.floor(shape.hidden_size * 3 / 4 / 64 + 0.5))
        values: dict[str, Any] = {
            "name": kind,
            "kind": kind,
            "backbone": shape.name_or_path,
            "backbone_model_type": shape.model_type,
            "backbone_hidden_size": shape.hidden_size,
            "backbone_num_layers": shape.num_layers,
            "tap_layers": taps,
            "adapter_width": width,
            "num_heads": width // 64,
            "ffn_size": 4 * width,
        }
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BadInput(f"unknown adapter config field(s): {', '.join(unknown)}")
        values.update(overrides)
        # A width given without heads/FFN keeps the rule's proportions (64-wide heads, FFN 4×).
        width = int(values["adapter_width"])
        if "adapter_width" in overrides and "num_heads" not in overrides:
            values["num_heads"] = width // 64 if width % 64 == 0 else 1
        if "adapter_width" in overrides and "ffn_size" not in overrides:
            values["ffn_size"] = 4 * width
        return cls(**values)

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        """The inverse of `to_dict`; unknown or missing keys are `BadInput` naming them."""
        if not isinstance(data, dict):
            raise BadInput(f"an adapter config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise BadInput(f"unknown adapter config key(s): {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise BadInput(f"adapter config lacks key(s): {', '.join(missing)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise BadInput(f"invalid adapter config: {e}") from None


# ---------------------------------------------------------------- BERT-style layers (HF BertLayer names)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (`query`/`key`/`value` as in HF `BertSelfAttention`)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                queries: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of `queries` (default: every position of `x`) over all positions of `x`."""
        q = self._split(self.query(x if queries is None else queries))
        k, v = self._split(self.key(x)), self._split(self.value(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)


class SelfOutput(nn.Module):
    """`dense` → dropout → residual → `LayerNorm` (HF `BertSelfOutput` / `BertOutput`)."""

    def __init__(self, in_features: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    """Self-attention block with post-LN residual (HF `BertAttention`: keys `self.*`, `output.*`)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float, eps: float):
        super().__init__()
        self.self = SelfAttention(hidden, num_heads, dropout)
        self.output = SelfOutput(hidden, hidden, dropout, eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H); with `positions` (B, P), only those rows: (B, P, H)."""
        queries = None if positions is None else take_rows(x, positions)
        return self.output(self.self(x, attn_bias, queries), x if queries is None else queries)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # the erf form, as BERT's "gelu"


class TransformerLayer(nn.Module):
    """One post-LN BERT layer (HF `BertLayer` parameter names)."""

    def __init__(self, hidden: int, num_heads: int, ffn_size: int, dropout: float, eps: float):
        super().__init__()
        self.attention = Attention(hidden, num_heads, dropout, eps)
        self.intermediate = Intermediate(hidden, ffn_size)
        self.output = SelfOutput(ffn_size, hidden, dropout, eps)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H); with `positions` (B, P), only those rows (keys and values still span all of x)."""
        h = self.attention(x, attn_bias, positions)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    """A stack of `TransformerLayer`s under `layer.{j}` (HF `BertEncoder` names)."""

    def __init__(self, num_layers: int, hidden: int, num_heads: int, ffn_size: int, dropout: float, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(hidden, num_heads, ffn_size, dropout, eps) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H); with `positions` (B, P), the last layer computes only those rows."""
        last = len(self.layer) - 1
        for j, layer in enumerate(self.layer):
            x = layer(x, attn_bias, positions if j == last else None)
        return x


def take_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, H), positions (B, P) → x[b, positions[b, p]] (B, P, H)."""
    return x.gather(1, positions.long().unsqueeze(-1).expand(-1, -1, x.size(-1)))


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) 1/0 mask → additive (B, 1, 1, L) bias that hides padded keys; None → None.

    A large finite negative (not -inf) keeps an all-padding row finite instead of NaN.
    """
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(torch.bool)
    return torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device).masked_fill(~keep, torch.finfo(dtype).min)


# ---------------------------------------------------------------- the adapter


class AdapterLayer(nn.Module):
    """down_project (H→W) → N BERT layers → up_project (W→H), plus the input (residual)."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        c = config
        self.down_project = nn.Linear(c.backbone_hidden_size, c.adapter_width)
        self.encoder = Encoder(c.layers_per_tap, c.adapter_width, c.num_heads, c.ffn_size, c.dropout, c.layer_norm_eps)
        self.up_project = nn.Linear(c.adapter_width, c.backbone_hidden_size)
        # Near-zero projections make a fresh adapter layer close to the identity, as in the original code.
        # Meta tensors (shape-only builds, loading) hold no values to initialise.
        if self.down_project.weight.device.type != "meta":
            for proj in (self.down_project, self.up_project):
                nn.init.normal_(proj.weight, mean=0.0, std=c.init_std)
                nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H); with `positions` (B, P), only those rows: (B, P, H)."""
        out = self.up_project(self.encoder(self.down_project(x), attn_bias, positions))
        return (x if positions is None else take_rows(x, positions)) + out


class KnowledgeAdapter(nn.Module):
    """K adapter layers chained over the backbone's tapped hidden states; output (B, L, H)."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        self.adapter = nn.ModuleList(AdapterLayer(config) for _ in config.tap_layers)

    @property
    def tap_layers(self) -> list[int]:
        return list(self.config.tap_layers)

    def forward(self, tapped: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """`tapped[k]` = backbone hidden state at `tap_layers[k]`; the mask is used if `mask_padding`.

        Returns (B, L, H), or with `positions` (B, P) only those rows (B, P, H) — the same values,
        for less work: a head that reads a few positions (the relation head reads two) then spares
        the last layer's queries, FFN and up-projection everywhere else.
        """
        if len(tapped) != len(self.adapter):
            raise ValueError(f"adapter '{self.config.name}' needs {len(self.adapter)} tapped states, got {len(tapped)}")
        bias = padding_bias(attention_mask, tapped[0].dtype) if self.config.mask_padding else None
        state = None
        last = len(self.adapter) - 1
        for k, (layer, hidden) in enumerate(zip(self.adapter, tapped)):
            state = layer(hidden if state is None else hidden + state, bias, positions if k == last else None)
        return state


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------- artifact files


def _tensors_for_saving(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_adapter(folder: str | Path, adapter: KnowledgeAdapter, config: AdapterConfig, head: nn.Module | None = None) -> None:
    """Writes `kadapter_adapter.json` (the config), `kadapter_adapter.safetensors` (adapter weights
    only) and, given a pretraining head, `kadapter_head.safetensors` into `folder` (the caller adds
    the manifest)."""
    from safetensors.torch import save_file

    from kadapter_cli.artifacts.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / ADAPTER_CONFIG, config.to_dict())
    save_file(_tensors_for_saving(adapter), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    if head is not None:
        save_file(_tensors_for_saving(head), str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or corrupt file is `BadInput` naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise BadInput("file not found", path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise BadInput(f"not a readable safetensors file ({e})", path) from None


def state_dict_problems(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What stops `state` loading into `module`: missing keys, unexpected keys, shape mismatches."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if wrong:
        problems.append("shape mismatch " + _some([f"{k} {list(state[k].shape)} != {list(expected[k])}" for k in wrong]))
    return problems


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`BadInput` naming the file and keys when `state` does not fit `module` exactly."""
    problems = state_dict_problems(module, state)
    if problems:
        raise BadInput("weights disagree with the config: " + "; ".join(problems), path)


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _hub_or_path(folder: str | Path) -> Path:
    """A Hub repository id's fetched folder; any other text as a path (its absence is reported by the loader)."""
    from kadapter_cli.artifacts.hub import parse_hub_ref
    from kadapter_cli.artifacts.sources import model_folder

    return model_folder(folder) if parse_hub_ref(str(folder)) is not None else Path(folder)


def load_config(folder: str | Path) -> AdapterConfig:
    """The `AdapterConfig` of an adapter artifact folder (its `kadapter_adapter.json`, or the
    `adapter_config.json` of an adapter written before kadapter 0.2); errors name the file."""
    from kadapter_cli.artifacts.io import read_json

    path = adapter_file(folder, ADAPTER_CONFIG)
    if not Path(folder).is_dir():
        raise BadInput("no such adapter folder", folder)
    try:
        return AdapterConfig.from_dict(read_json(path))
    except BadInput as e:
        if e.path is not None:
            raise
        raise BadInput(e.message, path) from None


def load_adapter(folder: str | Path) -> tuple[KnowledgeAdapter, AdapterConfig, dict[str, torch.Tensor] | None]:
    """`(adapter, config, head_state_dict or None)` from an adapter artifact folder alone, the
    adapter in eval mode (no dropout: two calls on the same input give the same output), as Hugging
    Face and PEFT return loaded models; `adapter.train()` turns dropout back on.

    Weights that disagree with the config are `BadInput` naming the file and keys. Adapters written
    before kadapter 0.2 (`adapter_config.json`, `adapter.safetensors`, `head.safetensors`) load too.
    `folder` may be a Hugging Face Hub repository id (`org/name[@revision]`, `sources.model_folder`).
    """
    folder = Path(folder) if Path(folder).expanduser().exists() else _hub_or_path(folder)
    config = load_config(folder)
    weights_path = adapter_file(folder, ADAPTER_WEIGHTS)
    state = read_safetensors(weights_path)
    # Built on the meta device and filled by assignment: no wasted random init, and the global RNG
    # (which seeded training relies on) is left untouched.
    with torch.device("meta"):
        adapter = KnowledgeAdapter(config)
    check_state_dict(adapter, state, weights_path)
    adapter.load_state_dict(state, strict=True, assign=True)
    adapter.eval()
    head_path = adapter_file(folder, HEAD_WEIGHTS)
    head_state = read_safetensors(head_path) if head_path.exists() else None
    return adapter, config, head_state
