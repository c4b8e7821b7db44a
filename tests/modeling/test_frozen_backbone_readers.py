"""Pretraining (`AdapterPretrainer`), fine-tuning (`KAdapterModel`) and probing (`ProbeModel`) share
one freeze rule (`FreezableModule`: no gradients, eval mode through every `train()`) and one feature
path (`backbone_states`): the same backbone and taps give each of them the same states."""

from __future__ import annotations

import copy

import pytest
import torch

from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
from kadapter_cli.modeling.backbone import backbone_shape, backbone_states, load_backbone, load_tokenizer
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.kadapter import KAdapterModel
from kadapter_cli.modeling.pretrainer import AdapterPretrainer
from kadapter_cli.modeling.probe_model import ProbeModel


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    backbone = load_backbone(str(tiny_backbone))
    tokenizer = load_tokenizer(str(tiny_backbone))
    batch = tokenizer(["The river runs past the mill.", "Paris is big."], padding=True, return_tensors="pt")
    return backbone, batch["input_ids"], batch["attention_mask"]


def _adapter(backbone, mask_padding=True):
    torch.manual_seed(0)
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", mask_padding=mask_padding,
                                        labels=["P17", "P131"],
                                        head={"type": "relation", "num_labels": 2, "com_dense": True})
    return KnowledgeAdapter(config), config


def _readers(backbone, mask_padding=True):
    adapter, config = _adapter(backbone, mask_padding)
    hidden = backbone_shape(backbone).hidden_size
    pretrainer = AdapterPretrainer(copy.deepcopy(backbone), copy.deepcopy(adapter), build_head(config.head, hidden),
                                   "relation")
    body = KAdapterModel(copy.deepcopy(backbone), {"fac": copy.deepcopy(adapter)}, "concat", hidden)
    body.freeze_backbone()
    body.freeze_adapters()
    probe = ProbeModel(copy.deepcopy(backbone), {"fac": copy.deepcopy(adapter)}, hidden, 50,
                       transform=torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Dropout(0.5)))
    return pretrainer, body, probe


def test_every_reader_keeps_its_frozen_parts_frozen_and_in_eval_mode_through_train(tiny):
    backbone, _, _ = tiny
    pretrainer, body, probe = _readers(backbone)
    frozen = [(pretrainer, pretrainer.backbone), (body, body.backbone), (body, body.adapters["fac"]),
              (probe, probe.body.backbone), (probe, probe.body.adapters["fac"]), (probe, probe.transform)]
    trained = [(pretrainer, pretrainer.adapter), (pretrainer, pretrainer.head), (body, body.fusion), (probe, probe.mlm)]
    for model in (pretrainer, body, probe):
        model.train()
    for model, part in frozen:
        assert not part.training and not any(p.requires_grad for p in part.parameters()), type(model).__name__
    for model, part in trained:
        assert part.training and all(p.requires_grad for p in part.parameters()), type(model).__name__
    pretrainer.backbone = None  # replaced by its cached states: train() still works
    assert pretrainer.train().adapter.training


@pytest.mark.parametrize("mask_padding", [True, False])
def test_every_reader_reads_the_same_backbone_states(tiny, mask_padding):
    backbone, ids, mask = tiny
    pretrainer, body, probe = _readers(backbone, mask_padding)
    taps = body.tap_layers
    assert pretrainer.tap_layers == taps == probe.body.tap_layers
    assert pretrainer.attends_to_padding == body.attends_to_padding == (not mask_padding)
    expected_tapped, expected_last = backbone_states(backbone.eval(), ids, mask, taps, not mask_padding)
    *tapped, last = pretrainer.backbone_features(ids, mask)
    for got_tapped, got_last in ((tapped, last), body.backbone_features(ids, mask),
                                 probe.body.backbone_features(ids, mask)):
        for got, want in zip(got_tapped, expected_tapped, strict=True):
            assert torch.equal(got, want)
        assert torch.equal(got_last, expected_last)
        assert not got_last.requires_grad  # a frozen backbone runs without autograd
    if not mask_padding:  # pad positions numbered as the original: other states than transformers' own
        plain_tapped, _ = backbone_states(backbone, ids, mask, taps, attends_to_padding=False)
        assert not torch.equal(plain_tapped[0], expected_tapped[0])
