"""The heads (`kadapter_cli.modeling.heads`), with cases found by mutation testing (docs/mutation.md):
the messages a user reads, and head outputs checked by hand. Fusion: test_fusion.py."""

from __future__ import annotations

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.heads import (
    LinOriginalHead,
    LinPointerHead,
    PretrainingHead,
    RelationHead,
    TypingHead,
    build_head,
)

# ---------------------------------------------------------------- heads

def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the pointer head starts at zero, which hides its formula)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return module.eval()


def test_typing_and_relation_heads_compute_their_documented_formula():
    h = torch.randn(2, 5, 6)
    typing = _randomise(TypingHead(6, 3))
    expected = typing.out_proj(typing.dense(h[[0, 1], [3, 1]]))
    torch.testing.assert_close(typing(h, torch.tensor([3, 1])), expected)
    relation = _randomise(RelationHead(6, 4))
    pair = torch.cat([h[[0, 1], [1, 0]], h[[0, 1], [4, 2]]], dim=-1)  # [subject ; object]
    torch.testing.assert_close(relation(h, torch.tensor([1, 0]), torch.tensor([4, 2])),
                               relation.out_proj(relation.dense(pair)))


def test_pointer_head_scores_by_hand():
    head = _randomise(LinPointerHead(4, arc_dim=3, max_distance=2))
    h = torch.randn(1, 5, 4)
    candidates = torch.tensor([[1, 1, 0, 1, 1]])
    scores = head(h, candidates)
    dep, hd = head.dep_mlp(h)[0], head.head_mlp(h)[0]
    floor = torch.finfo(scores.dtype).min
    for i in range(5):
        for j in range(5):
            if i == j or not candidates[0, j]:
                assert scores[0, i, j] == floor
                continue
            distance = max(-2, min(2, j - i))
            expected = dep[i] @ head.arc_weight @ hd[j] + hd[j] @ head.head_bias + head.distance_bias[distance + 2]
            torch.testing.assert_close(scores[0, i, j], expected, atol=1e-5, rtol=1e-5)


def test_pointer_head_mlps_are_dozat_and_manning_s():
    head = LinPointerHead(600)
    assert head.arc_dim == 500 and LinPointerHead(32).arc_dim == 32  # min(500, hidden)
    for mlp in (head.dep_mlp, head.head_mlp):
        assert mlp[1].negative_slope == 0.1 and mlp[2].p == 0.33
    assert head.distance_bias.shape == (65,)  # signed distances -32..32
    assert not head.arc_weight.any() and not head.head_bias.any()  # uniform scores at the start
    h = torch.randn(1, 4, 600)
    # Without candidates every other position may be the head.
    scores = head.eval()(h, None)
    assert (scores[0][~torch.eye(4, dtype=torch.bool)] == 0).all()


def test_lin_original_head_ignores_padding():
    head = _randomise(LinOriginalHead(8, max_length=6))
    h = torch.randn(1, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    changed = h.clone()
    changed[0, 3:] = torch.randn(2, 8) * 10
    torch.testing.assert_close(head(changed, mask)[0, :3], head(h, mask)[0, :3])
    assert not torch.allclose(head(changed, None)[0, :3], head(h, None)[0, :3])


def test_pretraining_head_combines_backbone_and_adapter_then_runs_the_inner_head():
    head = _randomise(build_head({"type": "typing", "num_labels": 3, "com_dense": True}, 4))
    assert isinstance(head, PretrainingHead)
    last, adapter_out = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    combined = head.com_dense(torch.cat([last, adapter_out], dim=-1))
    torch.testing.assert_close(head(last, adapter_out, torch.tensor([0, 2])), head.inner(combined, torch.tensor([0, 2])))


def test_pretraining_head_loads_inside_another_module():
    # The key hooks must respect the prefix: the head as a submodule of a model.
    def model():
        return torch.nn.ModuleDict({"head": build_head({"type": "relation", "num_labels": 2, "com_dense": True}, 4)})

    source, target = _randomise(model(), 1), model()
    state = source.state_dict()
    assert {"head.com_dense.weight", "head.dense.weight", "head.out_proj.bias"} <= set(state)
    target.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), target.parameters()))


@pytest.mark.parametrize("spec, dropout", [
    ({"type": "relation", "num_labels": 2}, 0.1), ({"type": "typing", "num_labels": 2}, 0.1),
    ({"type": "lin_original", "max_length": 8}, 0.1), ({"type": "lin_pointer"}, 0.33),
    ({"type": "typing", "num_labels": 2, "dropout": 0.2}, 0.2), ({"type": "relation", "num_labels": 2, "dropout": 0.2}, 0.2),
    ({"type": "lin_original", "max_length": 8, "dropout": 0.2}, 0.2), ({"type": "lin_pointer", "dropout": 0.2}, 0.2),
])
def test_build_head_dropout_defaults(spec, dropout):
    head = build_head(spec, 8)
    assert {m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)} == {dropout}


def test_lin_original_head_is_the_original_single_head_block():
    head = build_head({"type": "lin_original", "max_length": 8}, 8)
    assert head.self_attention.self.num_heads == 1
    assert head.self_attention.output.LayerNorm.eps == 1e-5
    assert build_head({"type": "lin_pointer"}, 8).max_distance == 32
    assert not isinstance(build_head({"type": "typing", "num_labels": 2}, 8), PretrainingHead)  # com_dense: off by default


def test_a_nested_head_state_dict_loads_as_it_is():
    # Keys already in the nested form (`inner.*`, as `state_dict(keep_vars)` of the inner module gives) are kept.
    head = _randomise(build_head({"type": "typing", "num_labels": 2, "com_dense": True}, 4))
    nested = {f"inner.{k}": v for k, v in head.inner.state_dict().items()}
    nested.update({f"com_dense.{k}": v for k, v in head.com_dense.state_dict().items()})
    copy = build_head({"type": "typing", "num_labels": 2, "com_dense": True}, 4)
    copy.load_state_dict(nested, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), head.parameters()))


def test_pretraining_head_passes_keyword_arguments_to_the_inner_head():
    head = _randomise(build_head({"type": "typing", "num_labels": 3, "com_dense": True}, 4))
    last, adapter_out = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(head(last, adapter_out, mention_pos=torch.tensor([1, 3])),
                               head(last, adapter_out, torch.tensor([1, 3])))


def test_pointer_head_scores_stay_in_the_autocast_dtype():
    # Under bf16 autocast (`--precision bf16`) the fp32 distance bias must not promote the scores.
    head = _randomise(LinPointerHead(4, arc_dim=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(1, 5, 4), None).dtype == torch.bfloat16


def test_build_head_reads_every_key_of_its_spec():
    pointer = build_head({"type": "lin_pointer", "arc_dim": 6, "max_distance": 3}, 8)
    assert (pointer.arc_dim, pointer.max_distance, pointer.distance_bias.shape) == (6, 3, (7,))
    assert build_head({"type": "lin_original", "max_length": 9}, 8).out_proj.out_features == 9
    assert build_head({"type": "relation", "num_labels": 5}, 8).out_proj.out_features == 5


@pytest.mark.parametrize("spec, message", [
    ({"type": "pointer"}, "unknown head type 'pointer' (known: relation, typing, lin_original, lin_pointer)"),
    ({}, "unknown head type None (known: relation, typing, lin_original, lin_pointer)"),
    ({"type": "relation"}, "head of type 'relation' needs 'num_labels'"),
    ({"type": "lin_original"}, "head of type 'lin_original' needs 'max_length'"),
    ({"type": "typing", "num_labels": 2, "width": 3, "depth": 1}, "unknown key(s) for a typing head: depth, width"),
])
def test_build_head_errors_name_the_problem(spec, message):
    with pytest.raises(BadInput) as caught:
        build_head(spec, 8)
    assert str(caught.value) == message


# ---------------------------------------------------------------- the QA heads


def test_the_choice_head_scores_each_candidates_first_token():
    """CosmosQA's head: dropout (0.1, as RoBERTa's multiple-choice head) then `out_proj` H→1, one
    score per candidate; its weights are named as in the original and Hugging Face."""
    from kadapter_cli.modeling.heads import ChoiceHead

    torch.manual_seed(0)
    head = ChoiceHead(8)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {"out_proj.weight": (1, 8),
                                                                         "out_proj.bias": (1,)}
    assert head.dropout.p == 0.1 and ChoiceHead(8, dropout=0.3).dropout.p == 0.3
    first_token = torch.randn(3, 8)
    head.eval()
    expected = first_token @ head.out_proj.weight[0] + head.out_proj.bias[0]
    torch.testing.assert_close(head(first_token), expected)
    assert head(first_token[:1]).shape == (1,)  # one candidate is still a vector
    head.train()  # dropout drops features in training, and only then
    assert not torch.equal(head(first_token.repeat(50, 1)), expected.repeat(50))


def test_the_span_head_gives_start_and_end_logits_at_every_position():
    from kadapter_cli.modeling.heads import SpanHead

    head = SpanHead(8)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {"qa_outputs.weight": (2, 8),
                                                                         "qa_outputs.bias": (2,)}
    h = torch.randn(2, 5, 8)
    torch.testing.assert_close(head(h), h @ head.qa_outputs.weight.T + head.qa_outputs.bias)
