"""The floors under the CPU ratios: what each ratio of `benchmarks/run.py` could reach if the code
around the unavoidable work cost nothing, measured in one run on the benchmark's own shapes.

    python benchmarks/floors.py --quick          # about 2 minutes on a 2-core CPU
    python benchmarks/run.py --quick --only floors

Each floor times the parts a ratio's numerator cannot skip, interleaved with its denominator
(`timing.interleaved`, medians of paired ratios):

- `adapter_step_vs_full_finetune`: an adapter step runs the frozen backbone's forward and trains the
  adapter and head on its states. `backbone_forward_share` (the forward alone over a full fine-tuning
  step) is the floor of a step whose adapter costs nothing; `parts_sum` adds the adapter's training
  fed with precomputed states (what the step is made of, with no glue).
- `cached_epoch_vs_uncached`: a cached step trains the adapter on stored states; its floor is that
  training alone (states already in tensors, no gather) over the uncached step, at the cache
  benchmark's batch size.
- `bucketed_vs_padded`: a step's time is fitted as `fixed + per_token × tokens` from steps at the
  shortest and the longest padded length; the floor is the bucketed epoch's padded tokens under that
  fit, over the padded epoch's (the fixed part, optimizer and launch costs, does not shrink with
  length).
- `composed_inference_vs_backbone`: 1 + (the adapters' and the fusion's forward on precomputed
  states) / (the backbone's forward), on the inference benchmark's batches: the ratio with no glue.
- `mfu`: the dense-matmul rate at the shapes one backbone layer multiplies during the adapter step
  (tokens × hidden by hidden × 3·hidden, hidden, FFN, and FFN back), over the rate of the
  n × n matmul the MFU ratio divides by (`gemm_rate_ceiling`), times the share of the adapter step's
  time spent in matmuls (`matmul_time_share`, from torch's profiler: dropout's masks, GELU,
  LayerNorm and softmax are the model's work too, but count no FLOPs): `ceiling`. Beside it,
  `bernoulli_time_share`: the share spent drawing dropout's random masks (`aten::bernoulli_`).

`cached_epoch_vs_uncached` also reports `gather_and_collate_ms`: what a cached step adds to the
training on states, gathering the batch's rows from the product's in-memory feature cache and
collating them, and its share of a cached step.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    PAD_ID,
    BenchShape,
    FullFinetune,
    TrainStep,
    adapter_config,
    adapter_pretrainer,
    build_backbone,
    fac_examples,
    trex_like_lengths,
)


def _objective(config, pad_to: int | None = None):
    from kadapter_cli.training.objectives import RelationObjective

    return RelationObjective(PAD_ID, config.labels, pad_to)


def _with_features(pretrainer: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with the frozen backbone's states attached, as a cached batch carries them."""
    with torch.no_grad():
        return {**batch, "features": pretrainer.backbone_features(batch["input_ids"], batch["attention_mask"])}


def adapter_step_floor(shape: BenchShape, repeats: int, warmup: int) -> dict[str, Any]:
    """The adapter step's parts against a full fine-tuning step, on the adapter-step benchmark's batch."""
    backbone = build_backbone(shape, 0)
    config = adapter_config(backbone)
    objective = _objective(config)
    batch = objective.collate(fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, 0), shape.vocab, 0))
    pretrainer = adapter_pretrainer(backbone, config)
    adapter_only = adapter_pretrainer(None, config)
    featured = _with_features(pretrainer, batch)
    steps = {"full_finetune_step": TrainStep(FullFinetune(copy.deepcopy(backbone), 410), objective),
             "adapter_step": TrainStep(pretrainer, objective), "adapter_training": TrainStep(adapter_only, objective)}

    def forward() -> None:
        with torch.no_grad():
            pretrainer.backbone_features(batch["input_ids"], batch["attention_mask"])

    times = timing.interleaved({"backbone_forward": forward,
                                "full_finetune_step": lambda: steps["full_finetune_step"](batch),
                                "adapter_step": lambda: steps["adapter_step"](batch),
                                "adapter_training": lambda: steps["adapter_training"](featured)}, repeats, warmup)
    full = times["full_finetune_step"]
    forward_share = timing.paired_ratio(times["backbone_forward"], full)
    training_share = timing.paired_ratio(times["adapter_training"], full)
    return {"value": round(timing.paired_ratio(times["adapter_step"], full), 4),
            "backbone_forward_share": round(forward_share, 4), "adapter_training_share": round(training_share, 4),
            "parts_sum": round(forward_share + training_share, 4),
            "padded_length": int(batch["input_ids"].shape[1]), "batch_size": shape.batch_size,
            **{name: timing.summary(t) for name, t in times.items()}}


def cached_floor(shape: BenchShape, repeats: int, warmup: int) -> dict[str, Any]:
    """Adapter training on states already in tensors over the uncached step, at `shape.batch_size`;
    beside them, what a cached step adds to that training: gathering the batch's rows from the
    product's feature cache (in memory, as on a CPU) and collating them (`gather_and_collate`)."""
    import tempfile

    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import attach_backbone_cache

    backbone = build_backbone(shape, 0)
    config = adapter_config(backbone)
    objective = _objective(config)
    examples = fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, 0), shape.vocab, 0)
    batch = objective.collate(examples)
    uncached = TrainStep(adapter_pretrainer(backbone, config), objective)
    cached = TrainStep(adapter_pretrainer(None, config), objective)
    featured = _with_features(adapter_pretrainer(backbone, config), batch)
    in_cache = [dict(ex) for ex in examples]
    with tempfile.TemporaryDirectory(prefix="kadapter-floors-") as tmp:
        attach_backbone_cache(adapter_pretrainer(backbone, config), {"train": in_cache}, PAD_ID,
                              TrainConfig(device="cpu", batch_size=shape.batch_size), Path(tmp), torch.device("cpu"),
                              mode="on", budget_gib=8.0)
    times = timing.interleaved({"uncached_step": lambda: uncached(batch), "training_on_states": lambda: cached(featured),
                                "gather_and_collate": lambda: objective.collate(in_cache)}, repeats, warmup)
    gather = timing.median(times["gather_and_collate"])
    return {"floor": round(timing.paired_ratio(times["training_on_states"], times["uncached_step"]), 4),
            "batch_size": shape.batch_size, "gather_and_collate_ms": round(gather * 1e3, 2),
            # a cached step = its training + the gather and collation: the share the gather takes of it
            "gather_and_collate_share_of_cached_step": round(
                gather / (gather + timing.median(times["training_on_states"])), 4),
            **{name: timing.summary(t) for name, t in times.items()}}


def bucket_floor(shape: BenchShape, repeats: int, warmup: int, bucket_size: int = 100) -> dict[str, Any]:
    """The bucketed/padded ratio a step time of `fixed + per_token × tokens` allows (see the module doc)."""
    from kadapter_cli.training.batching import epoch_batches

    n_examples = bucket_size * shape.batch_size  # one bucket pool, as the bucketing benchmark's epoch
    backbone = build_backbone(shape, 0)
    config = adapter_config(backbone)
    lengths = trex_like_lengths(n_examples, shape.max_length, 0)
    examples = fac_examples(lengths, shape.vocab, 0)
    short = min(lengths)
    step = TrainStep(adapter_pretrainer(backbone, config), _objective(config))
    pick = sorted(range(n_examples), key=lambda i: lengths[i])[:shape.batch_size]
    at = {"shortest": step.objective.collate([examples[i] for i in pick]),
          "longest": _objective(config, pad_to=shape.max_length).collate([examples[i] for i in pick])}
    times = timing.interleaved({name: (lambda b=b: step(b)) for name, b in at.items()}, repeats, warmup)
    t_short, t_long = timing.median(times["shortest"]), timing.median(times["longest"])
    per_token = (t_long - t_short) / (shape.batch_size * (shape.max_length - short))
    fixed = t_short - per_token * shape.batch_size * short
    batches = epoch_batches(lengths, shape.batch_size, 0, epoch=0, bucket_size=bucket_size)
    bucketed = sum(fixed + per_token * len(b) * max(lengths[i] for i in b) for b in batches)
    padded = sum(fixed + per_token * len(b) * shape.max_length for b in batches)
    tokens = sum(len(b) * max(lengths[i] for i in b) for b in batches) / (n_examples * shape.max_length)
    return {"floor": round(bucketed / padded, 4), "token_ratio": round(tokens, 4),
            "fixed_s": round(fixed, 4), "per_token_ms": round(per_token * 1e3, 4),
            "fixed_share_of_padded_step": round(fixed / (fixed + per_token * shape.batch_size * shape.max_length), 4),
            "shortest_length": short, **{name: timing.summary(t) for name, t in times.items()}}


def composed_floor(shape: BenchShape, n_examples: int, repeats: int, warmup: int) -> dict[str, Any]:
    """1 + (adapters and fusion on precomputed states) / (backbone forward), inference, fac + lin, concat."""
    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.modeling.kadapter import KAdapterModel
    from kadapter_cli.training.batching import sequential_batches

    backbone = build_backbone(shape, 0)
    torch.manual_seed(2)
    adapters = {kind: KnowledgeAdapter(adapter_config(backbone, kind)) for kind in ("fac", "lin")}
    body = KAdapterModel(backbone, adapters, "concat", shape.hidden).eval()
    lengths = trex_like_lengths(n_examples, shape.max_length, 0)
    examples = fac_examples(lengths, shape.vocab, 0)
    objective = _objective(adapter_config(backbone))
    batches = [objective.collate([examples[i] for i in b]) for b in sequential_batches(lengths, shape.batch_size)]
    with torch.inference_mode():
        featured = [(b, body.backbone_features(b["input_ids"], b["attention_mask"]),
                     torch.stack([b["subj_pos"], b["obj_pos"]], dim=1).long()) for b in batches]

    def backbone_only() -> None:
        with torch.inference_mode():
            for b, _, _ in featured:
                body.backbone_features(b["input_ids"], b["attention_mask"])

    def adapters_and_fusion() -> None:
        with torch.inference_mode():
            for b, features, pair in featured:
                body(None, b["attention_mask"], features=features, positions=pair)

    times = timing.interleaved({"backbone_forward": backbone_only, "adapters_and_fusion": adapters_and_fusion},
                               repeats, warmup)
    extra = timing.paired_ratio(times["adapters_and_fusion"], times["backbone_forward"])
    return {"floor": round(1 + extra, 4), "batch_size": shape.batch_size, "batches": len(batches),
            **{name: timing.summary(t) for name, t in times.items()}}


def matmul_floor(shape: BenchShape, tokens: int, repeats: int, warmup: int, matmul_n: int) -> dict[str, Any]:
    """The dense-matmul rate at one backbone layer's shapes for `tokens` rows over the n × n rate."""
    h, f = shape.hidden, shape.ffn
    torch.manual_seed(0)
    shapes = [(tokens, h, 3 * h), (tokens, h, h), (tokens, h, f), (tokens, f, h)]
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    layer_flops = sum(2.0 * m * k * n for m, k, n in shapes)
    big, big_flops = timing.matmul_call(matmul_n)

    def layer() -> None:
        for a, b in pairs:
            torch.mm(a, b)

    times = timing.interleaved({"layer_matmuls": layer, "matmul": big}, repeats, warmup)
    # rate ratio = (F_layer / t_layer) / (F_big / t_big)
    ratio = layer_flops / big_flops * timing.paired_ratio(times["matmul"], times["layer_matmuls"])
    shares = step_time_shares(shape)
    share = shares["matmul"]
    return {"ceiling": round(ratio * share, 4), "gemm_rate_ceiling": round(ratio, 4),
            "matmul_time_share": round(share, 4), "bernoulli_time_share": round(shares["bernoulli"], 4),
            "tokens": tokens, "shapes": [list(s) for s in shapes],
            "layer_gflops": round(layer_flops / timing.median(times["layer_matmuls"]) / 1e9, 2),
            "matmul_gflops": round(big_flops / timing.median(times["matmul"]) / 1e9, 2),
            **{name: timing.summary(t) for name, t in times.items()}}


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
BERNOULLI_OPS = ("aten::bernoulli_", "aten::bernoulli")  # dropout's random masks


def step_time_shares(shape: BenchShape, steps: int = 3) -> dict[str, float]:
    """The shares of an adapter step's CPU time (torch's profiler, self time) spent inside matmul
    kernels (`matmul`) and drawing dropout's masks (`bernoulli`)."""
    from torch.profiler import ProfilerActivity, profile

    backbone = build_backbone(shape, 0)
    config = adapter_config(backbone)
    objective = _objective(config)
    batch = objective.collate(fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, 0), shape.vocab, 0))
    step = TrainStep(adapter_pretrainer(backbone, config), objective)
    step(batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)

    def share(ops: tuple[str, ...]) -> float:
        return sum(e.self_cpu_time_total for e in events if e.key in ops) / total if total else 0.0

    return {"matmul": share(MATMUL_OPS), "bernoulli": share(BERNOULLI_OPS)}


def floors(shape: BenchShape, sizes) -> dict[str, Any]:
    """Every floor, on the sizes `benchmarks/run.py` uses for the ratios they bound."""
    r, w = sizes.repeats, sizes.warmup
    step = adapter_step_floor(shape, r, w)
    tokens = step["batch_size"] * step["padded_length"]
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "cached_epoch_vs_uncached": lambda: cached_floor(dataclasses.replace(shape, batch_size=sizes.epoch_batch_size), r, w),
        "bucketed_vs_padded": lambda: bucket_floor(shape, r, w),
        "composed_inference_vs_backbone": lambda: composed_floor(
            dataclasses.replace(shape, batch_size=sizes.inference_batch_size), sizes.inference_examples, r, w),
        "mfu": lambda: matmul_floor(shape, tokens, r, w, sizes.matmul_n),
    }
    return {"adapter_step_vs_full_finetune": step, **{name: run() for name, run in parts.items()}}


def main(argv: list[str] | None = None) -> None:
    """`benchmarks/run.py` with `--only floors` and the same options (`--quick`, `--toy`, `--threads`, `--out`)."""
    from benchmarks import run

    run.main(["--only", "floors", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
