"""A microsoft/K-Adapter checkpoint as released, written from scratch: the original `AdapterModel`'s
key names and full shapes, random values. Shared by the tests of `import-original`."""

from __future__ import annotations

import torch

H, W, FFN, N_REL, LIN_MAX = 1024, 768, 3072, 410, 64


def original_state_dict(kind: str, seed: int, scale: float = 0.02, *, width: int = W, ffn: int = FFN,
                        n_rel: int = N_REL, lin_max: int = LIN_MAX) -> dict[str, torch.Tensor]:
    """A state dict with exactly the original AdapterModel's key names and, by default, full shapes;
    Linear weights and biases ~ N(0, scale). Narrower adapters (`width`, `ffn`) and fewer relations
    or positions keep the tests that do not need the full size fast."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        state[f"{name}.weight"] = torch.randn(out_features, in_features, generator=generator) * scale
        state[f"{name}.bias"] = torch.randn(out_features, generator=generator) * scale

    def layer_norm(name: str, size: int) -> None:
        state[f"{name}.weight"] = 1 + torch.randn(size, generator=generator) * 0.02
        state[f"{name}.bias"] = torch.randn(size, generator=generator) * 0.02

    for i in range(3):
        linear(f"adapter.{i}.down_project", width, H)
        for j in range(2):
            layer = f"adapter.{i}.encoder.layer.{j}"
            for part in ("query", "key", "value"):
                linear(f"{layer}.attention.self.{part}", width, width)
            linear(f"{layer}.attention.output.dense", width, width)
            layer_norm(f"{layer}.attention.output.LayerNorm", width)
            linear(f"{layer}.intermediate.dense", ffn, width)
            linear(f"{layer}.output.dense", width, ffn)
            layer_norm(f"{layer}.output.LayerNorm", width)
        linear(f"adapter.{i}.up_project", H, width)
    linear("com_dense", H, 2 * H)
    if kind == "fac":
        linear("dense", H, 2 * H)
        linear("out_proj", n_rel, H)
    else:
        for part in ("query", "key", "value"):
            linear(f"self_attention.self.{part}", H, H)
        linear("self_attention.output.dense", H, H)
        layer_norm("self_attention.output.LayerNorm", H)
        linear("dense", H, H)
        linear("out_proj", lin_max, H)
    return state
