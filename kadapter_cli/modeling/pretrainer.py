"""The model an adapter is pretrained as: the frozen backbone, one adapter and its pretraining head
(fac: relation classification; lin: dependency heads)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kadapter_cli.modeling.adapter import KnowledgeAdapter, take_rows
from kadapter_cli.modeling.backbone import backbone_states
from kadapter_cli.modeling.freezing import FreezableModule

# ---------------------------------------------------------------- the model being pretrained


class AdapterPretrainer(FreezableModule):
    """Frozen backbone (eval mode, no autograd) + one adapter + its pretraining head.

    `backbone` may be None when every batch carries cached `features` (tapped states + last).
    """

    def __init__(self, backbone: nn.Module | None, adapter: KnowledgeAdapter, head: nn.Module, head_type: str):
        super().__init__()
        self.backbone = backbone
        if backbone is not None:
            self.freeze("backbone")
        self.adapter = adapter
        self.head = head
        self.head_type = head_type

    # What the frozen backbone is read at (`backbone_states`; the feature cache reads the same).
    @property
    def tap_layers(self) -> list[int]:
        return list(self.adapter.tap_layers)

    @property
    def attends_to_padding(self) -> bool:
        return not self.adapter.config.mask_padding

    @property
    def hidden(self) -> int:
        return self.adapter.config.backbone_hidden_size

    def compiled_parts(self) -> list[nn.Module]:
        """What `--compile` compiles: the parts that train."""
        return [self.adapter, self.head]

    def backbone_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """[tapped states..., last hidden state] without autograd (`backbone_states`)."""
        tapped, last = backbone_states(self.backbone, input_ids, attention_mask, self.tap_layers,
                                       self.attends_to_padding)
        return [*tapped, last]

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["attention_mask"]
        states = batch.get("features") or self.backbone_features(batch["input_ids"], mask)
        # Cached features from pinned host memory are fp16, a backbone loaded for bf16 gives bf16:
        # the adapter and head compute from their own dtype (autocast casts where it computes lower).
        dtype = next(self.adapter.parameters()).dtype
        *tapped, last = [s if s.dtype == dtype else s.to(dtype) for s in states]
        if self.head_type == "relation":
            # The relation head reads two positions, and com_dense and the adapter's last layer work
            # row by row there: computing only those two rows gives the same logits for less work.
            pair = torch.stack([batch["subj_pos"], batch["obj_pos"]], dim=1).long()
            out = self.adapter(tapped, mask, positions=pair)
            subj, obj = torch.zeros_like(pair[:, 0]), torch.ones_like(pair[:, 1])
            return self.head(take_rows(last, pair), out, subj, obj)
        out = self.adapter(tapped, mask)
        if self.head_type == "lin_pointer":
            return self.head(last, out, batch.get("candidates", mask))
        return self.head(last, out, mask)
