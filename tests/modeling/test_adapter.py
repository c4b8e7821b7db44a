"""Cases found by mutation testing (docs/MUTATION.md) for `kadapter_cli.modeling.adapter`: the default-size rule
at its rounding edges, every refusal of a `kadapter_adapter.json` in full (they reach the user as
`BadInput` naming the file), the parameter counts the manifests report, and the weights file."""

from __future__ import annotations

import json

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import (
    AdapterConfig,
    KnowledgeAdapter,
    count_parameters,
    load_adapter,
    load_config,
    save_adapter,
)
from kadapter_cli.modeling.backbone import BackboneShape

SHAPE = BackboneShape("roberta", 64, 4, 4, "tiny-roberta")


def _config(**overrides) -> AdapterConfig:
    return AdapterConfig.for_backbone(SHAPE, "fac", **overrides)


@pytest.mark.parametrize("layers, hidden, taps, width", [
    (1, 64, [0, 1], 64),          # 11/24 of one layer rounds to 0: the duplicate tap is dropped
    (2, 64, [0, 1, 2], 64),       # 11/24 * 2 = 0.92 rounds up
    (24, 32, [0, 11, 22], 64),    # 3/4 of 32 rounds to 0 multiples of 64: at least 64
    (24, 96, [0, 11, 22], 64),    # 72 → 64
    (24, 128, [0, 11, 22], 128),  # 96 = 1.5 × 64 rounds half up
    (24, 1024, [0, 11, 22], 768),
])
def test_default_taps_and_width_round_half_up(layers, hidden, taps, width):
    config = AdapterConfig.for_backbone(BackboneShape("roberta", hidden, layers, 4, "b"), "fac")
    assert (config.tap_layers, config.adapter_width, config.num_heads, config.ffn_size) == \
        (taps, width, width // 64, 4 * width)
    assert (config.name, config.kind, config.backbone, config.backbone_model_type) == ("fac", "fac", "b", "roberta")
    assert (config.backbone_hidden_size, config.backbone_num_layers) == (hidden, layers)
    assert (config.layers_per_tap, config.dropout, config.layer_norm_eps, config.max_length) == (2, 0.1, 1e-5, 256)
    assert (config.mask_padding, config.marker_style) == (True, "spaced")


def test_a_width_given_alone_keeps_64_wide_heads_and_a_4x_ffn():
    assert (_config(adapter_width=128).num_heads, _config(adapter_width=128).ffn_size) == (2, 512)
    # not a multiple of 64: one head (160 = 2 x 64 + 32 would make 2 floor-divided heads)
    assert (_config(adapter_width=160).num_heads, _config(adapter_width=160).ffn_size) == (1, 640)
    # whole numbers in kadapter_adapter.json
    assert json.loads(json.dumps(_config(adapter_width=128).to_dict()))["num_heads"].__class__ is int
    given = _config(adapter_width=128, num_heads=4, ffn_size=100)
    assert (given.num_heads, given.ffn_size) == (4, 100)
    assert (_config(num_heads=2).adapter_width, _config(ffn_size=7).ffn_size) == (64, 7)
    with pytest.raises(BadInput) as caught:
        _config(adapter_widht=128, tap_layerz=[0])
    assert str(caught.value) == "unknown adapter config field(s): adapter_widht, tap_layerz"


@pytest.fixture
def saved(tmp_path):
    """An adapter folder and a function that rewrites fields of its kadapter_adapter.json."""
    config = _config()
    folder = tmp_path / "fac"
    save_adapter(folder, KnowledgeAdapter(config), config)
    path = folder / "kadapter_adapter.json"
    data = json.loads(path.read_text())

    def write(**fields):
        path.write_text(json.dumps({**data, **fields}))
        return folder

    return write, path


def _refusal(folder) -> str:
    with pytest.raises(BadInput) as caught:
        load_config(folder)
    return str(caught.value)


@pytest.mark.parametrize("fields, problem", [
    ({"tap_layers": []}, "tap_layers is empty"),
    ({"tap_layers": [0, 5, -1, 4]}, "tap_layers [5, -1] are outside 0..4"),
    ({"backbone_hidden_size": 0}, "backbone_hidden_size must be positive (got 0)"),
    ({"adapter_width": 0}, "adapter_width must be positive (got 0)"),
    ({"layers_per_tap": 0}, "layers_per_tap must be positive (got 0)"),
    ({"num_heads": 0}, "num_heads must be positive (got 0)"),
    ({"ffn_size": -3}, "ffn_size must be positive (got -3)"),
    ({"max_length": 0}, "max_length must be positive (got 0)"),
    ({"num_heads": 3}, "adapter_width 64 is not a multiple of num_heads 3"),
    ({"dropout": 1.0}, "dropout must be in [0, 1) (got 1.0)"),
    ({"dropout": -0.1}, "dropout must be in [0, 1) (got -0.1)"),
    ({"marker_style": "bare"}, "marker_style must be one of spaced, original (got 'bare')"),
    ({"marker_style": None}, "marker_style must be one of spaced, original (got None)"),
    ({"tap_layers": [], "dropout": 2, "num_heads": 0},
     "tap_layers is empty; num_heads must be positive (got 0); dropout must be in [0, 1) (got 2)"),
])
def test_each_config_refusal_names_the_file_and_the_problem(saved, fields, problem):
    write, path = saved
    assert _refusal(write(**fields)) == f"{path}: invalid adapter config: {problem}"


def test_the_edges_of_the_valid_ranges_are_accepted(saved):
    write, _ = saved
    config = load_config(write(tap_layers=[0, 4], dropout=0.0, layers_per_tap=1, max_length=1))
    assert (config.tap_layers, config.dropout, config.layers_per_tap, config.max_length) == ([0, 4], 0.0, 1, 1)
    assert load_config(write(num_heads=1, adapter_width=1, ffn_size=1, backbone_hidden_size=1)).num_heads == 1
    # a lin adapter reads no markers: whatever it says, its style is None
    assert load_config(write(kind="lin", marker_style="bare")).marker_style is None


def test_config_keys_and_types_are_refused_by_name(saved):
    write, path = saved
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "zeta": 1, "adapter_size": 2}))
    assert _refusal(path.parent) == f"{path}: unknown adapter config key(s): adapter_size, zeta"
    path.write_text(json.dumps({k: v for k, v in data.items() if k not in ("kind", "name", "dropout")}))
    assert _refusal(path.parent) == f"{path}: adapter config lacks key(s): kind, name"
    path.write_text(json.dumps([data]))
    assert _refusal(path.parent) == f"{path}: an adapter config must be a JSON object, got list"
    assert _refusal(write(tap_layers=["x"])) == \
        f"{path}: invalid adapter config: invalid literal for int() with base 10: 'x'"


def test_a_folder_without_a_config_or_weights_is_refused_by_name(tmp_path, saved):
    with pytest.raises(BadInput) as caught:
        load_config(tmp_path / "nowhere")
    assert str(caught.value) == f"{tmp_path / 'nowhere'}: no such adapter folder"
    write, path = saved
    (path.parent / "kadapter_adapter.safetensors").unlink()
    with pytest.raises(BadInput) as caught:
        load_adapter(path.parent)
    assert str(caught.value) == f"{path.parent / 'kadapter_adapter.safetensors'}: file not found"


def test_many_mismatched_keys_list_eight_and_count_the_rest(saved):
    write, path = saved
    folder = write(layers_per_tap=3)  # 3 taps x 16 tensors of a third layer are missing
    with pytest.raises(BadInput) as caught:
        load_adapter(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'kadapter_adapter.safetensors'}: weights disagree with the config: missing keys ")
    assert message.endswith(" (and 40 more)") and message.count("adapter.") == 8 + 1  # 8 keys and the file name


@pytest.mark.parametrize("extra, listed", [(8, "extra.0, extra.1, extra.2, extra.3, extra.4, extra.5, extra.6, extra.7"),
                                           (9, "extra.0, extra.1, extra.2, extra.3, extra.4, extra.5, extra.6, extra.7 "
                                               "(and 1 more)")])
def test_a_weights_file_with_tensors_the_config_has_no_place_for(saved, extra, listed):
    from safetensors.torch import load_file, save_file

    _, path = saved
    weights = path.parent / "kadapter_adapter.safetensors"
    save_file({**load_file(str(weights)), **{f"extra.{i}": torch.zeros(1) for i in range(extra)}}, str(weights))
    with pytest.raises(BadInput) as caught:
        load_adapter(path.parent)
    assert str(caught.value) == f"{weights}: weights disagree with the config: unexpected keys {listed}"


def test_parameter_counts_count_all_or_only_the_trainable_ones():
    adapter = KnowledgeAdapter(_config())
    total = count_parameters(adapter)
    per_layer = sum(p.numel() for p in adapter.adapter[0].parameters())
    assert total == 3 * per_layer and count_parameters(adapter, trainable_only=True) == total
    for p in adapter.adapter[0].parameters():
        p.requires_grad_(False)
    assert (count_parameters(adapter), count_parameters(adapter, trainable_only=True)) == (total, 2 * per_layer)


def test_the_weight_files_are_plain_pt_safetensors_files(tmp_path):
    from safetensors import safe_open

    from kadapter_cli.modeling.heads import build_head

    config = _config(head={"type": "relation", "num_labels": 3, "dropout": 0.1, "com_dense": True})
    save_adapter(tmp_path / "fac", KnowledgeAdapter(config), config, build_head(config.head, 64))
    for name in ("kadapter_adapter.safetensors", "kadapter_head.safetensors"):
        with safe_open(str(tmp_path / "fac" / name), "pt") as f:
            assert f.metadata() == {"format": "pt"}, name


def test_an_all_padding_row_stays_finite_with_masked_padding():
    adapter = KnowledgeAdapter(_config()).eval()
    tapped = [torch.randn(2, 4, 64) for _ in range(3)]
    out = adapter(tapped, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError) as caught:
        adapter(tapped[:2])
    assert str(caught.value) == "adapter 'fac' needs 3 tapped states, got 2"


@pytest.mark.parametrize("width, heads, ffn, eps", [(64, 2, 96, 1e-3), (48, 3, 40, 0.1)])
def test_the_adapter_layers_compute_what_hf_bert_computes_for_any_shape_and_eps(width, heads, ffn, eps):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    config = _config(adapter_width=width, num_heads=heads, ffn_size=ffn, layer_norm_eps=eps, layers_per_tap=1)
    torch.manual_seed(0)
    ours = KnowledgeAdapter(config).eval().adapter[1].encoder
    for p in ours.parameters():  # far from init, so a LayerNorm's eps shows
        torch.nn.init.normal_(p, std=0.05)
    bert_config = BertConfig(hidden_size=width, num_attention_heads=heads, intermediate_size=ffn, num_hidden_layers=1,
                             hidden_act="gelu", layer_norm_eps=eps)
    bert_config._attn_implementation = "eager"
    reference = BertEncoder(bert_config).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 5, width) * 0.05
    torch.testing.assert_close(ours(x, None), reference(x).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_an_adapter_in_bfloat16_masks_padding_as_in_float32():
    adapter = KnowledgeAdapter(_config()).eval()
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.2)
    tapped = [torch.randn(2, 4, 64) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    full = adapter(tapped, mask)
    half = adapter.to(torch.bfloat16)([t.bfloat16() for t in tapped], mask)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)


def test_a_weights_file_with_missing_and_extra_tensors_lists_both(saved):
    from safetensors.torch import load_file, save_file

    _, path = saved
    weights = path.parent / "kadapter_adapter.safetensors"
    state = load_file(str(weights))
    del state["adapter.1.up_project.bias"]
    save_file({**state, "extra.0": torch.zeros(1)}, str(weights))
    with pytest.raises(BadInput) as caught:
        load_adapter(path.parent)
    assert str(caught.value) == (f"{weights}: weights disagree with the config: missing keys adapter.1.up_project.bias; "
                                 "unexpected keys extra.0")


def _bert_encoder(config: AdapterConfig, encoder) -> "torch.nn.Module":
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    bert_config = BertConfig(hidden_size=config.adapter_width, num_attention_heads=config.num_heads,
                             intermediate_size=config.ffn_size, num_hidden_layers=config.layers_per_tap,
                             hidden_act="gelu", layer_norm_eps=config.layer_norm_eps)
    bert_config._attn_implementation = "eager"
    reference = BertEncoder(bert_config).eval()
    reference.load_state_dict(encoder.state_dict(), strict=True)
    return reference


@pytest.mark.parametrize("taps", [[0, 2, 4], [3]])
def test_each_adapter_layer_adds_its_projected_encoding_to_its_input_and_the_next_reads_the_sum(taps):
    # the paper, §3.1: layer k reads tapped[k] + state_{k-1} and returns its input + up(encoder(down(input)))
    import torch.nn.functional as F

    config = _config(tap_layers=taps, mask_padding=False)
    torch.manual_seed(0)
    adapter = KnowledgeAdapter(config).eval()
    for p in adapter.parameters():  # far from the near-identity init, so every term shows
        torch.nn.init.normal_(p, std=0.1)
    tapped = [torch.randn(2, 5, 64) for _ in taps]
    state = None
    for layer, hidden in zip(adapter.adapter, tapped):
        x = hidden if state is None else hidden + state
        down = F.linear(x, layer.down_project.weight, layer.down_project.bias)
        encoded = _bert_encoder(config, layer.encoder)(down).last_hidden_state
        state = x + F.linear(encoded, layer.up_project.weight, layer.up_project.bias)
    torch.testing.assert_close(adapter(tapped, torch.ones(2, 5)), state, atol=1e-5, rtol=1e-5)
    masked = KnowledgeAdapter(_config(tap_layers=taps))
    masked.load_state_dict(adapter.state_dict())
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    assert torch.isfinite(masked.eval()(tapped, mask)).all()


def test_fresh_projections_are_drawn_around_zero():
    layer = KnowledgeAdapter(_config(init_std=0.01)).adapter[0]
    for proj in (layer.down_project, layer.up_project):  # 4096 weights: the mean of N(0, 0.01) is within 0.002
        assert abs(proj.weight.mean().item()) < 0.002 and proj.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert torch.count_nonzero(proj.bias) == 0


def test_attention_probabilities_are_dropped_in_training_only():
    # as BERT's attention_probs_dropout_prob: with every hidden-state dropout (nn.Dropout) switched off,
    # two training passes still differ, and evaluation passes do not
    adapter = KnowledgeAdapter(_config(dropout=0.5))
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.2)
    adapter.train()
    for module in adapter.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    tapped = [torch.randn(1, 6, 64) for _ in range(3)]
    assert not torch.equal(adapter(tapped), adapter(tapped))
    adapter.eval()
    assert torch.equal(adapter(tapped), adapter(tapped))


def test_an_unrecorded_backbone_fingerprint_reads_as_empty(saved):
    write, _ = saved
    assert load_config(write(backbone_fingerprint=None)).backbone_fingerprint == {}
    assert _config().to_dict()["backbone_fingerprint"] == {}
