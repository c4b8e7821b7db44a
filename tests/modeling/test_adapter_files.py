"""Adapter artifacts: `kadapter_adapter.json` + `kadapter_adapter.safetensors` (+ `kadapter_head.safetensors`) round trips."""

from __future__ import annotations

import json

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, load_adapter, load_config, save_adapter
from kadapter_cli.modeling.backbone import BackboneShape
from kadapter_cli.modeling.heads import build_head

SHAPE = BackboneShape("roberta", 64, 4, 4, "tiny-roberta")


def _config(**overrides) -> AdapterConfig:
    head = {"type": "relation", "num_labels": 3, "dropout": 0.1, "com_dense": True}
    return AdapterConfig.for_backbone(SHAPE, "fac", labels=["P17", "P19", "P27"], head=head, max_length=128, **overrides)


def _trained_like(adapter: KnowledgeAdapter) -> KnowledgeAdapter:
    """Weights far from their init, as after training (so a load that re-initialises shows)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return adapter


def test_config_json_round_trip():
    config = _config()
    text = json.dumps(config.to_dict())
    assert AdapterConfig.from_dict(json.loads(text)) == config
    data = json.loads(text)
    assert data["tap_layers"] == [0, 2, 4] and data["backbone"] == "tiny-roberta" and data["labels"][0] == "P17"


def test_config_refuses_unknown_and_missing_keys_by_name():
    data = _config().to_dict()
    with pytest.raises(BadInput, match="unknown adapter config key.*adapter_size"):
        AdapterConfig.from_dict({**data, "adapter_size": 768})
    del data["tap_layers"]
    with pytest.raises(BadInput, match="lacks key.*tap_layers"):
        AdapterConfig.from_dict(data)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    config = _config()
    adapter = _trained_like(KnowledgeAdapter(config)).eval()
    head = build_head(config.head, 64)
    save_adapter(tmp_path / "fac", adapter, config, head)
    assert sorted(p.name for p in (tmp_path / "fac").iterdir()) == [
        "kadapter_adapter.json", "kadapter_adapter.safetensors", "kadapter_head.safetensors"]

    rng = torch.get_rng_state()
    loaded, loaded_config, head_state = load_adapter(tmp_path / "fac")
    assert torch.equal(rng, torch.get_rng_state())  # loading does not consume randomness
    assert loaded_config == config
    assert set(head_state) == set(head.state_dict())
    assert all(torch.equal(head_state[k], v) for k, v in head.state_dict().items())
    tapped = [torch.randn(2, 5, 64) for _ in config.tap_layers]
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    assert torch.equal(loaded.eval()(tapped, mask), adapter(tapped, mask))
    assert all(p.requires_grad for p in loaded.parameters())


def test_adapter_without_head_has_no_head_file(tmp_path):
    config = _config()
    save_adapter(tmp_path / "a", KnowledgeAdapter(config), config)
    assert not (tmp_path / "a" / "kadapter_head.safetensors").exists()
    assert load_adapter(tmp_path / "a")[2] is None


def test_config_that_disagrees_with_the_weights_names_file_and_keys(tmp_path):
    config = _config()
    save_adapter(tmp_path / "a", KnowledgeAdapter(config), config)
    config_path = tmp_path / "a" / "kadapter_adapter.json"
    data = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**data, "tap_layers": [0, 2]}))
    with pytest.raises(BadInput) as err:
        load_adapter(tmp_path / "a")
    assert "kadapter_adapter.safetensors" in str(err.value)
    assert "unexpected keys adapter.2.down_project.bias" in str(err.value)

    config_path.write_text(json.dumps({**data, "ffn_size": 128}))
    with pytest.raises(BadInput, match=r"shape mismatch adapter\.0\.encoder\.layer\.0\.intermediate\.dense\.bias \[256\] != \[128\]"):
        load_adapter(tmp_path / "a")

    config_path.write_text(json.dumps({**data, "layers_per_tap": 3}))
    with pytest.raises(BadInput, match=r"missing keys adapter\.0\.encoder\.layer\.2\."):
        load_adapter(tmp_path / "a")


def test_unreadable_artifacts_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such adapter folder"):
        load_adapter(tmp_path / "missing")
    config = _config()
    save_adapter(tmp_path / "a", KnowledgeAdapter(config), config)
    (tmp_path / "a" / "kadapter_adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadInput, match="not a readable safetensors file") as err:
        load_adapter(tmp_path / "a")
    assert err.value.path.endswith("kadapter_adapter.safetensors")
    (tmp_path / "a" / "kadapter_adapter.json").write_text('{"name": ')
    with pytest.raises(BadInput, match="malformed JSON"):
        load_config(tmp_path / "a")
