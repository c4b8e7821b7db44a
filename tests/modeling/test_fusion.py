"""Fusion (`kadapter_cli.modeling.fusion`): every mode against a hand computation of its formula
(docs/model.md), and the messages a user reads.

The formulas, for a backbone's last hidden state h and adapter outputs a_1 … a_k at one token:

- `concat` (the paper's): p_i = W_i [h ; a_i] + b_i for each adapter, then W [p_1 ; … ; p_k] + b.
- `add`: h + a_1 + … + a_k.
- `gated`: the p_i of `concat`, mixed by g = softmax(W_g h + b_g) over the adapters: Σ g_i p_i.

The expected values below are written out with explicit matrix products on small fixed tensors,
reading only the modules' parameters, never their code. Each projection's two halves of W_i are
applied to h and a_i separately, so the test tells [h ; a_i] from [a_i ; h], a_i from another
adapter's output, and h from any other state.
"""

from __future__ import annotations

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
from kadapter_cli.modeling.backbone import backbone_shape, load_backbone, load_tokenizer
from kadapter_cli.modeling.fusion import AddFusion, ConcatFusion, GatedFusion, make_fusion
from kadapter_cli.modeling.kadapter import KAdapterModel

H = 3
NAMES = ("fac", "lin", "extra")


def _inputs():
    """h and three adapter outputs, (B=2, L=2, H=3) each, all different (small integers and halves)."""
    h = torch.tensor([[[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]],
                      [[2.0, 1.0, 1.0], [-1.5, 0.5, 2.0]]])
    outs = {
        "fac": torch.tensor([[[0.5, 1.0, -1.0], [2.0, -0.5, 0.0]],
                             [[1.0, 1.0, -2.0], [0.0, 0.5, 1.5]]]),
        "lin": torch.tensor([[[-1.0, 0.0, 2.0], [1.0, 1.0, 1.0]],
                             [[0.5, -1.5, 0.0], [3.0, -1.0, -0.5]]]),
        "extra": torch.tensor([[[2.0, 2.0, 0.5], [-0.5, 0.0, -2.0]],
                               [[0.0, -1.0, 1.0], [1.0, 2.0, 0.0]]]),
    }
    return h, outs


def _fixed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter set to seeded values (the gate starts at zero, which hides its formula)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return module.eval()


def _project(layer: torch.nn.Linear, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """W [h ; a] + b, written as W[:, :H] h + W[:, H:] a + b (one token at a time: h, a are (H,))."""
    w, b = layer.weight, layer.bias
    width = h.shape[-1]
    return w[:, :width] @ h + w[:, width:] @ a + b


def _per_token(fn, h: torch.Tensor, outs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`fn(h[b, t], {name: a[b, t]})` at every token, stacked back to (B, L, H)."""
    batch, length, _ = h.shape
    return torch.stack([torch.stack([fn(h[b, t], {n: a[b, t] for n, a in outs.items()}) for t in range(length)])
                        for b in range(batch)])


@pytest.mark.parametrize("names", [NAMES[:1], NAMES[:2], NAMES, ("lin", "fac")])
def test_concat_fusion_is_its_formula_by_hand(names):
    h, outs = _inputs()
    fusion = _fixed(ConcatFusion(H, names), seed=1)

    def by_hand(h_t, a_t):
        projected = [_project(fusion.adapter_dense[n], h_t, a_t[n]) for n in names]  # p_i = W_i [h ; a_i] + b_i
        joined = torch.cat(projected)  # [p_1 ; … ; p_k] in the adapters' order
        return fusion.task_dense.weight @ joined + fusion.task_dense.bias

    with torch.no_grad():
        torch.testing.assert_close(fusion(h, outs), _per_token(by_hand, h, outs))


def test_add_fusion_is_its_formula_by_hand():
    h, outs = _inputs()
    for names in (NAMES[:1], NAMES[:2], NAMES):
        expected = h.clone()
        for n in names:
            expected = expected + outs[n]
        torch.testing.assert_close(AddFusion(names)(h, outs), expected)
    # the numbers themselves, for two adapters at the first token: h + fac + lin
    assert AddFusion(["fac", "lin"])(h, outs)[0, 0].tolist() == [0.5, -1.0, 1.5]


@pytest.mark.parametrize("names", [NAMES[:1], NAMES[:2], NAMES])
def test_gated_fusion_is_its_formula_by_hand(names):
    h, outs = _inputs()
    fusion = _fixed(GatedFusion(H, names), seed=2)

    def by_hand(h_t, a_t):
        projected = [_project(fusion.adapter_dense[n], h_t, a_t[n]) for n in names]
        scores = fusion.gate.weight @ h_t + fusion.gate.bias  # one score per adapter, from h alone
        weights = scores.exp() / scores.exp().sum()
        return sum(w * p for w, p in zip(weights, projected))

    with torch.no_grad():
        torch.testing.assert_close(fusion(h, outs), _per_token(by_hand, h, outs))


def test_a_fresh_gate_mixes_the_projections_evenly():
    h, outs = _inputs()
    fusion = GatedFusion(H, NAMES[:2]).eval()  # default initialisation: the gate is zero
    with torch.no_grad():
        projected = [_per_token(lambda h_t, a_t, n=n: _project(fusion.adapter_dense[n], h_t, a_t[n]), h, outs)
                     for n in NAMES[:2]]
        torch.testing.assert_close(fusion(h, outs), (projected[0] + projected[1]) / 2)


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    return load_backbone(tiny_backbone), load_tokenizer(tiny_backbone)


@pytest.mark.parametrize("mode", ["concat", "add", "gated"])
def test_the_model_fuses_the_backbones_last_state_with_each_adapters_own_output(tiny, mode):
    """Through `KAdapterModel`: h is the backbone's last hidden state (not a tapped layer's: neither
    adapter taps the last layer) and a_i is adapter i's output on its own taps."""
    backbone, tokenizer = tiny
    shape = backbone_shape(backbone)
    taps = {"fac": [0, 1, 2], "lin": [1, 3]}  # the tiny backbone has 4 layers: hidden state 4 is h only
    adapters = {n: KnowledgeAdapter(AdapterConfig.for_backbone(shape, n, tap_layers=t)) for n, t in taps.items()}
    model = KAdapterModel(backbone, adapters, mode, shape.hidden_size)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # fresh adapters are near the identity: make them matter
        if not name.startswith("backbone.") and p.ndim == 2:
            torch.nn.init.normal_(p, std=0.3)
    if mode == "gated":
        torch.nn.init.normal_(model.fusion.gate.bias, std=1.0)
    model.eval()
    enc = tokenizer(["The river runs past the mill.", "Paris is big."], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    with torch.no_grad():
        states = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        h = states[4]
        outs = {n: model.adapters[n]([states[t] for t in taps[n]], mask) for n in taps}
        # what the checks below tell apart: the two adapters' outputs, and h from every other layer's state
        assert (outs["fac"] - outs["lin"]).abs().max() > 0.1
        assert all((h - state).abs().max() > 0.01 for state in states[:4])
        if mode == "add":
            expected = h + outs["fac"] + outs["lin"]
        else:
            fusion = model.fusion
            projected = {n: h @ fusion.adapter_dense[n].weight[:, :64].T + outs[n] @ fusion.adapter_dense[n].weight[:, 64:].T
                         + fusion.adapter_dense[n].bias for n in taps}
            if mode == "concat":
                w = fusion.task_dense.weight
                expected = projected["fac"] @ w[:, :64].T + projected["lin"] @ w[:, 64:].T + fusion.task_dense.bias
            else:
                weights = torch.softmax(h @ fusion.gate.weight.T + fusion.gate.bias, dim=-1)
                expected = weights[..., :1] * projected["fac"] + weights[..., 1:] * projected["lin"]
        torch.testing.assert_close(model(ids, mask), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- messages (found by mutation testing)


def test_unknown_fusion_names_the_known_ones():
    with pytest.raises(BadInput) as caught:
        make_fusion("mean", 8, ["fac"])
    assert str(caught.value) == "unknown fusion 'mean' (known: concat, add, gated)"


def test_fusion_without_adapters_says_so():
    with pytest.raises(BadInput) as caught:
        make_fusion("concat", 8, [])
    assert str(caught.value) == "fusion needs at least one adapter"
