"""The knowledge probe's step selects the masked rows with index tensors built on the host by the
collate function: no boolean-mask indexing (a device sync per use) in the step, the same loss and
predictions as the boolean mask gives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kadapter_cli.modeling.backbone import load_backbone
from kadapter_cli.modeling.probe_model import ProbeModel
from kadapter_cli.training.objectives import MaskedLMObjective


class _SyncingOps(TorchDispatchMode):
    """Records the ops that wait for the device to count: nonzero, and indexing by a boolean mask."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        # aten.index / index_put take (tensor, [indices], ...): a boolean index is a mask.
        indices = args[1] if name.startswith(("aten.index.", "aten.index_put")) and len(args) > 1 else []
        if name.startswith(("aten.nonzero.", "aten.masked_select.")) or any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            self.found.append(name)
        return func(*args, **kwargs)


def _model_and_batch(tiny_backbone):
    backbone = load_backbone(tiny_backbone).eval()
    torch.manual_seed(0)
    model = ProbeModel(backbone, {}, backbone.config.hidden_size, backbone.config.vocab_size)
    objective = MaskedLMObjective(1, 4, backbone.config.vocab_size)
    examples = [{"input_ids": list(range(5, 5 + n)), "maskable": list(range(1, n - 1))} for n in (12, 7, 20)]
    torch.manual_seed(1)
    return model, objective, objective.collate(examples)


def test_the_probe_step_indexes_no_boolean_mask_and_keeps_its_loss(tiny_backbone):
    model, objective, batch = _model_and_batch(tiny_backbone)
    recorder = _SyncingOps()
    with recorder:
        loss = objective.loss(model, batch)
        outputs = objective.predict(model, batch)
    assert recorder.found == []
    # What the boolean mask gives, computed apart.
    logits = model({k: v for k, v in batch.items() if k != "rows"})
    expected = F.cross_entropy(logits.float(), batch["labels"][batch["valid"]])
    assert torch.equal(loss, expected)
    hits = (logits.argmax(-1) == batch["labels"][batch["valid"]]).long()
    per_example = torch.zeros(batch["valid"].shape, dtype=torch.long)
    per_example[batch["valid"]] = hits
    assert outputs == list(zip(per_example.sum(-1).tolist(), batch["valid"].sum(-1).tolist()))
