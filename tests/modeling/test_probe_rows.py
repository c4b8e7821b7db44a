"""The knowledge probe's step selects the masked rows with index tensors built on the host by the
collate function: no boolean-mask indexing (a device sync per use) in the step, the same loss and
predictions as the boolean mask gives."""

from __future__ import annotations

import pytest
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


# ---------------------------------------------------------------- the vocabulary layer padded to a multiple of 64


def test_a_padded_vocabulary_layer_gives_the_same_logits_and_saves_as_the_unpadded_one(tiny_backbone, tmp_path):
    from kadapter_cli.modeling.probe_model import VOCAB_MULTIPLE

    model, objective, batch = _model_and_batch(tiny_backbone)
    vocab = model.vocab_size
    padded = ProbeModel(model.body.backbone, {}, model.body.hidden, vocab, pad_vocab_to=VOCAB_MULTIPLE)
    assert VOCAB_MULTIPLE == 64 and padded.mlm.out_features % 64 == 0 and padded.mlm.out_features > vocab
    with torch.no_grad():
        padded.mlm.weight[:vocab] = model.mlm.weight
        padded.mlm.bias[:vocab] = model.mlm.bias
    logits, expected = padded(batch), model(batch)
    assert logits.shape == expected.shape and torch.allclose(logits, expected, atol=1e-6)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))  # predictions identical
    # A padded row never wins, however large: it is not among the logits.
    with torch.no_grad():
        padded.mlm.bias[vocab:] = 1e4
    assert padded(batch).shape[-1] == vocab and torch.equal(padded(batch).argmax(-1), expected.argmax(-1))
    saved, plain = padded.probe_state(), model.probe_state()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in plain.items()}
    assert torch.equal(saved["mlm.weight"], plain["mlm.weight"])


def test_train_probe_pads_the_layer_on_cuda_only(monkeypatch, tmp_path):
    from kadapter_cli.errors import BadInput
    from kadapter_cli.stages import probe as probe_stage
    from kadapter_cli.stages.compose import AdapterSet
    from kadapter_cli.training.config import TrainConfig

    seen = []

    def recording(spec, backbone_id, adapters, seed, backbone_dtype=None, pad_vocab_to=1):
        seen.append(pad_vocab_to)
        raise BadInput("stop")

    monkeypatch.setattr(probe_stage, "build_probe_model", recording)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a line\n")
    spec = probe_stage.ProbeTrainingSpec(out=tmp_path / "p", adapters=AdapterSet([], []), backbone="b", corpus=corpus)
    for cuda, expected in ((False, 1), (True, 64)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
        with pytest.raises(BadInput, match="stop"):
            probe_stage.train_probe(spec, TrainConfig())
        assert seen[-1] == expected
