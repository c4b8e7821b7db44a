"""The GPU check: fac pretraining and fine-tuning steps on a RoBERTa-large-shaped backbone in bf16,
the feature cache built on the GPU, a bf16 matmul, and open-QA evaluation. ONE command on a lent
device, run from the source tree with the device's own python3 (its torch, transformers and
accelerate; nothing downloaded, nothing installed):

    PYTHONPATH=. python3 benchmarks/gpu.py --out DIR --budget-s 420   # on the device
    python benchmarks/gpu.py --tiny --device cpu --out DIR              # tiny shapes on the CPU: what the test runs

Each section runs on its own (a failure — a missing package, out of memory, its share of the
budget run out — is reported under `errors` and the next section runs) and `DIR/gpu.json` is
rewritten as soon as a section is measured, so a lost connection keeps what was measured. With
`--budget-s`, each section gets a share of the time (`SHARES`) and as many timed repeats as fit it.

The backbone is a randomly initialised `RobertaModel` of RoBERTa-large's shape (24 layers, hidden
1024, 16 heads, FFN 4096, vocabulary 50,265; speed does not depend on the values); the adapter is
the product's default rule on it (the paper's: taps 0, 11, 22, width 768); the batch is 128
T-REx-like examples (mean 22.8 sub-tokens, max_length 64), the paper's fac batch on one device.
Every step is the product's (`workloads.TrainStep`: Accelerate autocast, AdamW, clipping).

Reported:
- `fac_pretraining`: adapter-pretraining step time, real and padded tokens/s, model TFLOP/s and
  MFU as the training log has them: the step's FLOPs counted by the loop's counter
  (`kadapter_cli.training.flops.step_flops`: the products that run) over the step time, against the
  device's dense bf16 peak (`kadapter_cli.training.flops.PEAK_TFLOPS` by exact device name, or
  `--peak-tflops`); `flops_per_real_token` is the log's price of a real token;
- `full_finetune`: the same for a step that trains every backbone weight, and the ratio of the
  two steps' times;
- `feature_cache`: building the cache of the frozen backbone's states on the device (examples/s,
  size, where `attach_backbone_cache` put it) and an epoch's steps from the cache on the device and
  from the same cache in pinned host memory, each against the same steps running the backbone
  (`cached_vs_uncached_epoch`, `host_cached_vs_uncached_epoch`: below 1 means the cache wins);
- `matmul_bf16`: a dense bf16 matmul's TFLOP/s, the device's attainable peak beside the nominal one;
- `qa_eval`: `benchmarks/qa_bench.py` on the device (fp32, RoBERTa-large's layers and width, 32
  SearchQA-like questions × 50 paragraphs, batch 64, a byte-level BPE tokenizer trained on the
  package's bundled text): kadapter's extractive-QA evaluation against the
  transformers 4.x question-answering pipeline's procedure (`qa_eval_vs_hf_pipeline`, target ≥ 1.5),
  and fac+lin composed against no adapters. On a CPU the forward pass is 97 % of both sides' time, so
  the ratio there is bounded by the padding the pipeline computes; on a GPU its per-window Python
  and NumPy work is what remains;
- `compile`: `--compile` (the adapter and head compiled, lengths in multiples of 16) against eager
  steps from the same cached states (`compiled_vs_eager_step`, below 1 means compiling pays), and
  the compilation's own seconds;
- `lin_arc_dim`: the lin pointer head at width 500 (Dozat & Manning's, kadapter's default) against
  512, a multiple of 64 (`train-adapter --arc-dim 512`): a lin pretraining step from the backbone's
  states and the head alone (`arc_512_vs_500_step`, `arc_512_vs_500_head`, below 1 means 512 is faster);
- `deterministic`: the fac adapter-pretraining step with `--deterministic`'s kernels against the
  default ones, alternating on the same model (`deterministic_vs_default_step`, above 1 is its cost).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    NUM_RELATIONS,
    PAD_ID,
    BenchShape,
    FullFinetune,
    TrainStep,
    adapter_config,
    adapter_pretrainer,
    build_backbone,
    fac_examples,
    lin_examples,
    trex_like_lengths,
)

ROBERTA_LARGE = BenchShape(layers=24, hidden=1024, heads=16, ffn=4096, vocab=50265, max_length=64, batch_size=128)
TINY = BenchShape(layers=4, hidden=64, heads=2, ffn=128, vocab=1000, max_length=32, batch_size=4)
PRECISION = "bf16"
REPORT_FILE = "gpu.json"
QA_VOCAB = 8000  # the BPE tokenizer trained for the QA section (at most; the bundled text decides)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else timing.cpu_model_name()


def _peak(device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    from kadapter_cli.training.flops import device_peak

    if peak_tflops is not None:
        return peak_tflops * 1e12, "--peak-tflops"
    peak, source = device_peak(device, PRECISION)  # what the training log holds MFU to
    return peak, ("kadapter_cli.training.flops.PEAK_TFLOPS: " + source if peak else source)


def _counted_flops(step: Callable[[], Any]) -> float:
    """One run of `step` (a whole optimizer step), its FLOPs counted as the training loop counts its
    first step (`kadapter_cli.training.flops`): the products that run, forward and backward."""
    from kadapter_cli.training import flops

    return flops.step_flops(step)


def _rates(seconds: float, flops: float, real_tokens: int, padded_tokens: int, peak: float | None) -> dict[str, Any]:
    return {"step_s": round(seconds, 5), "tokens_per_s": round(real_tokens / seconds, 1),
            "padded_tokens_per_s": round(padded_tokens / seconds, 1),
            "model_tflops": float(f"{flops / seconds / 1e12:.4g}"),  # as train_log.jsonl rounds it
            "mfu": round(flops / seconds / peak, 4) if peak else None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the report, the budget, the sections


class Report:
    """The JSON object the check prints, written to `<out>/gpu.json` again after every section, so
    whatever was measured survives a later section's crash, a timeout or a lost connection."""

    def __init__(self, out_dir: Path | None, head: dict[str, Any]):
        self.data: dict[str, Any] = dict(head)
        self.path = out_dir / REPORT_FILE if out_dir else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.write()

    def record(self, section: str, value: Any, seconds: float) -> None:
        self.data[section] = value
        self.data.setdefault("section_s", {})[section] = round(seconds, 2)
        self.write()

    def fail(self, section: str, error: BaseException, seconds: float) -> None:
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        self.data.setdefault("errors", {})[section] = {"error": f"{type(error).__name__}: {error}",
                                                       "traceback": "".join(lines)[-2000:]}
        self.data.setdefault("section_s", {})[section] = round(seconds, 2)
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # a reader never sees half a file


class SectionTimeout(Exception):
    """A section ran past the time the budget gave it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raises `SectionTimeout` in this (main) thread once `seconds` have passed: a section that
    outruns its share stops, and the next one still gets its own."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise SectionTimeout(f"stopped after its {seconds:.0f} s share of --budget-s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Budget:
    """`--budget-s` over the sections by their shares; time a section leaves unused goes to the next.

    A section asks `repeats(per_round_s, wanted)`: the timed rounds that fit in what it has left
    (at least one)."""

    def __init__(self, seconds: float | None, shares: dict[str, float]):
        self.total, self.shares = seconds, shares
        self.done: set[str] = set()
        self.started = time.perf_counter()
        self.section_started = self.started
        self.section_s: float | None = None

    def begin(self, section: str) -> float | None:
        """The seconds `section` may take: its share of the budget, plus what earlier sections left."""
        self.section_started = time.perf_counter()
        if self.total is None:
            self.section_s = None
            return None
        remaining = [name for name in self.shares if name not in self.done]
        left = self.total - (self.section_started - self.started)
        share = self.shares[section] / sum(self.shares[name] for name in remaining)
        self.done.add(section)
        self.section_s = max(1.0, left * share)
        return self.section_s

    def left(self) -> float | None:
        if self.section_s is None:
            return None
        return self.section_s - (time.perf_counter() - self.section_started)

    def repeats(self, per_round_s: float, wanted: int) -> int:
        left = self.left()
        if left is None:
            return wanted
        return max(1, min(wanted, int(0.8 * left / max(per_round_s, 1e-6))))


def _timed_round(members: dict[str, Any]) -> float:
    """Seconds of one round of `members` (after their warm-up), to size the timed repeats."""
    started = time.perf_counter()
    for fn in members.values():
        fn()
    return time.perf_counter() - started


# ---------------------------------------------------------------- sections


def fac_pretraining(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The adapter-pretraining step against a step that trains every backbone weight."""
    from kadapter_cli.training.objectives import RelationObjective

    shape, device, peak = ctx["shape"], ctx["device"], ctx["peak"]
    backbone = ctx["backbone"]
    config = adapter_config(backbone)
    objective = RelationObjective(PAD_ID, config.labels)
    examples = fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, ctx["seed"]), shape.vocab,
                            ctx["seed"])
    batch = objective.collate(examples)
    seq_len = int(batch["input_ids"].shape[1])
    real, padded = sum(len(e["input_ids"]) for e in examples), shape.batch_size * seq_len
    adapter_step = TrainStep(adapter_pretrainer(backbone, config).to(device), objective, device=device.type,
                             precision=PRECISION)
    full_step = TrainStep(FullFinetune(copy.deepcopy(backbone), NUM_RELATIONS).to(device), objective,
                          device=device.type, precision=PRECISION)
    members = {"adapter": lambda: adapter_step(batch), "full": lambda: full_step(batch)}
    # Counted once each, outside the timed rounds (counting slows a step down); a warm-up step too.
    flops, full_flops = _counted_flops(members["adapter"]), _counted_flops(members["full"])
    for _ in range(ctx["warmup"]):
        _timed_round(members)
    repeats = budget.repeats(_timed_round(members), ctx["repeats"])
    times = timing.interleaved(members, repeats, warmup=0)
    adapter_s, full_s = timing.median(times["adapter"]), timing.median(times["full"])
    return {
        "fac_pretraining": {
            "batch": shape.batch_size, "seq_len": seq_len, "real_tokens": real,
            **_rates(adapter_s, flops, real, padded, peak),
            "flops_per_step": {"total": float(f"{flops:.4g}")},
            "flops_per_real_token": float(f"{flops / real:.4g}"),
            "flops_counted_by": "kadapter_cli.training.flops.step_flops (the training log's counter)",
            "adapter_parameters": sum(p.numel() for p in adapter_step.trainable), **timing.summary(times["adapter"])},
        "full_finetune": {
            **_rates(full_s, full_flops, real, padded, peak),
            "flops_per_real_token": float(f"{full_flops / real:.4g}"),
            "adapter_step_vs_full_finetune": round(timing.paired_ratio(times["adapter"], times["full"]), 4),
            **timing.summary(times["full"])},
    }


def feature_cache(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """Builds the cache on the device (where the product's `attach_backbone_cache` keeps it when it
    fits), then times an epoch's steps three ways, interleaved step by step: from the cache on the
    device, from the same cache in pinned host memory (fp16 rows gathered on the host, copied
    without blocking), and running the backbone. `auto` should pick the cache only where it wins."""
    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import FeatureCache, attach_backbone_cache
    from kadapter_cli.training.objectives import RelationObjective

    shape, device, seed, n_examples = ctx["shape"], ctx["device"], ctx["seed"], ctx["cache_examples"]
    backbone = ctx["backbone"]
    config = adapter_config(backbone)
    objective = RelationObjective(PAD_ID, config.labels)
    lengths = trex_like_lengths(n_examples, shape.max_length, seed)
    uncached_examples = fac_examples(lengths, shape.vocab, seed)
    cached_examples = [dict(ex) for ex in uncached_examples]
    uncached, cached = adapter_pretrainer(backbone, config), adapter_pretrainer(backbone, config)
    train_config = TrainConfig(device=device.type, batch_size=shape.batch_size, precision=PRECISION)
    with tempfile.TemporaryDirectory(prefix="kadapter-gpu-") as tmp:
        _sync(device)
        started = time.perf_counter()
        storage = attach_backbone_cache(cached, {"train": cached_examples}, PAD_ID, train_config, Path(tmp), device,
                                        mode="on", budget_gib=64.0)
        _sync(device)
        build_s = time.perf_counter() - started
    cached.backbone = None  # as `train_adapter` does: every batch carries its features
    cache = cached_examples[0]["_cache"]
    # The same states in host memory, as a cache too large for the device feeds it.
    host = FeatureCache([s.cpu() for s in cache._states], cache._offsets, cache.dtype, "memory")
    host.pinned = device.type == "cuda"
    host_examples = [dict(ex, _cache=host) for ex in cached_examples]
    host_model = adapter_pretrainer(None, config)
    batches = epoch_batches(lengths, shape.batch_size, seed, epoch=1)
    members = {
        "uncached_epoch": TrainStep(uncached, objective, device=device.type, precision=PRECISION).steps(
            uncached_examples, batches),
        "cached_epoch": TrainStep(cached, objective, device=device.type, precision=PRECISION).steps(
            cached_examples, batches),
        "host_cached_epoch": TrainStep(host_model, objective, device=device.type, precision=PRECISION).steps(
            host_examples, batches),
    }
    first = timing.interleaved_steps(members, 1)  # the first epoch warms both up and sizes the rest
    per_round = sum(t[0] for t in first.values())
    times = timing.interleaved_steps(members, budget.repeats(per_round, ctx["cache_repeats"]))
    return {"feature_cache": {
        "examples": n_examples, "storage": storage, "cache_mib": round(cache.nbytes / 2**20, 1),
        "build_s": round(build_s, 3), "build_examples_per_s": round(n_examples / build_s, 1),
        "batches": len(batches),
        "cached_vs_uncached_epoch": round(timing.paired_ratio(times["cached_epoch"], times["uncached_epoch"]), 4),
        "host_cached_vs_uncached_epoch": round(timing.paired_ratio(times["host_cached_epoch"],
                                                                   times["uncached_epoch"]), 4),
        "cached_epoch": timing.summary(times["cached_epoch"]),
        "host_cached_epoch": timing.summary(times["host_cached_epoch"]),
        "uncached_epoch": timing.summary(times["uncached_epoch"])}}


def matmul_bf16(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """A dense bf16 matmul's TFLOP/s: the device's attainable peak beside the nominal one."""
    device, n = ctx["device"], ctx["matmul_n"]
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))

    def call() -> None:
        (a @ b).sum().item()  # .item() waits for the device

    call()
    repeats = budget.repeats(_timed_round({"matmul": call}), ctx["repeats"])
    times = timing.interleaved({"matmul": call}, repeats, warmup=0)["matmul"]
    return {"matmul_bf16": {"n": n, "tflops": float(f"{2.0 * n**3 / timing.median(times) / 1e12:.4g}"),
                            **timing.summary(times)}}


def qa_eval(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """`benchmarks/qa_bench.py` on the device, with a byte-level BPE tokenizer trained here on the
    package's bundled text (the device has no tokenizer files and no network)."""
    qa_bench = importlib.import_module("benchmarks.qa_bench")
    from kadapter_cli.modeling.backbone import load_tokenizer
    from kadapter_cli.modeling.tiny_backbone import train_tokenizer

    questions, paragraphs, batch = ctx["qa_sizes"]
    with tempfile.TemporaryDirectory(prefix="kadapter-gpu-tokenizer-") as tmp:
        train_tokenizer(QA_VOCAB).save_pretrained(tmp)
        tokenizer = load_tokenizer(tmp)  # as kadapter loads any byte-level BPE: add_prefix_space=True
    # Its members run whole evaluations: one warm-up round and a third of the repeats, cut by the time limit.
    return {"qa_eval": qa_bench.qa_inference(ctx["shape"], questions, paragraphs, batch, max(1, ctx["repeats"] // 3),
                                             warmup=1, seed=ctx["seed"], device=ctx["device"].type,
                                             tokenizer=tokenizer)}


def compile_step(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """`--compile` on the device: fac steps of the compiled adapter and head (batches padded to
    multiples of 16 tokens) against the eager ones, from the same cached backbone states
    (`benchmarks/training_bench.py`'s `compiled_step`; compilation timed apart)."""
    training_bench = importlib.import_module("benchmarks.training_bench")
    result = training_bench.compiled_step(ctx["shape"], ctx["compile_batches"], max(1, ctx["repeats"] // 3),
                                          seed=ctx["seed"], device=ctx["device"].type, precision=PRECISION,
                                          backbone=ctx.get("backbone"), backend=ctx["compile_backend"])
    return {"compile": {"compiled_vs_eager_step": result["value"], **result["detail"]}}


class _LinHeadAlone(nn.Module):
    """The lin pretraining head by itself (com_dense, the dependent/head MLPs, the biaffine), reading
    the backbone's last state and a stand-in adapter output from the batch."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(batch["features"][-1], batch["adapter_out"], batch["candidates"])


def lin_arc_dim(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The lin pointer head at Dozat & Manning's width 500 (kadapter's default, `min(500, hidden)`)
    against 512, a multiple of 64 (`train-adapter --arc-dim 512`): lin pretraining steps from the
    backbone's states computed once (as from the feature cache), the whole step (adapter and head)
    and the head alone, interleaved; `arc_512_vs_500_*` below 1 means 512 is faster."""
    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.modeling.heads import build_head
    from kadapter_cli.modeling.pretrainer import AdapterPretrainer
    from kadapter_cli.training.objectives import DependencyObjective
    from kadapter_cli.training.setup import autocast

    shape, device, seed, backbone = ctx["shape"], ctx["device"], ctx["seed"], ctx["backbone"]
    hidden = backbone.config.hidden_size
    objective = DependencyObjective(PAD_ID)
    examples = lin_examples(trex_like_lengths(shape.batch_size, shape.max_length, seed), shape.vocab, seed)
    batch = objective.collate(examples)
    reader = AdapterPretrainer(backbone, KnowledgeAdapter(adapter_config(backbone, "lin")), nn.Identity(), "lin_pointer")
    with autocast(PRECISION, device):
        features = reader.backbone_features(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    batch = {**{k: v.to(device) for k, v in batch.items()}, "features": features,
             "adapter_out": torch.randn_like(features[-1])}
    members: dict[str, Callable[[], Any]] = {}
    widths = (500, 512)
    for arc_dim in widths:
        config = adapter_config(backbone, "lin", arc_dim=arc_dim)
        torch.manual_seed(1)
        model = AdapterPretrainer(None, KnowledgeAdapter(config), build_head(config.head, hidden), "lin_pointer")
        step = TrainStep(model.to(device), objective, device=device.type, precision=PRECISION)
        head = TrainStep(_LinHeadAlone(build_head(config.head, hidden)).to(device), objective, device=device.type,
                         precision=PRECISION)
        members[f"step_arc_{arc_dim}"] = lambda step=step: step(batch)
        members[f"head_arc_{arc_dim}"] = lambda head=head: head(batch)
    for _ in range(ctx["warmup"]):
        _timed_round(members)
    times = timing.interleaved(members, budget.repeats(_timed_round(members), ctx["repeats"]), warmup=0)
    return {"lin_arc_dim": {
        "batch": shape.batch_size, "seq_len": int(batch["input_ids"].shape[1]), "widths": list(widths),
        "arc_512_vs_500_step": round(timing.paired_ratio(times["step_arc_512"], times["step_arc_500"]), 4),
        "arc_512_vs_500_head": round(timing.paired_ratio(times["head_arc_512"], times["head_arc_500"]), 4),
        **{name: timing.summary(values) for name, values in times.items()}}}


def deterministic(ctx: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """What `--deterministic` costs: the fac adapter-pretraining step (the backbone running, as in
    `fac_pretraining`) with the product's deterministic mode (`set_deterministic`) on and off,
    alternating step by step on the same model and optimizer (`deterministic_vs_default_step`: above 1
    is its cost). CUBLAS_WORKSPACE_CONFIG is set to the mode's value for the whole section, so both
    members use the cuBLAS workspace the process started with (torch reads its size once): the
    figure is the deterministic kernels' cost."""
    from kadapter_cli.training.objectives import RelationObjective
    from kadapter_cli.training.setup import CUBLAS_WORKSPACE, set_deterministic

    shape, device, seed, backbone = ctx["shape"], ctx["device"], ctx["seed"], ctx["backbone"]
    config = adapter_config(backbone)
    objective = RelationObjective(PAD_ID, config.labels)
    batch = objective.collate(fac_examples(trex_like_lengths(shape.batch_size, shape.max_length, seed), shape.vocab,
                                           seed))
    step = TrainStep(adapter_pretrainer(backbone, config).to(device), objective, device=device.type,
                     precision=PRECISION)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE

    def in_mode(on: bool) -> Callable[[], Any]:
        def call() -> Any:
            set_deterministic(on)
            try:
                return step(batch)
            finally:
                set_deterministic(False)
        return call

    members = {"deterministic": in_mode(True), "default": in_mode(False)}
    try:
        for _ in range(ctx["warmup"]):
            _timed_round(members)
        times = timing.interleaved(members, budget.repeats(_timed_round(members), ctx["repeats"]), warmup=0)
    finally:
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
    return {"deterministic": {
        "batch": shape.batch_size, "seq_len": int(batch["input_ids"].shape[1]),
        "deterministic_vs_default_step": round(timing.paired_ratio(times["deterministic"], times["default"]), 4),
        "deterministic_step": timing.summary(times["deterministic"]), "default_step": timing.summary(times["default"])}}


SECTIONS: dict[str, Callable[[dict[str, Any], Budget], dict[str, Any]]] = {
    "fac_pretraining": fac_pretraining, "feature_cache": feature_cache, "matmul_bf16": matmul_bf16,
    "qa_eval": qa_eval, "compile": compile_step, "lin_arc_dim": lin_arc_dim, "deterministic": deterministic,
}
# Shares of --budget-s; time a section leaves unused goes to those after it.
SHARES = {"fac_pretraining": 0.3, "feature_cache": 0.3, "matmul_bf16": 0.1, "qa_eval": 0.3, "compile": 0.25,
          "lin_arc_dim": 0.1, "deterministic": 0.1}
# The sections that run on the RoBERTa-large-shaped backbone (built once, for the first of them).
ON_THE_BACKBONE = ("fac_pretraining", "feature_cache", "compile", "lin_arc_dim", "deterministic")


def run(shape: BenchShape, device: torch.device, repeats: int, warmup: int, cache_examples: int,
        matmul_n: int, peak_tflops: float | None = None, seed: int = 0,
        qa_sizes: tuple[int, int, int] = (32, 50, 64), out_dir: Path | None = None,
        budget_s: float | None = None, sections: tuple[str, ...] = tuple(SECTIONS), tiny: bool = False) -> dict[str, Any]:
    """Every section in turn, each on its own: one that fails (a missing package, an out-of-memory,
    its share of the budget run out) is reported under `errors` and the next one runs."""
    started = time.perf_counter()
    peak, peak_source = _peak(device, peak_tflops)
    report = Report(out_dir, {
        "device": _device_name(device), "precision": PRECISION, "shape": shape.to_dict(),
        "peak_tflops": round(peak / 1e12, 1) if peak else None, "peak_source": peak_source,
        "torch": torch.__version__, "repeats": repeats, "budget_s": budget_s, **_versions(),
    })
    budget = Budget(budget_s, {name: SHARES[name] for name in sections})
    ctx = {"shape": shape, "device": device, "peak": peak, "seed": seed, "repeats": repeats, "warmup": warmup,
           "cache_examples": cache_examples, "cache_repeats": max(1, repeats // 3), "matmul_n": matmul_n,
           "qa_sizes": qa_sizes, "compile_batches": 2 if tiny else 8,
           # --tiny is a smoke run: compiling with inductor takes minutes on a small CPU
           "compile_backend": "eager" if tiny else None}
    for name in sections:
        allowed = budget.begin(name)
        began = time.perf_counter()
        try:
            with time_limit(allowed):
                if "backbone" not in ctx and name in ON_THE_BACKBONE:
                    ctx["backbone"] = build_backbone(shape, seed).to(device)
                values = SECTIONS[name](ctx, budget)
        except (Exception, SectionTimeout) as error:  # noqa: BLE001  every section is on its own
            report.fail(name, error, time.perf_counter() - began)
        else:
            for key, value in values.items():
                report.record(key, value, time.perf_counter() - began)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if device.type == "cuda":
        report.data["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    report.data["wall_s"] = round(time.perf_counter() - started, 1)
    report.write()
    return report.data


def _versions() -> dict[str, str | None]:
    """The library versions the device runs (its image has its own)."""
    from importlib import metadata

    versions = {}
    for name in ("transformers", "accelerate", "safetensors", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (4 layers, 64 wide): for tests, numbers mean nothing")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 128; --tiny 4)")
    parser.add_argument("--repeats", type=int, help="timed steps per member, at most (default 10; --tiny 1)")
    parser.add_argument("--cache-examples", type=int, help="examples the cache holds (default 4096; --tiny 8)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the product's table")
    parser.add_argument("--budget-s", type=float,
                        help="seconds for the whole check: each section gets a share and fewer repeats to fit it")
    parser.add_argument("--section", action="append", choices=list(SECTIONS),
                        help="run only this section (repeatable; default: all)")
    parser.add_argument("--out", type=Path, help=f"folder for {REPORT_FILE}, rewritten after every section")
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
                 qa_sizes=(2, 2, 2) if args.tiny else (32, 50, 64), out_dir=args.out, budget_s=args.budget_s,
                 sections=tuple(args.section or SECTIONS), tiny=args.tiny)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
