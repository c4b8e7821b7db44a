"""Benchmarks of the model side: adapter step vs full fine-tuning, MFU, the feature cache, length
bucketing, composed inference, a CosmosQA step against Hugging Face's multiple-choice model. Each returns report entries (`entry`), every ratio's members timed
interleaved in one loop (`timing.interleaved`); a ratio is the median of its per-round ratios
(`timing.paired_ratio`), the details give each member's median, min and max."""

from __future__ import annotations

import copy
import dataclasses
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import timing
from benchmarks.workloads import (
    PAD_ID,
    BenchShape,
    FullFinetune,
    TrainStep,
    adapter_config,
    adapter_pretrainer,
    adapter_step_flops,
    build_backbone,
    choice_finetune_flops,
    fac_examples,
    full_finetune_flops,
    trex_like_lengths,
)
from kadapter_cli.training.flops import step_flops


def entry(value: float, op: str, target: float, detail: dict[str, Any]) -> dict[str, Any]:
    """`{"value", "target", "met", "detail"}`; `op` is "<=" or ">="."""
    met = value <= target if op == "<=" else value >= target
    return {"value": round(value, 4), "target": f"{op} {target:.2f}", "met": bool(met), "detail": detail}


def _objective(config, pad_to: int | None = None):
    """The product's fac objective; `pad_to` pads every batch to that length (the original's pad-to-max-length)."""
    from kadapter_cli.training.objectives import RelationObjective

    return RelationObjective(PAD_ID, config.labels, pad_to)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- adapter step vs full fine-tuning, MFU


def adapter_step(shape: BenchShape, repeats: int, warmup: int = 1, matmul_n: int = 2048,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """`adapter_step_vs_full_finetune` and `mfu`, from one interleaved loop over three members: an
    adapter-pretraining step, a full fine-tuning step (same backbone, same batch) and a dense matmul."""
    backbone = build_backbone(shape, seed)
    full = FullFinetune(copy.deepcopy(backbone), 410)
    config = adapter_config(backbone)
    pretrainer = adapter_pretrainer(backbone, config)
    objective = _objective(config)
    examples = fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, seed), shape.vocab, seed)
    batch = objective.collate(examples)
    seq_len = int(batch["input_ids"].shape[1])
    adapter_step_fn, full_step_fn = TrainStep(pretrainer, objective), TrainStep(full, objective)
    matmul, matmul_flops = timing.matmul_call(matmul_n)
    times = timing.interleaved({"adapter_step": lambda: adapter_step_fn(batch),
                                "full_finetune_step": lambda: full_step_fn(batch),
                                "matmul": matmul}, repeats, warmup)
    adapter_s, matmul_s = timing.median(times["adapter_step"]), timing.median(times["matmul"])
    flops = adapter_step_flops(shape, config, shape.batch_size, seq_len)
    full_flops = full_finetune_flops(shape, shape.batch_size, seq_len)
    # The training log's counter (the products that run, on this batch) prices the step; the shape
    # formula stays beside it as a cross-check.
    counted = step_flops(lambda: adapter_step_fn(batch))
    achieved, peak = counted / adapter_s, matmul_flops / matmul_s
    # MFU = (F / t_step) / (F_mm / t_mm) = (F / F_mm) × (t_mm / t_step), paired round by round.
    mfu = counted / matmul_flops * timing.paired_ratio(times["matmul"], times["adapter_step"])
    step_ratio = timing.paired_ratio(times["adapter_step"], times["full_finetune_step"])
    batch_detail = {"batch_size": shape.batch_size, "padded_length": seq_len,
                    "real_tokens": int(batch["attention_mask"].sum())}
    return {
        "adapter_step_vs_full_finetune": entry(step_ratio, "<=", 0.35, {
            **batch_detail,
            "adapter_step": timing.summary(times["adapter_step"]),
            "full_finetune_step": timing.summary(times["full_finetune_step"]),
            "flop_ratio": round(flops["total"] / full_flops, 4),
            "trainable_parameters": {"adapter_step": _trainable(pretrainer), "full_finetune": _trainable(full)},
        }),
        "mfu": entry(mfu, ">=", 0.80, {
            **batch_detail,
            "step_flops_counted": round(counted / 1e9, 3),
            "step_flops_counted_by": "kadapter_cli.training.flops.step_flops (the training log's counter)",
            "step_flops": {k: round(v / 1e9, 3) for k, v in flops.items()},
            "step_flops_unit": "GFLOP",
            "achieved_gflops": round(achieved / 1e9, 2),
            "matmul_gflops": round(peak / 1e9, 2),
            "matmul": {"n": matmul_n, "dtype": "float32", **timing.summary(times["matmul"])},
            "formula": "cross-check: adapter step = backbone forward + 3 x (adapter + head forward); a layer's forward = "
                       "tokens x (8 d^2 + 4 d f + 4 n d); an adapter tap adds 4 H W per token; head per example "
                       "12 H^2 + 2 H C; matmul = 2 n^3 (benchmarks/workloads.py)",
        }),
    }


# ---------------------------------------------------------------- the feature cache


def cached_epoch(shape: BenchShape, n_examples: int, repeats: int, small_batch: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """`cached_epoch_vs_uncached`: a later epoch reading the frozen backbone's states from the
    feature cache (built by the product's `attach_backbone_cache`) over one that runs the backbone,
    at `shape.batch_size` (the paper's per-device batch: fac pretraining used 128 over 4 GPUs).

    Per-step work that the cache cannot remove (AdamW and gradient clipping over the adapter's
    parameters, a memory-bound pass of fixed size) weighs more at small batches: with `small_batch`
    the same epoch at that batch size is timed in the same rounds and reported in the detail.
    """
    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import attach_backbone_cache

    backbone = build_backbone(shape, seed)
    config = adapter_config(backbone)
    objective = _objective(config)
    lengths = trex_like_lengths(n_examples, shape.max_length, seed)
    uncached_examples = fac_examples(lengths, shape.vocab, seed)
    cached_examples = [dict(ex) for ex in uncached_examples]
    uncached = adapter_pretrainer(backbone, config)
    cached = adapter_pretrainer(backbone, config)
    train_config = TrainConfig(device="cpu", batch_size=shape.batch_size)
    with tempfile.TemporaryDirectory(prefix="kadapter-bench-") as tmp:
        started = time.perf_counter()
        storage = attach_backbone_cache(cached, {"train": cached_examples}, PAD_ID, train_config, Path(tmp),
                                        torch.device("cpu"), mode="on")
        build_s = time.perf_counter() - started
    cached.backbone = None  # as `train_adapter` does: every batch carries its features
    cache = cached_examples[0]["_cache"]
    detail: dict[str, Any] = {"examples": n_examples, "storage": storage, "cache_mib": round(cache.nbytes / 2**20, 2),
                              "cache_build_s": round(build_s, 3)}
    ratio = None
    for size in [shape.batch_size] + ([small_batch] if small_batch and small_batch != shape.batch_size else []):
        # The small-batch epoch covers the first 4 batches' worth of examples (a random sample: the
        # lengths come in random order), to keep the run short.
        n = n_examples if size == shape.batch_size else min(n_examples, 4 * size)
        batches = epoch_batches(lengths[:n], size, seed, epoch=1)
        times = timing.interleaved_steps({  # `TrainStep.steps` warms up on one batch
            "uncached_epoch": TrainStep(uncached, objective).steps(uncached_examples, batches),
            "cached_epoch": TrainStep(cached, objective).steps(cached_examples, batches),
        }, repeats)
        size_ratio = timing.paired_ratio(times["cached_epoch"], times["uncached_epoch"])
        timed = {"cached_epoch": timing.summary(times["cached_epoch"]),
                 "uncached_epoch": timing.summary(times["uncached_epoch"])}
        if ratio is None:
            ratio = size_ratio
            detail.update({"batch_size": size, "batches": len(batches), **timed})
        else:
            detail[f"at_batch_{size}"] = {"examples": n, "ratio": round(size_ratio, 4), **timed}
    return entry(ratio, "<=", 0.31, detail)


# ---------------------------------------------------------------- --compile


def compiled_step(shape: BenchShape, n_batches: int, repeats: int, seed: int = 0, device: str = "cpu",
                  precision: str = "fp32", backbone: torch.nn.Module | None = None,
                  backend: str | None = None) -> dict[str, Any]:
    """`compiled_vs_eager_step`: fac steps of the adapter and head as `--compile` runs them
    (`setup.compile_trainable`: compiled in place, each batch padded to a multiple of 16 tokens)
    against the eager default (each batch padded to its longest example), both reading the same
    cached backbone states (the backbone is not what `--compile` compiles). `n_batches` batches of
    T-REx-like lengths, interleaved step by step; the first pass over them (compilation: one graph
    per length bucket) is timed apart as `compile_s`. `backbone`: one already built (default: `shape`'s);
    `backend`: torch.compile's (default inductor, what `--compile` uses; "eager" for a smoke run)."""
    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import attach_backbone_cache
    from kadapter_cli.training.setup import compile_trainable

    torch_device = torch.device(device)
    backbone = (build_backbone(shape, seed) if backbone is None else backbone).to(torch_device)
    config = adapter_config(backbone)
    lengths = trex_like_lengths(n_batches * shape.batch_size, shape.max_length, seed)
    examples = fac_examples(lengths, shape.vocab, seed)
    reader = adapter_pretrainer(backbone, config)
    with tempfile.TemporaryDirectory(prefix="kadapter-bench-") as tmp:
        attach_backbone_cache(reader, {"train": examples}, PAD_ID,
                              TrainConfig(device=device, batch_size=shape.batch_size, precision=precision), Path(tmp),
                              torch_device, mode="on", budget_gib=64.0)
    del reader
    batches = epoch_batches(lengths, shape.batch_size, seed, epoch=1)
    eager_model, compiled_model = adapter_pretrainer(None, config), adapter_pretrainer(None, config)
    eager_objective, compiled_objective = _objective(config), _objective(config)
    compile_trainable(compiled_model, compiled_objective, backend)
    eager = TrainStep(eager_model.to(torch_device), eager_objective, device=device, precision=precision)
    compiled = TrainStep(compiled_model.to(torch_device), compiled_objective, device=device, precision=precision)
    started = time.perf_counter()
    compiled_steps = compiled.steps(examples, batches)
    for step in compiled_steps:  # every length bucket compiled before timing
        step()
    compile_s = time.perf_counter() - started
    members = {"eager": eager.steps(examples, batches), "compiled": compiled_steps}
    times = timing.interleaved_steps(members, repeats)
    padded = [len(b) * (-(-max(lengths[i] for i in b) // 16) * 16) for b in batches]
    detail = {"device": device, "precision": precision, "backend": backend or "inductor", "batches": len(batches),
              "batch_size": shape.batch_size,
              "compile_s": round(compile_s, 2), "padded_tokens_compiled": sum(padded),
              "padded_tokens_eager": sum(len(b) * max(lengths[i] for i in b) for b in batches),
              "eager_epoch": timing.summary(times["eager"]), "compiled_epoch": timing.summary(times["compiled"])}
    return entry(timing.paired_ratio(times["compiled"], times["eager"]), "<=", 1.0, detail)


# ---------------------------------------------------------------- length bucketing


def bucketed_epoch(shape: BenchShape, batches_timed: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """`bucketed_vs_padded`: an adapter-pretraining epoch (backbone run, no cache) with the product's
    length buckets and per-batch padding, over plain shuffled batches padded to max_length.

    The epoch is one full bucket pool of T-REx-like lengths (`bucket_size` 100 batches, the
    product's default: fewer examples would understate what bucketing saves). Its time is estimated
    from `batches_timed` batches of each order, picked at evenly spaced quantiles of their padded
    length: epoch ≈ batches × mean step time, so the ratio is that of the sampled steps' totals.
    """
    from kadapter_cli.training.batching import epoch_batches

    bucket_size = 100
    n_examples = bucket_size * shape.batch_size
    backbone = build_backbone(shape, seed)
    config = adapter_config(backbone)
    objective = _objective(config)
    lengths = trex_like_lengths(n_examples, shape.max_length, seed)
    examples = fac_examples(lengths, shape.vocab, seed)
    bucketed_batches = epoch_batches(lengths, shape.batch_size, seed, epoch=0, bucket_size=bucket_size)
    shuffled_batches = epoch_batches(lengths, shape.batch_size, seed, epoch=0, bucket_size=1)
    bucketed = TrainStep(adapter_pretrainer(backbone, config), objective)
    padded = TrainStep(adapter_pretrainer(backbone, config), _objective(config, pad_to=shape.max_length))
    times = timing.interleaved_steps({
        "bucketed_epoch": bucketed.steps(examples, _quantile_batches(bucketed_batches, lengths, batches_timed)),
        "padded_epoch": padded.steps(examples, shuffled_batches[:batches_timed]),
    }, repeats)  # `TrainStep.steps` warms up on one batch
    computed = sum(len(b) * max(lengths[i] for i in b) for b in bucketed_batches)
    ratio = timing.paired_ratio(times["bucketed_epoch"], times["padded_epoch"])
    scale = len(bucketed_batches) / batches_timed
    return entry(ratio, "<=", 0.40, {
        "epoch_examples": n_examples, "epoch_batches": len(bucketed_batches), "batches_timed": batches_timed,
        "mean_length": round(sum(lengths) / n_examples, 2), "max_length": shape.max_length,
        "token_ratio": round(computed / (n_examples * shape.max_length), 4),
        "estimated_epoch_s": {"bucketed": round(scale * timing.median(times["bucketed_epoch"]), 1),
                              "padded": round(scale * timing.median(times["padded_epoch"]), 1)},
        "bucketed_batches_timed": timing.summary(times["bucketed_epoch"]),
        "padded_batches_timed": timing.summary(times["padded_epoch"]),
    })


def _quantile_batches(batches: list[list[int]], lengths: list[int], k: int) -> list[list[int]]:
    """`k` batches at the quantiles (i + ½)/k of the batches' padded lengths."""
    by_length = sorted(batches, key=lambda b: max(lengths[i] for i in b))
    return [by_length[int((i + 0.5) * len(by_length) / k)] for i in range(k)]


# ---------------------------------------------------------------- composed inference


def composed_inference(shape: BenchShape, n_examples: int, repeats: int, warmup: int = 1,
                       seed: int = 0) -> dict[str, Any]:
    """`composed_inference_vs_backbone`: task inference (`evaluate`, `predict`) with fac + lin
    composed (concat fusion) over the baseline without adapters — the same backbone and relation head
    (TACRED's 42 labels, reading the two marker positions), both `TaskModel`s in eval mode under
    `torch.inference_mode`, on the same length-sorted batches.

    The detail also gives the ratio for whole-sequence outputs (`KAdapterModel(ids, mask)`, every
    row fused, e.g. to export features), timed in the same rounds.
    """
    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.modeling.heads import RelationHead
    from kadapter_cli.modeling.kadapter import KAdapterModel
    from kadapter_cli.modeling.task_model import TaskModel
    from kadapter_cli.tasks import get_task
    from kadapter_cli.training.batching import sequential_batches

    backbone = build_backbone(shape, seed)
    torch.manual_seed(2)
    adapters = {kind: KnowledgeAdapter(adapter_config(backbone, kind)) for kind in ("fac", "lin")}
    head = RelationHead(shape.hidden, 42)
    tacred = get_task("tacred")
    composed = TaskModel(KAdapterModel(backbone, adapters, "concat", shape.hidden), head, tacred)
    bare = TaskModel(KAdapterModel(backbone, {}, None, shape.hidden), head, tacred)
    for model in (composed, bare):
        model.body.freeze_backbone()
        model.body.freeze_adapters()
        model.eval()
    lengths = trex_like_lengths(n_examples, shape.max_length, seed)
    examples = fac_examples(lengths, shape.vocab, seed)
    objective = _objective(adapter_config(backbone))
    batches = [objective.collate([examples[i] for i in b]) for b in sequential_batches(lengths, shape.batch_size)]

    def run(model: torch.nn.Module, whole_sequence: bool = False) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                for batch in batches:
                    if whole_sequence:
                        model.body(batch["input_ids"], batch["attention_mask"])
                    else:
                        model(batch)
        return go

    times = timing.interleaved({"composed": run(composed), "backbone": run(bare),
                                "composed_sequence": run(composed, True), "backbone_sequence": run(bare, True)},
                               repeats, warmup)
    ratio = timing.paired_ratio(times["composed"], times["backbone"])
    params = {row["component"]: row["total"] for row in composed.body.parameter_table()}
    return entry(ratio, "<=", 1.25, {
        "examples": n_examples, "batch_size": shape.batch_size, "batches": len(batches), "fusion": "concat",
        "head": "relation (42 labels) at the two marker positions", "parameters": params,
        "composed": timing.summary(times["composed"]), "backbone": timing.summary(times["backbone"]),
        "whole_sequence_ratio": round(timing.paired_ratio(times["composed_sequence"], times["backbone_sequence"]), 4),
        "composed_sequence": timing.summary(times["composed_sequence"]),
        "backbone_sequence": timing.summary(times["backbone_sequence"]),
    })


# ---------------------------------------------------------------- a CosmosQA step vs Hugging Face


class _MultipleChoiceLoss:
    """The objective of Hugging Face's `...ForMultipleChoice`: its own loss on (B, C, L) inputs."""

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def cosmosqa_step(shape: BenchShape, records: int, seq_len: int, repeats: int, warmup: int = 1,
                  seed: int = 0) -> dict[str, Any]:
    """`cosmosqa_step_vs_hf_multiple_choice`: one CosmosQA training step of kadapter without adapters
    (the product's task, `TaskModel`, `TaskObjective`, backbone trained) over Hugging Face's
    `RobertaForMultipleChoice` on the same backbone weights, batch and lengths — the task layer
    should add nothing measurable. In the same rounds, the step with fac + lin composed (concat, frozen
    adapters, backbone trained) is timed and its ratio to the HF step reported beside the FLOP estimate.
    """
    from transformers import RobertaForMultipleChoice

    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.stages.finetune import build_task_model
    from kadapter_cli.tasks import get_task
    from kadapter_cli.tasks.cosmosqa import CHOICES
    from kadapter_cli.training.objectives import TaskObjective

    shape = dataclasses.replace(shape, max_length=seq_len)
    backbone = build_backbone(shape, seed)
    task = get_task("cosmosqa")
    rng = random.Random(seed)
    # A shared context and question, answers of varying length: candidates fill 3/4 to all of seq_len.
    examples = [{"input_ids": [[0] + [rng.randrange(3, shape.vocab) for _ in range(rng.randint(seq_len * 3 // 4, seq_len) - 2)]
                               + [2] for _ in range(CHOICES)], "labels": rng.randrange(CHOICES), "gold": []}
                for _ in range(records)]
    batch = task.collate(examples, PAD_ID)

    torch.manual_seed(seed + 1)
    hf = RobertaForMultipleChoice(backbone.config)
    hf.roberta.load_state_dict(backbone.state_dict(), strict=False)  # same weights; HF adds its pooler
    bare = build_task_model(task, [], {}, "concat", copy.deepcopy(backbone))
    configs = [adapter_config(backbone, kind) for kind in ("fac", "lin")]
    torch.manual_seed(seed + 2)
    adapters = {c.kind: KnowledgeAdapter(c) for c in configs}
    composed = build_task_model(task, [], adapters, "concat", copy.deepcopy(backbone))
    composed.body.freeze_adapters()
    objective = TaskObjective(PAD_ID, task, [])
    steps = {"kadapter": TrainStep(bare, objective), "hf_multiple_choice": TrainStep(hf, _MultipleChoiceLoss()),
             "kadapter_fac_lin": TrainStep(composed, objective)}
    times = timing.interleaved({name: (lambda step=step: step(batch)) for name, step in steps.items()}, repeats, warmup)
    ratio = timing.paired_ratio(times["kadapter"], times["hf_multiple_choice"])
    composed_ratio = timing.paired_ratio(times["kadapter_fac_lin"], times["hf_multiple_choice"])
    padded = int(batch["input_ids"].shape[-1])
    sequences = records * CHOICES
    base_flops = choice_finetune_flops(shape, sequences, padded)
    return entry(ratio, "<=", 1.05, {
        "records": records, "candidates": CHOICES, "padded_length": padded,
        "real_tokens": int(batch["attention_mask"].sum()),
        **{name: timing.summary(t) for name, t in times.items()},
        "composed_fac_lin": {
            "ratio_to_hf": round(composed_ratio, 4),
            "flop_ratio": round(choice_finetune_flops(shape, sequences, padded, configs) / base_flops, 4),
            "trainable_parameters": _trainable(composed),
        },
        "trainable_parameters": {"kadapter": _trainable(bare), "hf_multiple_choice": _trainable(hf)},
    })
