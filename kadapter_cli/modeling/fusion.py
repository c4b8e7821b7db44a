"""Fusion: one (B, L, H) representation from the backbone's last hidden state and the adapters' outputs.

- `concat` (the original's default and the paper's): per adapter a Linear(2H→H) over
  [backbone last ; adapter out], then a Linear(kH→H) over their concatenation. Works for any
  k ≥ 1 adapters (the original crashed with one). Names map to the original's as
  `adapter_dense.fac` = `task_dense_fac`, `adapter_dense.lin` = `task_dense_lin`,
  `task_dense` = `task_dense`.
- `add`: backbone last + Σ adapter outs (no parameters), as the original's `add` mode.
- `gated` (not in the paper): the per-adapter projections of `concat`, mixed by a per-token
  softmax over adapters computed from the backbone state. The gate starts at zero (equal weights).
All new layers use PyTorch's default initialisation, as the original's task layers.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.options import FUSION_MODES


class ConcatFusion(nn.Module):
    def __init__(self, hidden: int, names: Sequence[str]):
        super().__init__()
        self.names = list(names)
        self.adapter_dense = nn.ModuleDict({name: nn.Linear(2 * hidden, hidden) for name in self.names})
        self.task_dense = nn.Linear(len(self.names) * hidden, hidden)

    def forward(self, last: torch.Tensor, outs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        per_adapter = [self.adapter_dense[n](torch.cat([last, outs[n]], dim=-1)) for n in self.names]
        return self.task_dense(torch.cat(per_adapter, dim=-1))


class AddFusion(nn.Module):
    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = list(names)

    def forward(self, last: torch.Tensor, outs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return last + sum(outs[n] for n in self.names)


class GatedFusion(nn.Module):
    def __init__(self, hidden: int, names: Sequence[str]):
        super().__init__()
        self.names = list(names)
        self.adapter_dense = nn.ModuleDict({name: nn.Linear(2 * hidden, hidden) for name in self.names})
        self.gate = nn.Linear(hidden, len(self.names))
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, last: torch.Tensor, outs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        per_adapter = torch.stack([self.adapter_dense[n](torch.cat([last, outs[n]], dim=-1)) for n in self.names], dim=-2)
        weights = torch.softmax(self.gate(last), dim=-1).unsqueeze(-1)  # (B, L, k, 1)
        return (weights * per_adapter).sum(dim=-2)


def make_fusion(mode: str, hidden: int, names: Sequence[str]) -> nn.Module:
    """The fusion module for `mode` over adapters `names` (in this order)."""
    if not names:
        raise BadInput("fusion needs at least one adapter")
    if mode == "concat":
        return ConcatFusion(hidden, names)
    if mode == "add":
        return AddFusion(names)
    if mode == "gated":
        return GatedFusion(hidden, names)
    raise BadInput(f"unknown fusion {mode!r} (known: {', '.join(FUSION_MODES)})")
