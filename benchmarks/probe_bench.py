"""Benchmark of the knowledge probe's training step (`kadapter train-probe`): vocabulary logits at
the masked rows only (the product) against logits at every position (B × L × V, then the masked
rows picked out), on the benchmark backbone with RoBERTa's vocabulary (50,265).

Both members run the same frozen backbone pass under inference mode and one AdamW step of the
masked-LM layer on the same masked batch; they differ only in how many rows meet the vocabulary
matrix. FLOPs of each step are counted by torch's `FlopCounterMode` on one run of it.

Target ≤ 0.60: at the benchmark shape (24 layers, hidden 256, length 64, 15 % masked) the counted
FLOP ratio is 0.51, the frozen backbone pass being common to both; the step time should follow it,
with some room for the fixed costs (AdamW over the V × H layer) that both members pay. The saving
grows with the vocabulary's share of the step, and the logits' memory shrinks to the masked share
(`logits_mib`): at RoBERTa-large's length 512 every-position logits take B × 512 × 50,265 floats.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import timing
from benchmarks.training_bench import entry
from benchmarks.workloads import BOS_ID, EOS_ID, PAD_ID, BenchShape, build_backbone

MASK_ID = 3  # any id of the benchmark's random vocabulary


def _masked_batch(shape: BenchShape, seed: int) -> tuple[dict[str, Any], Any]:
    """Full-length sequences (the probe's corpus is cut into max-length chunks), masked as training does."""
    from kadapter_cli.training.objectives import MaskedLMObjective

    generator = torch.Generator().manual_seed(seed)
    body = shape.max_length - 2
    examples = [{"input_ids": [BOS_ID, *torch.randint(5, shape.vocab, (body,), generator=generator).tolist(), EOS_ID],
                 "maskable": list(range(1, body + 1))} for _ in range(shape.batch_size)]
    objective = MaskedLMObjective(PAD_ID, MASK_ID, shape.vocab)
    return objective.collate(examples, generator), objective


def probe_step(shape: BenchShape, repeats: int, warmup: int = 1, seed: int = 0) -> dict[str, dict[str, Any]]:
    """`probe_step_masked_rows_vs_every_position`: the ratio of step times, with counted FLOPs beside it."""
    from torch.utils.flop_counter import FlopCounterMode

    from kadapter_cli.modeling.probe_model import ProbeModel

    torch.manual_seed(seed)
    model = ProbeModel(build_backbone(shape, seed), {}, shape.hidden, shape.vocab)
    optimizer = torch.optim.AdamW(model.mlm.parameters(), lr=1e-4)
    batch, objective = _masked_batch(shape, seed)
    full_labels = torch.full(batch["input_ids"].shape, -100, dtype=torch.long)
    full_labels.scatter_(1, batch["positions"], batch["labels"])  # padded slots hold -100 and point at row 0

    def masked_rows() -> None:
        objective.loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def every_position() -> None:
        with torch.inference_mode():
            last = model.body.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.mlm(last.clone())  # (B, L, V)
        F.cross_entropy(logits.flatten(0, 1), full_labels.flatten(), ignore_index=-100).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = {}
    for name, step in (("masked_rows", masked_rows), ("every_position", every_position)):
        with FlopCounterMode(display=False) as counter:
            step()
        flops[name] = counter.get_total_flops()
    times = timing.interleaved({"masked_rows": masked_rows, "every_position": every_position}, repeats, warmup)
    ratio = timing.paired_ratio(times["masked_rows"], times["every_position"])
    tokens = int(batch["attention_mask"].sum())
    rows = int(batch["valid"].sum())
    return {"probe_step_masked_rows_vs_every_position": entry(ratio, "<=", 0.60, {
        "batch_size": shape.batch_size, "length": shape.max_length, "tokens": tokens,
        "masked_rows": rows, "vocab": shape.vocab,
        "logits_mib": {"masked_rows": round(rows * shape.vocab * 4 / 2**20, 1),
                       "every_position": round(batch["input_ids"].numel() * shape.vocab * 4 / 2**20, 1)},
        "masked_rows_step": timing.summary(times["masked_rows"]),
        "every_position_step": timing.summary(times["every_position"]),
        "step_gflop": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "flop_ratio": round(flops["masked_rows"] / flops["every_position"], 4),
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, one step of each member",
    })}
