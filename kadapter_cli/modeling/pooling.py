"""One vector per sequence from per-token features: the first token's (`cls`: `<s>` / `[CLS]`) or the
mean over the real tokens (`mean`: padded positions, attention mask 0, count for nothing)."""

from __future__ import annotations

import torch

from kadapter_cli.errors import BadParameter

POOLING = ("cls", "mean")


def check_pooling(pool: str | None) -> None:
    """`BadParameter` for anything but None (per-token features) or one of `POOLING`."""
    if pool is not None and pool not in POOLING:
        raise BadParameter("{pool} must be None (per token), 'cls' or 'mean', got {value!r}", pool)


def pool_features(features: torch.Tensor, attention_mask: torch.Tensor, pool: str) -> torch.Tensor:
    """features (B, L, D), attention_mask (B, L) of 1/0 → (B, D)."""
    check_pooling(pool)
    if pool == "cls":
        return features[:, 0]
    mask = attention_mask.to(features.dtype).unsqueeze(-1)
    return (features * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
