"""The knowledge probe's model: frozen backbone (+ frozen adapters) → one new Linear to the
vocabulary, computed at the masked rows only; and the backbone's own pretrained LM head, for the
baseline row and for `--init-from-lm-head`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import KnowledgeAdapter
from kadapter_cli.modeling.freezing import FreezableModule
from kadapter_cli.modeling.kadapter import KAdapterModel

# ---------------------------------------------------------------- the probe model


# A GPU's matrix units work on tiles: a vocabulary layer of 50,265 rows (RoBERTa's) runs on slower
# kernels than one of 50,304. On CUDA the probe's layer is padded to a multiple of this.
VOCAB_MULTIPLE = 64


class ProbeModel(FreezableModule):
    """Frozen backbone + frozen adapters (+ frozen LM-head transform) → one trainable Linear to the vocabulary.

    `pad_vocab_to`: the Linear gets rows up to a multiple of it (zero, never in the logits, which
    stop at `vocab_size`); `probe_state` gives the weights without them, as saved."""

    def __init__(self, backbone: nn.Module | None, adapters: dict[str, KnowledgeAdapter], hidden: int,
                 vocab_size: int, transform: nn.Module | None = None, pad_vocab_to: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        # The adapters' outputs are read unfused (`encode`); "add" fusion only satisfies the
        # container and has no weights.
        self.body = KAdapterModel(backbone, adapters, "add" if adapters else None, hidden)
        self.body.freeze_backbone()
        self.body.freeze_adapters()
        self.transform = transform
        if transform is not None:
            self.freeze("transform")
        self.adapter_names = list(adapters)
        padded = -(-vocab_size // pad_vocab_to) * pad_vocab_to
        self.mlm = nn.Linear(hidden * (1 + len(adapters)), padded)
        nn.init.normal_(self.mlm.weight, std=0.02)
        nn.init.zeros_(self.mlm.bias)
        if padded != vocab_size:
            with torch.no_grad():
                self.mlm.weight[vocab_size:] = 0

    def probe_state(self) -> dict[str, torch.Tensor]:
        """The weights a probe artifact holds (everything but the backbone), the vocabulary layer
        without its padding rows: the same names and shapes however the layer was padded."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("body.backbone.")}
        if self.mlm.out_features != self.vocab_size:
            for name in ("mlm.weight", "mlm.bias"):
                state[name] = state[name][: self.vocab_size].clone()
        return state

    def features(self, batch: dict[str, Any], states=None) -> torch.Tensor:
        """`[h ; a_1 ; ...]` at the batch's valid `positions`: (N, (1 + k) H), outside inference mode.

        The valid positions are `batch["rows"]`, indices into the flattened (B·P) positions (found on
        the host: no device sync), or, without it, the boolean `batch["valid"]` (B, P).
        `states` = (tapped at `body.tap_layers`, last) computed elsewhere (shared by several probes)."""
        with torch.inference_mode():
            last, outs = self.body.encode(batch["input_ids"], batch["attention_mask"], states, batch["positions"])
            if self.transform is not None:
                last = self.transform(last)
            rows = torch.cat([last, *(outs[n] for n in self.adapter_names)], dim=-1)
            rows = rows.flatten(0, 1).index_select(0, batch["rows"]) if "rows" in batch else rows[batch["valid"]]
        return rows.clone()  # a normal tensor: the Linear's backward saves it

    def forward(self, batch: dict[str, Any], candidates: torch.Tensor | None = None, states=None) -> torch.Tensor:
        """Logits (N, V) at the valid positions only, or (N, |candidates|) over those vocabulary ids."""
        rows = self.features(batch, states).to(self.mlm.weight.dtype)
        if candidates is None:
            logits = self.mlm(rows)
            # Padding rows are excluded: no softmax, loss or argmax sees them.
            return logits if logits.shape[-1] == self.vocab_size else logits[:, : self.vocab_size]
        return F.linear(rows, self.mlm.weight[candidates], self.mlm.bias[candidates])


def load_lm_head(backbone_id: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(the LM head's transform, decoder weight (V, H), decoder bias (V,)) of a backbone that has a
    pretrained masked-LM head; `BadInput` when it has none (e.g. a sentence-embedding checkpoint)."""
    from transformers import AutoModelForMaskedLM

    from kadapter_cli.modeling.backbone import load_pretrained

    try:
        mlm, loading = load_pretrained(AutoModelForMaskedLM.from_pretrained, str(backbone_id), "backbone",
                                        output_loading_info=True)
    except ValueError as e:
        raise BadInput(f"backbone '{backbone_id}' has no masked-LM head class: {e}") from None
    prefix = mlm.base_model_prefix
    missing = [k for k in loading.get("missing_keys", []) if not k.startswith(prefix + ".")]
    heads = [(name, module) for name, module in mlm.named_children() if name != prefix]
    decoder = mlm.get_output_embeddings()
    if missing or len(heads) != 1 or decoder is None:
        raise BadInput(f"backbone '{backbone_id}' has no pretrained LM head (missing {', '.join(missing[:3])})"
                       if missing else f"backbone '{backbone_id}': cannot find its LM head")
    head = heads[0][1]
    weight = decoder.weight.detach().clone()
    bias = (decoder.bias if decoder.bias is not None else torch.zeros(weight.shape[0])).detach().clone()
    decoder_name = next(name for name, module in head.named_modules() if module is decoder)
    parent_name, _, leaf = decoder_name.rpartition(".")
    # What is left of the head without its decoder is the transform (dense, activation, norm).
    setattr(head.get_submodule(parent_name) if parent_name else head, leaf, nn.Identity())
    return head, weight, bias
