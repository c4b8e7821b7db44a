"""Model FLOPs (`training/flops.py`) against hand counts on the tiny backbone, for every objective:
fac relation classification, lin dependency heads, the probe's masked LM, and fine-tuning with the
backbone trained, frozen, or replaced by cached features, under each fusion. The training log and
the GPU benchmark use the same counter; peaks are looked up by exact device name.

The hand counts are formulas of the layer sizes, with these rules:
- a Linear over `rows` rows costs 2·rows·in·out forward (`lin`); attention costs 4·B·Lq·Lk·W forward
  (`attn`: Q·Kᵀ and the weights times V); embedding lookups, norms, softmax and losses cost nothing;
- backward: a Linear whose weight trains costs its forward again for the weight's gradient, and again
  when its input needs a gradient (something before it trains); a frozen Linear that gradients flow
  through costs its forward once (the input's gradient); attention's backward is 2 × its forward, or
  2.5 × when a fused kernel computes it (it recomputes the scores: torch's kernels without dropout,
  i.e. frozen parts in eval mode);
- a frozen backbone runs without autograd: forward only, and not at all from cached features.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
from kadapter_cli.modeling.backbone import backbone_shape, backbone_states, load_backbone
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.pretrainer import AdapterPretrainer
from kadapter_cli.modeling.probe_model import ProbeModel
from kadapter_cli.training import flops
from kadapter_cli.training.flops import step_flops
from kadapter_cli.training.objectives import DependencyObjective, MaskedLMObjective, RelationObjective

B, L, C = 3, 10, 5  # sequences, tokens each (no padding: every token is real), labels
N = B * L  # rows of a full pass
V = 50  # the probe's vocabulary
P = 2  # masked positions per sequence (the probe), marker rows per sequence (fac)


def lin(rows: int, n_in: int, n_out: int) -> int:
    return 2 * rows * n_in * n_out


def attn(lq: int, lk: int, width: int) -> int:
    return 4 * B * lq * lk * width


class Sizes:
    """The tiny backbone's and the default adapter's sizes, and the forward FLOPs of their pieces."""

    def __init__(self, backbone):
        shape = backbone_shape(backbone)
        self.H, self.layers, self.F = shape.hidden_size, shape.num_layers, backbone.config.intermediate_size
        self.fac = AdapterConfig.for_backbone(shape, "fac", labels=[str(i) for i in range(C)],
                                              head={"type": "relation", "num_labels": C, "com_dense": True})
        self.lin_kind = AdapterConfig.for_backbone(shape, "lin", head={"type": "lin_pointer", "com_dense": True})
        self.W, self.FA, self.D = self.fac.adapter_width, self.fac.ffn_size, self.fac.layers_per_tap
        self.T = len(self.fac.tap_layers)

    def layer_linears(self, width: int, ffn: int, rows_q: int = N, rows_kv: int = N) -> int:
        """A transformer layer's Linears: Q and the attention output on the query rows, K and V on
        every row, the FFN on the query rows."""
        return 2 * lin(rows_q, width, width) + 2 * lin(rows_kv, width, width) + lin(rows_q, width, ffn) + lin(rows_q, ffn, width)

    def backbone(self) -> int:
        """Forward: every layer on every token, and the pooler on the first token (it runs, unread)."""
        return self.layers * (self.layer_linears(self.H, self.F) + attn(L, L, self.H)) + lin(B, self.H, self.H)

    def backbone_layers(self) -> int:
        return self.layers * (self.layer_linears(self.H, self.F) + attn(L, L, self.H))

    def adapter(self, rows: int | None = None) -> tuple[int, int]:
        """(Linears, attention) of an adapter's forward: T taps of down-projection, D layers and
        up-projection; with `rows` per sequence, the last tap's last layer and up-projection only there."""
        H, W, FA, D, T = self.H, self.W, self.FA, self.D, self.T
        linears = T * (lin(N, H, W) + D * self.layer_linears(W, FA) + lin(N, W, H))
        attention = T * D * attn(L, L, W)
        if rows is not None:
            linears += (self.layer_linears(W, FA, rows_q=B * rows) - self.layer_linears(W, FA)
                        + lin(B * rows, W, H) - lin(N, W, H))
            attention += attn(rows, L, W) - attn(L, L, W)
        return linears, attention


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    backbone = load_backbone(str(tiny_backbone))
    torch.manual_seed(0)
    ids = torch.randint(5, 900, (B, L))
    return backbone, Sizes(backbone), ids, torch.ones(B, L, dtype=torch.long)


def test_fac_relation_classification(tiny):
    backbone, s, ids, mask = tiny
    model = AdapterPretrainer(copy.deepcopy(backbone), KnowledgeAdapter(s.fac), build_head(s.fac.head, s.H),
                              "relation").train()
    batch = {"input_ids": ids, "attention_mask": mask, "subj_pos": torch.tensor([1, 2, 3]),
             "obj_pos": torch.tensor([5, 6, 7]), "labels": torch.tensor([0, 1, 2])}
    counted = step_flops(lambda: RelationObjective(1, s.fac.labels).loss(model, batch).backward())

    linears, attention = s.adapter(rows=P)  # the last layer computes the two marker rows only
    head = lin(B * P, 2 * s.H, s.H) + lin(B, 2 * s.H, s.H) + lin(B, s.H, C)  # com_dense on 2 rows, dense, out_proj
    trained = linears + attention + head
    # Frozen backbone: forward only. Adapter and head: forward + 2 × forward, but the first
    # down-projection reads the backbone's states, which need no gradient.
    assert counted == s.backbone() + 3 * trained - lin(N, s.H, s.W)


def test_lin_dependency_heads(tiny):
    backbone, s, ids, mask = tiny
    model = AdapterPretrainer(copy.deepcopy(backbone), KnowledgeAdapter(s.lin_kind),
                              build_head(s.lin_kind.head, s.H), "lin_pointer").train()
    targets = torch.randint(0, L, (B, L))
    batch = {"input_ids": ids, "attention_mask": mask, "head_targets": targets}
    counted = step_flops(lambda: DependencyObjective(1).loss(model, batch).backward())

    A = min(500, s.H)  # the pointer head's arc width
    linears, attention = s.adapter()
    # com_dense, the two MLPs, dep·W_arc, then (dep·W_arc)·headᵀ over every pair of positions; the
    # head-bias term is a matrix-vector product, which torch does not count (2·N·A, a rounding).
    head = lin(N, 2 * s.H, s.H) + 2 * lin(N, s.H, A) + 2 * N * A * A + 2 * B * L * L * A
    assert counted == s.backbone() + 3 * (linears + attention + head) - lin(N, s.H, s.W)


def test_probe_masked_lm_counts_the_vocabulary_layer_at_masked_rows_only(tiny):
    backbone, s, ids, mask = tiny
    probe = ProbeModel(copy.deepcopy(backbone), {"fac": KnowledgeAdapter(s.fac)}, s.H, V).train()
    labels = torch.randint(0, V, (B, P))
    valid = torch.ones(B, P, dtype=torch.bool)
    rows = valid.flatten().nonzero().squeeze(1)  # as MaskedLMObjective.collate builds them on the host
    batch = {"input_ids": ids, "attention_mask": mask, "positions": torch.tensor([[1, 4], [2, 5], [3, 6]]),
             "valid": valid, "labels": labels, "rows": rows, "targets": labels.flatten()[rows],
             "masked": valid.sum(-1)}
    counted = step_flops(lambda: MaskedLMObjective(1, 4, V).loss(probe, batch).backward())

    linears, attention = s.adapter(rows=P)  # the frozen adapter computes the masked rows in its last layer
    masked = B * P
    # Backbone and adapter frozen, forward only; the vocabulary layer over [h ; a] at the masked
    # rows, forward and its weight's gradient (its input needs none).
    assert counted == s.backbone() + linears + attention + 2 * lin(masked, 2 * s.H, V)
    every_token = s.backbone() + linears + attention + 2 * lin(N, 2 * s.H, V)
    assert counted < every_token


@pytest.mark.parametrize("fusion", ["concat", "add", "gated"])
@pytest.mark.parametrize("backbone_mode", ["trained", "frozen", "cached"])
def test_finetuning_each_fusion_with_the_backbone_trained_frozen_or_cached(tiny, fusion, backbone_mode):
    from kadapter_cli.stages.finetune import build_task_model
    from kadapter_cli.tasks import task_class

    backbone, s, ids, mask = tiny
    task = task_class("openentity")()  # a typing head at the mention marker: the body computes one row
    torch.manual_seed(0)
    adapters = {"fac": KnowledgeAdapter(s.fac), "lin": KnowledgeAdapter(s.lin_kind)}
    model = build_task_model(task, [str(i) for i in range(C)], adapters, fusion, copy.deepcopy(backbone))
    model.body.freeze_adapters()
    batch = {"input_ids": ids, "attention_mask": mask, "mention_pos": torch.tensor([1, 2, 3]),
             "labels": torch.randint(0, 2, (B, C))}
    if backbone_mode != "trained":
        model.body.freeze_backbone()
    if backbone_mode == "cached":
        tapped, last = backbone_states(model.body.backbone, ids, mask, model.body.tap_layers)
        batch["features"] = [*tapped, last]
    model.train()
    counted = step_flops(lambda: task.loss(model(batch), batch).backward())

    H, k, R = s.H, 2, B  # two adapters; R rows through the last layers, the fusion and the head
    linears, attention = s.adapter(rows=1)
    fusion_forward = {"concat": k * lin(R, 2 * H, H) + lin(R, k * H, H), "add": 0,
                      "gated": k * lin(R, 2 * H, H) + lin(R, H, k)}[fusion]
    head = lin(R, H, H) + lin(R, H, C)  # dense, out_proj
    if backbone_mode == "trained":
        # Gradients reach the embeddings: the backbone costs 3 × its layers (the pooler runs once,
        # unread); they flow through the frozen adapters (eval mode: fused attention, 2.5 ×), and
        # every fusion and head input needs its gradient.
        expected = (s.backbone() + 2 * s.backbone_layers()
                    + k * (linears + attention) + k * (linears + 5 * attention // 2)
                    + 3 * fusion_forward + 3 * head)
    else:
        # Nothing before the fusion trains: the fusion's first Linears (over frozen states) get
        # their weights' gradients only; concat's task_dense and the head get both. With `add`
        # (no weights) the head's dense reads frozen states too.
        fusion_backward = {"concat": k * lin(R, 2 * H, H) + 2 * lin(R, k * H, H), "add": 0,
                           "gated": k * lin(R, 2 * H, H) + lin(R, H, k)}[fusion]
        head_backward = 2 * head if fusion != "add" else lin(R, H, H) + 2 * lin(R, H, C)
        expected = ((s.backbone() if backbone_mode == "frozen" else 0) + k * (linears + attention)
                    + fusion_forward + fusion_backward + head + head_backward)
    assert counted == expected


def test_the_training_log_prices_real_tokens_with_the_counted_step(tiny, tmp_path):
    """The loop counts its first step and logs model TFLOP/s = FLOPs per real token × real tokens/s."""
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.loop import train

    backbone, s, ids, _ = tiny
    torch.manual_seed(0)
    model = AdapterPretrainer(copy.deepcopy(backbone), KnowledgeAdapter(s.fac), build_head(s.fac.head, s.H), "relation")
    examples = [{"input_ids": ids[i % B].tolist(), "subj_pos": 1, "obj_pos": 5, "label": i % C} for i in range(2 * B)]
    config = TrainConfig(batch_size=B, max_steps=2, log_every=1, device="cpu", seed=0, lr=1e-3)
    train(model, RelationObjective(1, s.fac.labels), examples, None, config, tmp_path)

    linears, attention = s.adapter(rows=P)
    head = lin(B * P, 2 * s.H, s.H) + lin(B, 2 * s.H, s.H) + lin(B, s.H, C)
    per_token = (s.backbone() + 3 * (linears + attention + head) - lin(N, s.H, s.W)) / N
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "model_tflops" in line]
    assert len(steps) == 2
    for line in steps:
        # Both fields are rounded (tokens/s to 0.1 of a few tokens a second here): within 1 %.
        assert line["model_tflops"] * 1e12 / line["tokens_per_s"] == pytest.approx(per_token, rel=1e-2)
        assert "mfu" not in line  # a CPU has no known peak


# ---------------------------------------------------------------- peaks


def test_peaks_are_looked_up_by_exact_device_name_and_precision():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12  # SXM5
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert flops.peak_flops("NVIDIA H100 NVL", "bf16") == 835.5e12
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "tf32") == 494.5e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert flops.peak_flops("Tesla V100-SXM2-32GB", "fp16") == 125e12
    assert flops.peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # Volta has no bf16
    assert flops.peak_flops("NVIDIA L4", "bf16") == 121e12
    assert flops.peak_flops("NVIDIA H800", "bf16") == 989.5e12  # the H100 SXM's compute
    assert flops.peak_flops("NVIDIA H800", "tf32") == 494.5e12
    assert flops.peak_flops("NVIDIA B200", "bf16") == 2250e12  # 4.5 PFLOPS with sparsity, halved
    assert flops.peak_flops("NVIDIA B200", "tf32") == 1100e12
    assert flops.peak_flops("NVIDIA B200", "fp32") is None  # no per-GPU fp32 figure in the datasheet
    # Not a substring match: an unknown card, or a known one's name inside another, gets nothing.
    assert flops.peak_flops("NVIDIA H100", "bf16") is None
    assert flops.peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None


def test_device_peak_on_cuda_follows_the_precision_and_says_why_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cuda = torch.device("cuda", 0)
    assert flops.device_peak(cuda, "bf16") == (756.5e12, "NVIDIA H100 PCIe, dense bf16 756.5 TFLOP/s")
    matmul = torch.backends.cuda.matmul
    was = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # what torch.set_float32_matmul_precision("high") sets
        assert flops.device_peak(cuda, "fp32")[0] == 378e12
        assert flops.device_peak(cuda, "no")[0] == 378e12  # Accelerate's name for no autocast
        matmul.fp32_precision = "ieee"
        assert flops.device_peak(cuda, "fp32")[0] == 51e12
    finally:
        matmul.fp32_precision = was
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA B200")
    assert flops.device_peak(cuda, "bf16") == (2250e12, "NVIDIA B200, dense bf16 2250 TFLOP/s")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Future GPU")
    peak, why = flops.device_peak(cuda, "bf16")
    assert peak is None and "'NVIDIA Future GPU'" in why and "not in kadapter's table" in why
    assert flops.device_peak(torch.device("cpu"), "bf16")[0] is None
