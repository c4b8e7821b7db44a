"""The model layer: adapter architecture, backbones, fusion, composition, freezing."""

from __future__ import annotations

import copy

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, count_parameters
from kadapter_cli.modeling.backbone import BackboneShape, backbone_shape, load_backbone, load_tokenizer, tapped_states
from kadapter_cli.modeling.heads import LinOriginalHead, LinPointerHead, RelationHead, TypingHead, build_head
from kadapter_cli.modeling.kadapter import KAdapterModel, check_composable

ROBERTA_LARGE = BackboneShape("roberta", 1024, 24, 16, "roberta-large")


# ---------------------------------------------------------------- adapter architecture


def test_default_adapter_on_roberta_large_matches_the_original_size():
    config = AdapterConfig.for_backbone(ROBERTA_LARGE, "fac")
    assert config.tap_layers == [0, 11, 22]
    assert (config.adapter_width, config.layers_per_tap, config.num_heads, config.ffn_size) == (768, 2, 12, 3072)
    with torch.device("meta"):
        adapter = KnowledgeAdapter(config)
    assert count_parameters(adapter) == 47_251_200
    assert count_parameters(adapter.adapter[0]) == 15_750_400
    assert count_parameters(adapter.adapter[0].encoder.layer[0]) == 7_087_872


@pytest.mark.parametrize("layers, hidden, taps, width, heads", [
    (4, 64, [0, 2, 4], 64, 1),
    (6, 384, [0, 3, 6], 320, 5),
    (12, 768, [0, 6, 11], 576, 9),
])
def test_default_rule_scales_with_the_backbone(layers, hidden, taps, width, heads):
    config = AdapterConfig.for_backbone(BackboneShape("bert", hidden, layers, 4, "b"), "lin")
    assert (config.tap_layers, config.adapter_width, config.num_heads, config.ffn_size) == (taps, width, heads, 4 * width)
    assert config.mask_padding and config.init_std == 0.0002


def test_overrides_are_checked_by_name():
    with pytest.raises(BadInput, match="adapter_widht"):
        AdapterConfig.for_backbone(ROBERTA_LARGE, "fac", adapter_widht=512)
    with pytest.raises(BadInput, match="not a multiple of num_heads"):
        AdapterConfig.for_backbone(ROBERTA_LARGE, "fac", adapter_width=100, num_heads=3)
    with pytest.raises(BadInput, match=r"tap_layers \[30\]"):
        AdapterConfig.for_backbone(ROBERTA_LARGE, "fac", tap_layers=[0, 30])


def test_state_dict_keys_are_the_original_ones():
    config = AdapterConfig.for_backbone(BackboneShape("roberta", 64, 4, 4, "t"), "fac", layers_per_tap=2)
    keys = set(KnowledgeAdapter(config).state_dict())
    layer = "adapter.2.encoder.layer.1."
    assert {
        "adapter.0.down_project.weight", "adapter.2.up_project.bias",
        layer + "attention.self.query.weight", layer + "attention.self.key.bias", layer + "attention.self.value.weight",
        layer + "attention.output.dense.weight", layer + "attention.output.LayerNorm.weight",
        layer + "intermediate.dense.weight", layer + "output.dense.bias", layer + "output.LayerNorm.bias",
    } <= keys
    assert not any(k.startswith("adapter.3.") or ".layer.2." in k for k in keys)


def test_projections_start_near_zero_so_a_fresh_adapter_sums_its_taps():
    # Seeded: the largest deviation depends on the draw (0.006-0.010 over 40 seeds), and unseeded it
    # came from whatever tests ran before (0.0107 once, in a mutation run's order).
    torch.manual_seed(0)
    config = AdapterConfig.for_backbone(BackboneShape("roberta", 64, 4, 4, "t"), "fac")
    adapter = KnowledgeAdapter(config).eval()
    layer = adapter.adapter[0]
    assert layer.down_project.weight.std().item() == pytest.approx(0.0002, rel=0.2)
    assert torch.count_nonzero(layer.up_project.bias) == 0
    tapped = [torch.randn(2, 5, 64) for _ in config.tap_layers]
    # state_k = layer_k(tapped_k + state_{k-1}) with near-identity layers: ≈ the sum of the taps.
    torch.testing.assert_close(adapter(tapped, None), sum(tapped), atol=1e-2, rtol=0)


def test_adapter_encoder_computes_what_hf_bert_encoder_computes():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    config = AdapterConfig.for_backbone(BackboneShape("roberta", 96, 4, 4, "t"), "fac",
                                        adapter_width=64, num_heads=4, ffn_size=128)
    ours = KnowledgeAdapter(config).eval().adapter[0].encoder
    bert_config = BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2,
                             hidden_act="gelu", layer_norm_eps=1e-5)
    bert_config._attn_implementation = "eager"
    reference = BertEncoder(bert_config).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)  # same parameter names
    x = torch.randn(2, 7, 64)
    torch.testing.assert_close(ours(x, None), reference(x).last_hidden_state, atol=1e-5, rtol=1e-5)


def _small_adapter(mask_padding: bool) -> KnowledgeAdapter:
    config = AdapterConfig.for_backbone(BackboneShape("roberta", 64, 4, 4, "t"), "fac", mask_padding=mask_padding)
    torch.manual_seed(0)
    adapter = KnowledgeAdapter(config).eval()
    for p in adapter.parameters():  # projections far from zero, so attention really matters
        torch.nn.init.normal_(p, std=0.2)
    return adapter


def test_masked_padding_does_not_change_outputs_at_real_positions():
    adapter = _small_adapter(mask_padding=True)
    tapped = [torch.randn(1, 6, 64) for _ in range(3)]
    padded = [torch.cat([t, torch.randn(1, 5, 64)], dim=1) for t in tapped]
    short = adapter(tapped, torch.ones(1, 6))
    long = adapter(padded, torch.cat([torch.ones(1, 6), torch.zeros(1, 5)], dim=1))
    torch.testing.assert_close(long[:, :6], short, atol=1e-5, rtol=1e-5)


def test_unmasked_adapter_attends_to_padding_as_the_original():
    adapter = _small_adapter(mask_padding=False)
    tapped = [torch.randn(1, 6, 64) for _ in range(3)]
    padded = [torch.cat([t, torch.randn(1, 5, 64)], dim=1) for t in tapped]
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 5)], dim=1)
    assert not torch.allclose(adapter(padded, mask)[:, :6], adapter(tapped, torch.ones(1, 6)), atol=1e-3)


# ---------------------------------------------------------------- heads


def test_heads_shapes_and_padding_masks():
    h = torch.randn(2, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    assert RelationHead(32, 5)(h, torch.tensor([1, 2]), torch.tensor([3, 0])).shape == (2, 5)
    assert TypingHead(32, 9)(h, torch.tensor([1, 2])).shape == (2, 9)
    assert LinOriginalHead(32, max_length=16)(h, mask).shape == (2, 7, 16)
    scores = LinPointerHead(32, arc_dim=16)(h, mask)
    assert scores.shape == (2, 7, 7)
    floor = torch.finfo(scores.dtype).min
    # Padded candidates and each position itself are ruled out (a finite floor, so no NaN anywhere).
    assert (scores[1, :, 4:] == floor).all() and torch.isfinite(scores).all()
    assert (scores.diagonal(dim1=1, dim2=2) == floor).all()
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert (scores[1, :4, :4][off_diagonal] > floor).all()
    # Candidates restricted to word starts: only those columns stay open.
    word_starts = torch.tensor([[1, 1, 0, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0, 0]])
    restricted = LinPointerHead(32, arc_dim=16)(h, word_starts)
    assert ((restricted > floor) <= word_starts.bool().unsqueeze(1)).all()


def test_relation_head_reads_the_marker_positions():
    head = RelationHead(8, 3).eval()
    h = torch.randn(1, 6, 8)
    logits = head(h, torch.tensor([1]), torch.tensor([4]))
    h2 = h.clone()
    h2[0, [0, 2, 3, 5]] = torch.randn(4, 8)  # everything but the two markers changes
    torch.testing.assert_close(head(h2, torch.tensor([1]), torch.tensor([4])), logits)


def test_pretraining_head_keys_are_the_original_checkpoint_keys():
    fac = build_head({"type": "relation", "num_labels": 410, "com_dense": True}, 1024)
    assert sorted(fac.state_dict()) == sorted(f"{m}.{p}" for m in ("com_dense", "dense", "out_proj") for p in ("weight", "bias"))
    lin = build_head({"type": "lin_original", "max_length": 64, "com_dense": True}, 32)
    assert {"com_dense.weight", "self_attention.self.query.weight", "self_attention.output.LayerNorm.bias",
            "dense.weight", "out_proj.weight"} <= set(lin.state_dict())
    assert lin.state_dict()["out_proj.weight"].shape == (64, 32)
    copy = build_head({"type": "lin_original", "max_length": 64, "com_dense": True}, 32)
    copy.load_state_dict(lin.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), lin.parameters()))
    with pytest.raises(BadInput, match="unknown head type 'pointer'"):
        build_head({"type": "pointer"}, 32)


# ---------------------------------------------------------------- backbones and the composed model


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    return load_backbone(tiny_backbone), load_tokenizer(tiny_backbone)


def _batch(tokenizer, sentences):
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_tiny_backbone_loads_with_sdpa_and_taps_hidden_states(tiny, tiny_backbone):
    backbone, tokenizer = tiny
    assert backbone.config._attn_implementation == "sdpa"
    assert backbone_shape(backbone) == BackboneShape("roberta", 64, 4, 4, str(tiny_backbone))
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    tapped, last = tapped_states(backbone.eval(), ids, mask, [0, 2, 4])
    assert [t.shape for t in tapped] == [(2, ids.shape[1], 64)] * 3
    torch.testing.assert_close(tapped[2], last)  # index 4 = the last layer's output
    with pytest.raises(BadInput, match="outside 0..4"):
        tapped_states(backbone, ids, mask, [0, 5])


def test_byte_level_tokenizer_gets_prefix_space_for_pretokenized_words(tiny):
    _, tokenizer = tiny
    enc = tokenizer(["Paris", "is", "big"], is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"])[1].startswith("Ġ")


def test_uncached_hub_id_is_bad_input_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput, match=r"'kadapter-test/no-such-model' is not a local folder and not in the Hugging Face cache, "
                                   "and HF_HUB_OFFLINE is set"):
        load_backbone("kadapter-test/no-such-model")
    with pytest.raises(BadInput, match="not a Hugging Face model folder"):
        load_backbone("/")


def _model(backbone, fusion="concat", **taps):
    shape = backbone_shape(backbone)
    adapters = {
        "fac": KnowledgeAdapter(AdapterConfig.for_backbone(shape, "fac", **taps.get("fac", {}))),
        "lin": KnowledgeAdapter(AdapterConfig.for_backbone(shape, "lin", **taps.get("lin", {}))),
    }
    return KAdapterModel(backbone, adapters, fusion, shape.hidden_size)


@pytest.mark.parametrize("fusion", ["concat", "add", "gated"])
def test_adapters_with_different_taps_compose_under_every_fusion(tiny, fusion):
    backbone, tokenizer = tiny
    model = _model(backbone, fusion, lin={"tap_layers": [1, 3]}).eval()
    assert model.tap_layers == [0, 1, 2, 3, 4]
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    out = model(ids, mask)
    assert out.shape == (2, ids.shape[1], 64) and torch.isfinite(out).all()
    last, outs = model.encode(ids, mask)
    if fusion == "add":
        torch.testing.assert_close(out, last + outs["fac"] + outs["lin"])
    if fusion == "gated":  # the gate starts at zero: an even mix of the per-adapter projections
        projected = [model.fusion.adapter_dense[n](torch.cat([last, outs[n]], dim=-1)) for n in ("fac", "lin")]
        torch.testing.assert_close(out, (projected[0] + projected[1]) / 2)


@pytest.mark.parametrize("fusion", ["concat", "add", "gated", None])
def test_rows_only_forward_equals_the_full_forward_at_those_rows(tiny, fusion):
    backbone, tokenizer = tiny
    model = _model(backbone, fusion, lin={"tap_layers": [1, 3]}) if fusion else KAdapterModel(backbone, {}, None, 64)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # fresh adapters are near the identity: make them matter
        if not name.startswith("backbone.") and p.ndim == 2:
            torch.nn.init.normal_(p, std=0.3)
    model.eval()
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    positions = torch.tensor([[1, 5, 0], [3, 2, 3]])  # repeated rows and <s> included
    full = model(ids, mask)
    rows = model(ids, mask, positions=positions)
    assert rows.shape == (2, 3, 64)
    # Same values up to float rounding (matmuls over fewer rows sum in another order).
    torch.testing.assert_close(rows, full.gather(1, positions.unsqueeze(-1).expand(-1, -1, 64)), rtol=1e-4, atol=1e-4)
    assert fusion is None or (rows - model(ids, mask)[:, :3]).abs().max() > 1e-3  # the rows really differ


def test_task_model_computes_only_the_marker_rows_with_the_same_logits(tiny):
    from kadapter_cli.modeling.task_model import TaskModel
    from kadapter_cli.tasks import get_task

    backbone, tokenizer = tiny
    body = _model(backbone)
    for name, p in body.named_parameters():
        if name.startswith("adapters.") and p.ndim == 2:
            torch.nn.init.normal_(p, std=0.3)
    head = RelationHead(64, 5)
    model = TaskModel(body, head, get_task("tacred")).eval()
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    batch = {"input_ids": ids, "attention_mask": mask, "subj_pos": torch.tensor([1, 2]), "obj_pos": torch.tensor([4, 1])}
    torch.testing.assert_close(model(batch), head(body(ids, mask), batch["subj_pos"], batch["obj_pos"]), rtol=1e-4, atol=1e-4)


def test_concat_fusion_works_with_one_adapter_and_names_map_to_the_original(tiny):
    backbone, tokenizer = tiny
    shape = backbone_shape(backbone)
    model = KAdapterModel(backbone, {"fac": KnowledgeAdapter(AdapterConfig.for_backbone(shape, "fac"))}, "concat", 64)
    assert {"fusion.adapter_dense.fac.weight", "fusion.task_dense.weight"} <= set(model.state_dict())
    assert model.state_dict()["fusion.task_dense.weight"].shape == (64, 64)
    ids, mask = _batch(tokenizer, ["Paris is big."])
    assert model.eval()(ids, mask).shape == (1, ids.shape[1], 64)


def test_no_adapters_is_the_plain_backbone(tiny):
    backbone, tokenizer = tiny
    model = KAdapterModel(backbone, {}, None, 64).eval()
    ids, mask = _batch(tokenizer, ["Paris is big."])
    torch.testing.assert_close(model(ids, mask), backbone(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_precomputed_features_replace_the_backbone(tiny):
    backbone, tokenizer = tiny
    full = _model(backbone).eval()
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    features = full.backbone_features(ids, mask)
    headless = KAdapterModel(None, dict(full.adapters), "concat", 64).eval()
    headless.fusion.load_state_dict(full.fusion.state_dict())
    torch.testing.assert_close(headless(None, mask, features=features), full(ids, mask))
    # The feature cache stores fp16: the adapters still compute in fp32.
    half = ([t.half() for t in features[0]], features[1].half())
    out = headless(None, mask, features=half)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full(ids, mask), atol=2e-2, rtol=1e-2)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_step(model, tokenizer):
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model(ids, mask).pow(2).mean().backward()
    optimizer.step()


def test_pretraining_step_moves_adapters_and_leaves_the_frozen_backbone_bit_identical(tiny):
    backbone, tokenizer = tiny
    model = _model(copy.deepcopy(backbone))
    model.freeze_backbone()
    before_backbone, before_adapters = _snapshot(model.backbone), _snapshot(model.adapters)
    _train_step(model, tokenizer)
    assert not model.backbone.training and model.adapters.training
    assert all(torch.equal(v, before_backbone[k]) for k, v in model.backbone.state_dict().items())
    changed = [k for k, v in model.adapters.state_dict().items() if not torch.equal(v, before_adapters[k])]
    assert any(k.endswith("up_project.weight") for k in changed) and any(".encoder.layer." in k for k in changed)


def test_finetuning_step_trains_the_backbone_through_frozen_adapters(tiny):
    backbone, tokenizer = tiny
    model = _model(copy.deepcopy(backbone))
    model.freeze_adapters()
    before_backbone, before_adapters = _snapshot(model.backbone), _snapshot(model.adapters)
    _train_step(model, tokenizer)
    assert all(torch.equal(v, before_adapters[k]) for k, v in model.adapters.state_dict().items())
    assert any(not torch.equal(v, before_backbone[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(BadInput, match="no adapter named 'et'"):
        model.freeze_adapters(["et"])


def test_frozen_parts_keep_dropout_off_in_train_mode(tiny):
    backbone, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    model = _model(copy.deepcopy(backbone)).train()
    assert not torch.equal(model(ids, mask), model(ids, mask))  # dropout is on when nothing is frozen
    model.freeze_backbone()
    model.freeze_adapters()
    model.train()
    assert model.fusion.training and not model.adapters["fac"].training and not model.backbone.training
    assert torch.equal(model(ids, mask), model(ids, mask))


def test_keep_dropout_leaves_frozen_adapters_in_train_mode_as_the_original(tiny):
    backbone, tokenizer = tiny
    ids, mask = _batch(tokenizer, ["The river runs past the mill.", "Paris is big."])
    model = _model(copy.deepcopy(backbone))
    model.freeze_backbone()
    model.freeze_adapters(keep_dropout=True)
    model.train()
    assert model.adapters["fac"].training and not any(p.requires_grad for p in model.adapters.parameters())
    assert not torch.equal(model(ids, mask), model(ids, mask))


def test_the_backbone_pooler_no_head_reads_is_not_trainable(tiny):
    # Under DDP a trainable parameter without a gradient stops training at the second step.
    backbone, _ = tiny
    model = _model(copy.deepcopy(backbone))
    assert model.backbone.pooler is not None
    assert not any(p.requires_grad for p in model.backbone.pooler.parameters())
    assert all(p.requires_grad for n, p in model.backbone.named_parameters() if not n.startswith("pooler."))


def test_adapters_from_different_backbones_do_not_compose():
    a = AdapterConfig.for_backbone(ROBERTA_LARGE, "fac")
    b = AdapterConfig.for_backbone(BackboneShape("roberta", 768, 12, 12, "roberta-base"), "lin")
    with pytest.raises(BadInput, match="backbone is roberta-large for 'fac' but roberta-base for 'lin'"):
        check_composable([a, b])
    c = AdapterConfig.for_backbone(BackboneShape("roberta", 768, 24, 12, "roberta-large"), "lin")
    with pytest.raises(BadInput, match="hidden size is 1024 for 'fac' but 768 for 'lin'"):
        check_composable([a, c])
    # Taps may differ, and the same model under another path or hub namespace is the same backbone.
    d = AdapterConfig.for_backbone(BackboneShape("roberta", 1024, 24, 16, "/models/FacebookAI/roberta-large/"), "lin",
                                   tap_layers=[0, 12, 23])
    check_composable([a, d])


def test_adapter_built_for_another_width_is_refused_by_the_model(tiny):
    backbone, _ = tiny
    wide = KnowledgeAdapter(AdapterConfig.for_backbone(BackboneShape("roberta", 128, 4, 4, "x"), "fac"))
    with pytest.raises(BadInput, match="128-wide"):
        KAdapterModel(backbone, {"fac": wide}, "concat", 64)


def test_runs_on_the_packaged_minilm(minilm):
    backbone, tokenizer = load_backbone(minilm), load_tokenizer(minilm)
    shape = backbone_shape(backbone)
    assert (shape.model_type, shape.hidden_size, shape.num_layers) == ("bert", 384, 6)
    config = AdapterConfig.for_backbone(shape, "fac")
    model = KAdapterModel(backbone, {"fac": KnowledgeAdapter(config)}, "concat", 384).eval()
    model.freeze_backbone()
    enc = tokenizer(["Paris", "is", "the", "capital", "of", "France", "."], is_split_into_words=True, return_tensors="pt")
    out = model(enc["input_ids"], enc["attention_mask"])
    assert out.shape == (1, enc["input_ids"].shape[1], 384) and torch.isfinite(out).all()


def test_runs_on_a_deberta_backbone(tmp_path):
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)
    DebertaV2Model(config).save_pretrained(tmp_path / "deberta")
    backbone = load_backbone(tmp_path / "deberta").eval()
    with pytest.raises(BadInput, match="no usable vocabulary"):  # the folder has weights but no tokenizer
        load_tokenizer(tmp_path / "deberta")
    shape = backbone_shape(backbone)
    assert shape.model_type == "deberta-v2"
    model = KAdapterModel(backbone, {"lin": KnowledgeAdapter(AdapterConfig.for_backbone(shape, "lin"))}, "add", 32)
    ids = torch.randint(0, 100, (2, 9))
    assert model.eval()(ids, torch.ones(2, 9, dtype=torch.long)).shape == (2, 9, 32)
