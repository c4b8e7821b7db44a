"""`load_adapter` returns the adapter in eval mode, as Hugging Face and PEFT return loaded models: two
calls on the same input give the same features (in training mode dropout made them differ)."""

from __future__ import annotations

import torch

from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, load_adapter, save_adapter
from kadapter_cli.modeling.backbone import BackboneShape


def test_a_loaded_adapter_gives_the_same_features_twice(tmp_path):
    shape = BackboneShape("roberta", 64, 4, 4, "tiny")
    config = AdapterConfig.for_backbone(shape, "fac", dropout=0.3)
    torch.manual_seed(0)
    adapter = KnowledgeAdapter(config)
    for p in adapter.parameters():  # weights of a trained adapter, not the near-identity start
        torch.nn.init.normal_(p, std=0.1)
    save_adapter(tmp_path / "fac", adapter, config)

    loaded, _, _ = load_adapter(tmp_path / "fac")
    assert not loaded.training and not any(m.training for m in loaded.modules())
    tapped = [torch.randn(2, 7, 64) for _ in config.tap_layers]
    mask = torch.ones(2, 7, dtype=torch.long)
    first, second = loaded(tapped, mask), loaded(tapped, mask)
    assert torch.equal(first, second)
    again = load_adapter(tmp_path / "fac")[0](tapped, mask)
    assert torch.equal(first, again)
    loaded.train()  # dropout comes back on request
    assert not torch.equal(loaded(tapped, mask), loaded(tapped, mask))
