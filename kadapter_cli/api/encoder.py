"""`KAdapterModel`: the knowledge-infused encoder of the paper, loaded from adapters or a composition.

The paper's K-Adapter output is the backbone's last hidden state and each adapter's output side by
side (concatenated on the feature axis): no fusion layer, so nothing in it is untrained. This
class is the public face of that output; the module that computes it is the K-Adapter body
(`kadapter_cli.modeling.kadapter.KAdapterModel`, built without a fusion), held as `body`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from kadapter_cli.api.features import EncodesText
from kadapter_cli.artifacts.layout import ADAPTER_CONFIG, is_adapter_folder
from kadapter_cli.artifacts.sources import model_folder, source_name
from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.backbone import backbone_shape
from kadapter_cli.modeling.kadapter import KAdapterModel as KAdapterBody
from kadapter_cli.stages.compose import (
    AdapterSet,
    is_composition,
    load_adapters,
    load_matching_backbone,
    read_composition,
)

if TYPE_CHECKING:
    import torch

BACKBONE_PART = "backbone"


class KAdapterModel(EncodesText, nn.Module):
    """A frozen backbone and frozen knowledge adapters, in eval mode; features with `encode`.

    `encode(texts)` gives (N, L, (1 + k)·H) per token — the backbone's last hidden state (H) then
    each of the k adapters' outputs (H each), in the adapters' order — or (N, (1 + k)·H) pooled
    (`pool="cls"` or `"mean"`); `parts=True` gives them apart (`{"backbone": …, "<adapter>": …}`).
    `forward(input_ids, attention_mask)` is the same per-token output for a padded batch.
    """

    def __init__(self, body: KAdapterBody, tokenizer: Any, max_length: int):
        super().__init__()
        if body.fusion is not None:
            raise ValueError("the K-Adapter output has no fusion: build the body with fusion=None")
        self.body = body
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.body.freeze_backbone()
        self.body.freeze_adapters()
        self.eval()

    @classmethod
    def from_pretrained(cls, adapters: str | Path | Sequence[str | Path], backbone: str | Path | None = None,
                        max_length: int | None = None, allow_backbone_mismatch: bool = False) -> "KAdapterModel":
        """The encoder of a composition folder, one adapter folder, or a list of adapter folders.

        `backbone` (a Hugging Face id or folder) defaults to the one the adapters were trained on;
        an adapter that does not fit it, or was trained on other weights (its recorded
        fingerprint), is `BadInput` unless `allow_backbone_mismatch`. `max_length` (sub-tokens a
        text is truncated to) defaults to the longest the adapters were trained with, capped by the
        tokenizer's limit.
        """
        adapter_set = adapter_folders(adapters)
        loaded, configs = load_adapters(adapter_set, allow_backbone_mismatch)
        matching = load_matching_backbone(configs, None if backbone is None else str(backbone),
                                          allow_backbone_mismatch, adapter_set.names)
        body = KAdapterBody(matching.model, loaded, None, backbone_shape(matching.model).hidden_size)
        if max_length is None:
            max_length = max(c.max_length for c in configs)
            limit = getattr(matching.tokenizer, "model_max_length", None)
            if isinstance(limit, int) and 0 < limit < max_length:
                max_length = limit
        return cls(body, matching.tokenizer, max_length)

    # ------------------------------------------------------------ what it computes

    @property
    def adapter_names(self) -> list[str]:
        return list(self.body.adapters)

    @property
    def part_sizes(self) -> dict[str, int]:
        """`{"backbone": H, "<adapter>": H, …}`: the blocks of the feature axis, in order."""
        return {BACKBONE_PART: self.body.hidden, **{name: self.body.hidden for name in self.body.adapters}}

    @property
    def feature_size(self) -> int:
        """D = (1 + k)·H."""
        return sum(self.part_sizes.values())

    def padded_length(self) -> int | None:
        return self.body.padded_length(self.max_length)

    def feature_parts(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        last, outs = self.body.encode(input_ids, attention_mask)
        return {BACKBONE_PART: last, **outs}

    def forward(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor | None" = None) -> "torch.Tensor":
        """input_ids, attention_mask (B, L) → the K-Adapter output (B, L, (1 + k)·H). The batch must be
        padded as `tokenize` pads it when an adapter attends to padding (`padded_length`)."""
        return self.body(input_ids, attention_mask)


def adapter_folders(adapters: str | Path | Sequence[str | Path]) -> AdapterSet:
    """The adapters a source names: a composition folder (its adapters, in order), an adapter folder,
    or a list of adapter folders (named by their folder names); each may be a Hub repository id
    (named by the repository's name)."""
    sources = [adapters] if isinstance(adapters, (str, Path)) else list(adapters)
    if not sources:
        raise BadInput("no adapters given: pass a composition folder, an adapter folder or a list of them")
    folders = [model_folder(s) for s in sources]
    if len(folders) == 1 and is_composition(folders[0]):
        return read_composition(folders[0])
    for folder in folders:
        if not is_adapter_folder(folder):
            what = "a finetuned model: load it with KAdapterForTask" if (folder / "model.safetensors").is_file() \
                else f"not an adapter folder (no {ADAPTER_CONFIG})" + (" nor a composition" if len(folders) == 1 else "")
            raise BadInput(what, folder)
    names = [source_name(s) for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"two adapters share the folder name '{twice[0]}': each adapter is named by its folder")
    return AdapterSet(names, folders)
