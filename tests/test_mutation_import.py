"""Cases found by mutation testing (docs/MUTATION.md) for `import_original`: what is read from the
tensor shapes, what is filled in, and the message for each way a checkpoint can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kadapter_cli.backbone import BackboneShape
from kadapter_cli.errors import BadInput
from kadapter_cli.import_original import import_original, infer_config, read_checkpoint, read_relations

SMALL = BackboneShape(model_type="roberta", hidden_size=32, num_layers=24, num_heads=2, name_or_path="small")
PATH = Path("ckpt.bin")


def small_state(kind: str, width: int = 128, ffn: int = 40, depth: int = 3, layers: int = 2, out_rows: int = 7):
    state = {}
    for i in range(depth):
        state[f"adapter.{i}.down_project.weight"] = torch.zeros(width, 32)
        for j in range(layers):
            state[f"adapter.{i}.encoder.layer.{j}.intermediate.dense.weight"] = torch.zeros(ffn, width)
    state["out_proj.weight"] = torch.zeros(out_rows, 32)
    return state


def test_fac_config_from_shapes_and_the_originals_defaults():
    config = infer_config(small_state("fac"), "fac", "facx", PATH, backbone=SMALL)
    assert (config.name, config.kind, config.backbone, config.backbone_model_type) == ("facx", "fac", "small", "roberta")
    assert (config.backbone_hidden_size, config.backbone_num_layers) == (32, 24)
    assert (config.adapter_width, config.layers_per_tap, config.num_heads, config.ffn_size) == (128, 2, 2, 40)
    assert config.tap_layers == [0, 11, 22]
    assert (config.dropout, config.layer_norm_eps, config.init_std, config.mask_padding) == (0.1, 1e-5, 0.0002, False)
    assert config.labels == [f"rel_{i}" for i in range(7)]
    assert config.head == {"type": "relation", "num_labels": 7, "dropout": 0.1, "com_dense": True}
    assert config.max_length == 256
    named = infer_config(small_state("fac", out_rows=2), "fac", "f", PATH, backbone=SMALL, labels=["P17", "P19"])
    assert named.labels == ["P17", "P19"]


def test_lin_config_reads_its_max_length_from_the_head():
    config = infer_config(small_state("lin", width=32, out_rows=64, depth=2, layers=1), "lin", "lin", PATH,
                          backbone=SMALL, tap_layers=[0, 5])
    assert config.labels == [] and config.max_length == 64 and config.tap_layers == [0, 5]
    assert config.head == {"type": "lin_original", "max_length": 64, "dropout": 0.1, "com_dense": True}
    assert (config.num_heads, config.layers_per_tap) == (1, 1)  # heads are 64 wide, at least one


@pytest.mark.parametrize("change, message", [
    (lambda s: {k: v for k, v in s.items() if not k.startswith("adapter.")},
     "no adapter.{i}.encoder.layer.{j}.* keys (not a K-Adapter checkpoint?)"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("adapter.2.")},
     "the checkpoint has 2 adapter layers but 3 tap layers were given"),
    (lambda s: {k: v for k, v in s.items() if k != "out_proj.weight"},
     "missing key out_proj.weight (not a K-Adapter checkpoint?)"),
    (lambda s: {**s, "adapter.0.down_project.weight": torch.zeros(128, 48)},
     "adapters read 48-wide states, but small is 32 wide"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_with_the_reason(change, message):
    with pytest.raises(BadInput) as caught:
        infer_config(change(small_state("fac")), "fac", "fac", PATH, backbone=SMALL)
    assert str(caught.value) == f"{PATH}: {message}"


def test_relation_count_must_match_the_head():
    with pytest.raises(BadInput) as caught:
        infer_config(small_state("fac"), "fac", "fac", PATH, backbone=SMALL, labels=["P17"])
    assert str(caught.value) == f"{PATH}: the checkpoint classifies 7 relations but 1 relation ids were given"


def test_read_relations_from_json_or_lines(tmp_path):
    (tmp_path / "relations.json").write_text(json.dumps(["P17", "P19"]))
    assert read_relations(tmp_path / "relations.json") == ["P17", "P19"]
    (tmp_path / "relations.txt").write_text("P17\n\n  P31 \n")
    assert read_relations(tmp_path / "relations.txt") == ["P17", "P31"]
    (tmp_path / "bad.json").write_text(json.dumps({"P17": 0}))
    with pytest.raises(BadInput, match="bad.json: expected a JSON list of relation ids"):
        read_relations(tmp_path / "bad.json")
    with pytest.raises(BadInput, match="nope.txt: file not found"):
        read_relations(tmp_path / "nope.txt")


class Thing:
    pass


def test_read_checkpoint_refusals_name_the_reason(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(BadInput, match=r"list.bin: expected a state dict \(a mapping of names to tensors\)"):
        read_checkpoint(tmp_path / "list.bin")
    (tmp_path / "html.bin").write_text("<html>")
    with pytest.raises(BadInput, match=r"html.bin: not a PyTorch checkpoint \(neither a zip archive nor a pickle"):
        read_checkpoint(tmp_path / "html.bin")
    (tmp_path / "cut.bin").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(BadInput, match=r"cut.bin: not a readable PyTorch checkpoint \("):
        read_checkpoint(tmp_path / "cut.bin")

    # A pickled object other than tensors: refused, and the reason names it.
    torch.save({"x": Thing()}, tmp_path / "object.bin")
    with pytest.raises(BadInput) as caught:
        read_checkpoint(tmp_path / "object.bin")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'object.bin'}: refused to load: the file is a pickle that would run code")
    assert "Thing" in message and "Please" not in message and message.endswith("a K-Adapter checkpoint holds only tensors")


def test_import_original_needs_a_checkpoint_and_two_names(tmp_path):
    with pytest.raises(BadInput) as caught:
        import_original(None, None, tmp_path)
    assert str(caught.value) == "give at least one checkpoint (--fac and/or --lin)"
    with pytest.raises(BadInput) as caught:
        import_original(tmp_path / "a.bin", tmp_path / "b.bin", tmp_path, name_fac="k", name_lin="k")
    assert str(caught.value) == (f"the fac and lin adapters would both be written to {tmp_path / 'k'}; "
                                 "give different names")
