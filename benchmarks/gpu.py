"""The GPU check: fac pretraining and fine-tuning steps on a RoBERTa-large-shaped backbone in bf16,
and the feature cache built on the GPU. Prints ONE JSON object.

    python benchmarks/gpu.py                      # one GPU, about a minute, at most 5; nothing downloaded
    python benchmarks/gpu.py --tiny --device cpu  # tiny shapes on the CPU: what the test runs

The backbone is a randomly initialised `RobertaModel` of RoBERTa-large's shape (24 layers, hidden
1024, 16 heads, FFN 4096, vocabulary 50,265; speed does not depend on the values); the adapter is
the product's default rule on it (the paper's: taps 0, 11, 22, width 768); the batch is 128
T-REx-like examples (mean 22.8 sub-tokens, max_length 64), the paper's fac batch on one device.
Every step is the product's (`workloads.TrainStep`: Accelerate autocast, AdamW, clipping).

Reported:
- `fac_pretraining`: adapter-pretraining step time, real and padded tokens/s, model TFLOP/s from
  the FLOP formula of `workloads.adapter_step_flops`, and MFU = that over the device's bf16 dense
  peak (`kadapter_cli.training.log.PEAK_FLOPS`, or `--peak-tflops`);
- `full_finetune`: the same for a step that trains every backbone weight, and the ratio of the
  two steps' times;
- `feature_cache`: building the cache of the frozen backbone's states on the device (examples/s,
  size) and an epoch's steps from the cache against the same steps running the backbone;
- `matmul_bf16`: a dense bf16 matmul's TFLOP/s, the device's attainable peak beside the nominal one;
- `qa_eval`: `benchmarks/qa_bench.py` on the device (fp32, RoBERTa-large's layers and width, 32
  SearchQA-like questions × 50 paragraphs, batch 64): kadapter's extractive-QA evaluation against the
  transformers 4.x question-answering pipeline's procedure (`qa_eval_vs_hf_pipeline`, target ≥ 1.5),
  and fac+lin composed against no adapters. On a CPU the forward pass is 97 % of both sides' time, so
  the ratio there is bounded by the padding the pipeline computes; on a GPU its per-window Python
  and NumPy work is what remains.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import qa_bench, timing  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    NUM_RELATIONS,
    PAD_ID,
    BenchShape,
    FullFinetune,
    TrainStep,
    adapter_config,
    adapter_pretrainer,
    adapter_step_flops,
    build_backbone,
    fac_examples,
    full_finetune_flops,
    trex_like_lengths,
)

ROBERTA_LARGE = BenchShape(layers=24, hidden=1024, heads=16, ffn=4096, vocab=50265, max_length=64, batch_size=128)
TINY = BenchShape(layers=4, hidden=64, heads=2, ffn=128, vocab=1000, max_length=32, batch_size=4)
PRECISION = "bf16"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else timing.cpu_model_name()


def _peak(device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    from kadapter_cli.training.log import peak_flops

    if peak_tflops is not None:
        return peak_tflops * 1e12, "--peak-tflops"
    peak = peak_flops(device, PRECISION)
    return peak, ("kadapter_cli.training.log.PEAK_FLOPS" if peak else "unknown device: no MFU")


def _rates(seconds: float, flops: float, real_tokens: int, padded_tokens: int, peak: float | None) -> dict[str, Any]:
    return {"step_s": round(seconds, 5), "tokens_per_s": round(real_tokens / seconds, 1),
            "padded_tokens_per_s": round(padded_tokens / seconds, 1),
            "model_tflops": round(flops / seconds / 1e12, 4),
            "mfu": round(flops / seconds / peak, 4) if peak else None}


def _matmul(device: torch.device, n: int, repeats: int) -> dict[str, Any]:
    dtype = torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def call() -> None:
        (a @ b).sum().item()  # .item() waits for the device

    times = timing.interleaved({"matmul": call}, repeats, warmup=1)["matmul"]
    return {"n": n, "tflops": round(2.0 * n**3 / timing.median(times) / 1e12, 3), **timing.summary(times)}


def _feature_cache(backbone, config, objective, shape: BenchShape, device: torch.device, n_examples: int,
                   repeats: int, seed: int) -> dict[str, Any]:
    """Builds the cache on the device over `n_examples`, then times an epoch's steps from it against
    the same steps running the backbone (interleaved, step by step)."""
    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import attach_backbone_cache

    lengths = trex_like_lengths(n_examples, shape.max_length, seed)
    uncached_examples = fac_examples(lengths, shape.vocab, seed)
    cached_examples = [dict(ex) for ex in uncached_examples]
    uncached, cached = adapter_pretrainer(backbone, config), adapter_pretrainer(backbone, config)
    train_config = TrainConfig(device=device.type, batch_size=shape.batch_size, precision=PRECISION)
    with tempfile.TemporaryDirectory(prefix="kadapter-gpu-") as tmp:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        storage = attach_backbone_cache(cached, {"train": cached_examples}, PAD_ID, train_config, Path(tmp), device,
                                        mode="on", budget_gib=64.0)
        build_s = time.perf_counter() - started
    cached.backbone = None  # as `train_adapter` does: every batch carries its features
    cache = cached_examples[0]["_cache"]
    batches = epoch_batches(lengths, shape.batch_size, seed, epoch=1)
    times = timing.interleaved_steps({
        "uncached_epoch": TrainStep(uncached, objective, device=device.type, precision=PRECISION).steps(
            uncached_examples, batches),
        "cached_epoch": TrainStep(cached, objective, device=device.type, precision=PRECISION).steps(
            cached_examples, batches),
    }, repeats)
    return {"examples": n_examples, "storage": storage, "cache_mib": round(cache.nbytes / 2**20, 1),
            "build_s": round(build_s, 3), "build_examples_per_s": round(n_examples / build_s, 1),
            "batches": len(batches),
            "cached_vs_uncached_epoch": round(timing.paired_ratio(times["cached_epoch"], times["uncached_epoch"]), 4),
            "cached_epoch": timing.summary(times["cached_epoch"]),
            "uncached_epoch": timing.summary(times["uncached_epoch"])}


def run(shape: BenchShape, device: torch.device, repeats: int, warmup: int, cache_examples: int,
        matmul_n: int, peak_tflops: float | None = None, seed: int = 0,
        qa_sizes: tuple[int, int, int] = (32, 50, 64)) -> dict[str, Any]:
    from kadapter_cli.training.objectives import RelationObjective

    started = time.perf_counter()
    peak, peak_source = _peak(device, peak_tflops)
    report: dict[str, Any] = {
        "device": _device_name(device), "precision": PRECISION, "shape": shape.to_dict(),
        "peak_tflops": round(peak / 1e12, 1) if peak else None, "peak_source": peak_source,
        "torch": torch.__version__, "repeats": repeats,
    }
    backbone = build_backbone(shape, seed).to(device)
    config = adapter_config(backbone)
    objective = RelationObjective(PAD_ID, config.labels)
    examples = fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, seed), shape.vocab, seed)
    batch = objective.collate(examples)
    seq_len = int(batch["input_ids"].shape[1])
    real, padded = sum(len(e["input_ids"]) for e in examples), shape.batch_size * seq_len

    adapter_step = TrainStep(adapter_pretrainer(backbone, config).to(device), objective, device=device.type,
                             precision=PRECISION)
    full_step = TrainStep(FullFinetune(copy.deepcopy(backbone), NUM_RELATIONS).to(device), objective,
                          device=device.type, precision=PRECISION)
    times = timing.interleaved({"adapter": lambda: adapter_step(batch), "full": lambda: full_step(batch)},
                               repeats, warmup)
    adapter_s, full_s = timing.median(times["adapter"]), timing.median(times["full"])
    flops = adapter_step_flops(shape, config, shape.batch_size, seq_len)
    report["fac_pretraining"] = {
        "batch": shape.batch_size, "seq_len": seq_len, "real_tokens": real,
        **_rates(adapter_s, flops["total"], real, padded, peak),
        "flops_per_step": {k: float(f"{v:.4g}") for k, v in flops.items()},
        "adapter_parameters": sum(p.numel() for p in adapter_step.trainable), **timing.summary(times["adapter"])}
    report["full_finetune"] = {
        **_rates(full_s, full_finetune_flops(shape, shape.batch_size, seq_len), real, padded, peak),
        "adapter_step_vs_full_finetune": round(timing.paired_ratio(times["adapter"], times["full"]), 4),
        **timing.summary(times["full"])}
    del adapter_step, full_step
    report["feature_cache"] = _feature_cache(backbone, config, objective, shape, device, cache_examples,
                                             max(1, repeats // 3), seed)
    report["matmul_bf16"] = _matmul(device, matmul_n, repeats)
    questions, paragraphs, qa_batch = qa_sizes
    report["qa_eval"] = qa_bench.qa_inference(shape, questions, paragraphs, qa_batch, max(1, repeats // 3),
                                              warmup=1, seed=seed, device=device.type)
    if device.type == "cuda":
        report["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (4 layers, 64 wide): for tests, numbers mean nothing")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 128; --tiny 4)")
    parser.add_argument("--repeats", type=int, help="timed steps per member (default 10; --tiny 1)")
    parser.add_argument("--cache-examples", type=int, help="examples the cache holds (default 4096; --tiny 8)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the product's table")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device is visible (use --device cpu --tiny for a smoke run)")
    shape = TINY if args.tiny else ROBERTA_LARGE
    if args.batch_size:
        shape = replace(shape, batch_size=args.batch_size)
    repeats = args.repeats or (1 if args.tiny else 10)
    report = run(shape, device, repeats, warmup=1 if args.tiny else 3,
                 cache_examples=args.cache_examples or (8 if args.tiny else 4096),
                 matmul_n=64 if args.tiny else 8192, peak_tflops=args.peak_tflops,
                 qa_sizes=(2, 2, 2) if args.tiny else (32, 50, 64))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
