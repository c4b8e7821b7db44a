"""The benchmark's model and data: a RoBERTa-large-deep, narrow backbone, the paper's adapter scaled
to it, T-REx-like examples, the product's training step, and the FLOP formulas.

Shape: RoBERTa-large's depth (24 layers, taps 0, 11, 22) at a width that fits a 2-core CPU
(hidden 256, 4 heads, FFN 1024), RoBERTa's vocabulary (50,265) and max_length 64 (fac pretraining).
The adapter follows `AdapterConfig.for_backbone`, the product's rule that gives the paper's adapter
on RoBERTa-large: width 3/4 of the backbone's (192), 64-wide heads (3), FFN 4× (768), 2 layers per
tap. The backbone is built in-process from a `RobertaConfig` with random weights: speed does not
depend on the values, and nothing is downloaded.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

PAD_ID, BOS_ID, EOS_ID = 1, 0, 2  # RoBERTa's <pad>, <s>, </s>
TREX_MEAN_TOKENS = 22.8  # paper §3.3: average T-REx-rc sentence length
NUM_RELATIONS = 410  # the original code's relation list (microsoft/K-Adapter)
_TREX_GAMMA_SCALE = 5.53  # with k = 4 and the cut to [8, 64]: mean 22.8


@dataclass(frozen=True)
class BenchShape:
    """Backbone and batch shape of the benchmark (reported under "shape")."""

    layers: int = 24
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    vocab: int = 50265
    max_length: int = 64
    batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_backbone(shape: BenchShape, seed: int = 0) -> nn.Module:
    """A randomly initialised `RobertaModel` of `shape`, SDPA attention, in eval mode."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                           num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                           max_position_embeddings=shape.max_length + 2, pad_token_id=PAD_ID,
                           bos_token_id=BOS_ID, eos_token_id=EOS_ID, attn_implementation="sdpa")
    return RobertaModel(config, add_pooling_layer=False).eval()


def adapter_config(backbone: nn.Module, kind: str = "fac", arc_dim: int | None = None):
    """The product's default adapter for this backbone (fac: a relation head over 410 labels; lin:
    the pointer head, `arc_dim` wide when given, as `train-adapter --arc-dim` records it)."""
    from kadapter_cli.modeling.adapter import AdapterConfig
    from kadapter_cli.modeling.backbone import backbone_shape

    if kind == "fac":
        labels = [f"P{i}" for i in range(NUM_RELATIONS)]
        head = {"type": "relation", "num_labels": NUM_RELATIONS, "com_dense": True}
    else:
        labels, head = [], {"type": "lin_pointer", "com_dense": True}
        if arc_dim is not None:
            head["arc_dim"] = arc_dim
    shape = backbone_shape(backbone)
    return AdapterConfig.for_backbone(shape, kind, name=kind, labels=labels, head=head, max_length=64)


def trex_like_lengths(n: int, max_length: int, seed: int) -> list[int]:
    """`n` sequence lengths in sub-tokens shaped like T-REx-rc, in a seeded random order.

    A gamma distribution (k = 4, θ = 5.53) cut to [8, max_length] has mean 22.8 at max_length 64
    (8 = a shortest sentence with its four markers, <s> and </s>). The `n` lengths are its
    quantiles (i + ½)/n, read off a large sample, so even a small `n` has the distribution's mean.
    """
    rng = random.Random(seed)
    pool: list[int] = []
    while len(pool) < 20_000:
        length = round(rng.gammavariate(4.0, _TREX_GAMMA_SCALE))
        if 8 <= length <= max_length:
            pool.append(length)
    pool.sort()
    lengths = [pool[int((i + 0.5) * len(pool) / n)] for i in range(n)]
    rng.shuffle(lengths)
    return lengths


def fac_examples(lengths: Sequence[int], vocab: int, seed: int) -> list[dict]:
    """Encoded fac examples (what `encoding.encode_relation` yields, plus `label`) of these lengths."""
    rng = random.Random(seed)
    examples = []
    for length in lengths:
        body = [rng.randrange(3, vocab) for _ in range(length - 2)]
        subj, obj = sorted(rng.sample(range(1, length - 1), 2))
        examples.append({"input_ids": [BOS_ID, *body, EOS_ID], "subj_pos": subj, "obj_pos": obj,
                         "label": rng.randrange(NUM_RELATIONS)})
    return examples


def lin_examples(lengths: Sequence[int], vocab: int, seed: int) -> list[dict]:
    """Encoded lin examples (what `encoding.encode_dependency` yields) of these lengths: about three
    words in four sub-tokens start a word, each word's head is `<s>` (the root, 0) or another word's start."""
    rng = random.Random(seed)
    examples = []
    for length in lengths:
        body = [rng.randrange(3, vocab) for _ in range(length - 2)]
        starts = [p for p in range(1, length - 1) if p == 1 or rng.random() < 0.75]
        targets = [-100] * length  # IGNORE_INDEX: positions that are not a word's start
        for position in starts:
            targets[position] = rng.choice([0, *(p for p in starts if p != position)])
        examples.append({"input_ids": [BOS_ID, *body, EOS_ID], "word_starts": starts, "head_targets": targets})
    return examples


def padded_to(examples: Sequence[dict], length: int) -> list[dict]:
    """The same examples padded with <pad> to `length` tokens (the original code's pad-to-max-length)."""
    return [{**ex, "input_ids": ex["input_ids"] + [PAD_ID] * (length - len(ex["input_ids"]))} for ex in examples]


# ---------------------------------------------------------------- models


def adapter_pretrainer(backbone: nn.Module | None, config) -> nn.Module:
    """The product's fac pretraining model: frozen backbone + `KnowledgeAdapter` + relation head."""
    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.modeling.heads import build_head
    from kadapter_cli.modeling.pretrainer import AdapterPretrainer

    torch.manual_seed(1)
    return AdapterPretrainer(backbone, KnowledgeAdapter(config), build_head(config.head, config.backbone_hidden_size),
                             "relation")


class FullFinetune(nn.Module):
    """The baseline: every backbone weight trains (dropout on), with a relation head on its last state."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        from kadapter_cli.modeling.heads import RelationHead

        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(True)
        self.head = RelationHead(backbone.config.hidden_size, num_labels)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        last = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self.head(last, batch["subj_pos"], batch["obj_pos"])


class TrainStep:
    """One optimizer step as `kadapter_cli.training.loop` takes it: Accelerate's autocast and backward,
    AdamW over the parameters that require grad (the loop's own `_adamw`), gradient clipping at 1.0,
    `zero_grad(set_to_none=True)`. The learning-rate schedule (one multiply) is left out."""

    def __init__(self, model: nn.Module, objective, lr: float = 2e-5, device: str = "cpu", precision: str = "fp32"):
        from kadapter_cli.training.config import TrainConfig
        from kadapter_cli.training.setup import adamw as _adamw
        from kadapter_cli.training.setup import make_accelerator

        config = TrainConfig(device=device, lr=lr, precision=precision)
        self.accelerator = make_accelerator(config)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = _adamw(named, config)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.trainable = [p for _, p in named]
        self.objective = objective

    def __call__(self, batch: dict[str, Any]) -> float:
        from accelerate.utils import send_to_device

        # As the loop does (a no-op on the CPU; a copy from pinned memory overlaps the device's work).
        batch = send_to_device(batch, self.accelerator.device, non_blocking=self.accelerator.device.type == "cuda")
        self.model.train()
        with self.accelerator.autocast():
            loss = self.objective.loss(self.model, batch)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())  # waits for the device: a timed step ends when its work does

    def steps(self, examples: Sequence[dict], batches: Sequence[Sequence[int]]) -> list[Callable[[], None]]:
        """One callable per batch of an epoch (collation, the cache's gather included), to be timed
        step by step beside another member (`timing.interleaved_steps`).

        One step on the first batch runs here, as warm-up: a whole untimed epoch would double the cost.
        """
        self(self.objective.collate([examples[i] for i in batches[0]]))
        return [lambda indices=indices: self(self.objective.collate([examples[i] for i in indices]))
                for indices in batches]


# ---------------------------------------------------------------- FLOPs


def layer_flops(tokens: int, seq_len: int, width: int, ffn: int) -> float:
    """Forward matmul FLOPs of one post-LN transformer layer over `tokens` = batch × seq_len:
    Q, K, V, output projections 4·2·d², FFN 2·2·d·f per token, and QKᵀ plus attention·V 2·2·n·d."""
    return tokens * (8.0 * width**2 + 4.0 * width * ffn + 4.0 * seq_len * width)


def adapter_step_flops(shape: BenchShape, config, batch: int, seq_len: int) -> dict[str, float]:
    """FLOPs of one fac adapter-pretraining step on a (batch, seq_len) padded batch.

    backbone (frozen): forward only = Σ_layers layer_flops;
    adapter (trains): 3 × forward (forward + input and weight gradients); a tap's forward =
        down (2·H·W per token) + layers_per_tap × layer_flops(W, FFN) + up (2·W·H per token),
        except that the last tap computes only the 2 rows the relation head reads in its last
        layer (keys and values 4·W² per token; queries, output, FFN, attention, up-projection per row);
    head (trains): 3 × forward; per example com_dense 2·2H·H on the two marker rows (all the relation
        head reads), dense 2·2H·H and out_proj 2·H·C.
    Embeddings (a lookup), LayerNorm, GELU and softmax are left out: they are not matmuls.
    """
    tokens = batch * seq_len
    backbone = shape.layers * layer_flops(tokens, seq_len, shape.hidden, shape.ffn)
    adapter = 3.0 * adapter_forward_flops(config, shape.hidden, tokens, seq_len, rows=batch * 2)
    h = shape.hidden
    head = 3.0 * batch * (2 * 4.0 * h * h + 4.0 * h * h + 2.0 * h * NUM_RELATIONS)
    return {"backbone_forward": backbone, "adapter_train": adapter, "head_train": head,
            "total": backbone + adapter + head}


def adapter_forward_flops(config, hidden: int, tokens: int, seq_len: int, rows: int) -> float:
    """Forward FLOPs of one adapter over `tokens` = batch × seq_len whose last layer computes only
    `rows` rows (the positions the head reads): see `adapter_step_flops`."""
    h, w, f, depth = hidden, config.adapter_width, config.ffn_size, config.layers_per_tap
    full_tap = tokens * 4.0 * h * w + depth * layer_flops(tokens, seq_len, w, f)
    last_tap = (tokens * 2.0 * h * w + (depth - 1) * layer_flops(tokens, seq_len, w, f) + tokens * 4.0 * w * w
                + rows * (4.0 * w * w + 4.0 * w * f + 4.0 * seq_len * w + 2.0 * w * h))
    return (len(config.tap_layers) - 1) * full_tap + last_tap


def choice_finetune_flops(shape: BenchShape, sequences: int, seq_len: int, adapter_configs: Sequence = ()) -> float:
    """FLOPs of one multiple-choice fine-tuning step on `sequences` = records × candidates padded
    sequences, the backbone trained: 3 × its forward; each frozen adapter 2 × its forward (no weight
    gradients, but input gradients flow through it to the backbone), its last layer on the one row
    the choice head reads; concat fusion and the Linear(H→1) head train (3 ×) on that row only."""
    tokens, h = sequences * seq_len, shape.hidden
    backbone = 3.0 * shape.layers * layer_flops(tokens, seq_len, h, shape.ffn)
    adapters = sum(2.0 * adapter_forward_flops(c, h, tokens, seq_len, rows=sequences) for c in adapter_configs)
    k = len(adapter_configs)
    fusion = 3.0 * sequences * (k * 2.0 * 2 * h * h + 2.0 * k * h * h) if k else 0.0
    return backbone + adapters + fusion + 3.0 * sequences * 2.0 * h


def full_finetune_flops(shape: BenchShape, batch: int, seq_len: int) -> float:
    """FLOPs of one full fine-tuning step: 3 × the backbone's forward, plus the relation head's."""
    tokens = batch * seq_len
    backbone = shape.layers * layer_flops(tokens, seq_len, shape.hidden, shape.ffn)
    head = batch * (4.0 * shape.hidden**2 + 2.0 * shape.hidden * NUM_RELATIONS)
    return 3.0 * (backbone + head)
