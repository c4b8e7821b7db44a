"""The fine-tuned model: the K-Adapter body (backbone + frozen adapters + fusion) and a task's head.
The task decides which rows the head reads and what its outputs mean; candidates (multiple choice)
are flattened into the batch and restored after."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kadapter_cli.modeling.kadapter import KAdapterModel


class TaskModel(nn.Module):
    """`KAdapterModel` + the task's head; the task says which rows the head reads and how it is called.

    Candidates are flattened for the body and the head — `input_ids` (B, C, L) run as (B·C, L) —
    and the head's outputs come back as (B, C, …). When the task names the positions its head
    reads, the body computes only those rows (B·C, P, H): the adapters' last layers and the fusion
    skip every other row, for the same values.
    """

    def __init__(self, body: KAdapterModel, head: nn.Module, task):
        super().__init__()
        self.body = body
        self.head = head
        self.task = task

    def forward(self, batch: dict[str, Any]) -> Any:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        lead = ids.shape[:-1]  # (B,) or (B, C)
        features = batch.get("features")
        if features is not None:
            features = (features[:-1], features[-1])
        positions = self.task.head_positions(batch)
        if positions is not None:
            positions = positions.reshape(-1, positions.shape[-1])
        h = self.body(ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1]), features, positions)
        return _restore_candidates(self.task.run_head(self.head, h, batch), lead)


def _restore_candidates(outputs: Any, lead: torch.Size) -> Any:
    """Head outputs (B·C, …) → (B, C, …), for a tensor or a tuple/list/dict of tensors."""
    if len(lead) == 1:
        return outputs
    if isinstance(outputs, torch.Tensor):
        return outputs.reshape(*lead, *outputs.shape[1:])
    if isinstance(outputs, dict):
        return {k: _restore_candidates(v, lead) for k, v in outputs.items()}
    return type(outputs)(_restore_candidates(v, lead) for v in outputs)
