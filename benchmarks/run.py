"""Speed benchmarks of kadapter: prints ONE JSON object, each ratio beside its target.

    python benchmarks/run.py --quick          # about 5 minutes on a 2-core CPU (also `make bench`)
    python benchmarks/run.py                  # more examples and repeats
    python benchmarks/run.py --quick --only mfu,adapter_step_vs_full_finetune
    python benchmarks/run.py --quick --only probe   # the knowledge probe's training step
    python benchmarks/run.py --only ray             # parse --engine ray against --workers (minutes; only on request)

Each entry is `{"value", "target", "met", "detail"}`; rates (words/s, documents/s) have no target.
Every ratio's members are timed in the same run, interleaved, after warm-up, as medians of several
repeats (`benchmarks/timing.py`); the model shape is in `benchmarks/workloads.py`. The latest
figures, with the machine they came from, are in `benchmarks/RESULTS.md`. Under "floors", the same
run measures what each CPU ratio could reach with no glue around its unavoidable work
(`benchmarks/floors.py`): a target below its floor needs a cheaper model, not faster code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data_bench, floors, probe_bench, qa_bench, ray_bench, timing, training_bench  # noqa: E402
from benchmarks.workloads import BenchShape  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    repeats: int  # timed rounds per ratio (the median is reported)
    warmup: int  # untimed rounds before them
    epoch_examples: int  # examples in an epoch of the cache benchmark
    epoch_batch_size: int  # its batch: the paper's per-device fac batch (128 over 4 GPUs); `batch_size` also timed
    batches_timed: int  # batches per order sampled from the bucketing benchmark's epoch
    inference_examples: int
    inference_batch_size: int  # evaluation batches are larger than training ones: no gradients to hold
    parse_sentences: int
    batch_size: int
    trex_copies: int = 10
    matmul_n: int = 2048
    qa_questions: int = 8  # extractive QA evaluation: questions, each with `qa_paragraphs` paragraphs
    qa_paragraphs: int = 10
    choice_records: int = 2  # CosmosQA records per step (4 candidates each)
    choice_length: int = 128  # their padded length (the paper's is 256)
    ray_lines: int = 20_000  # the corpus of the `ray` group (parse three ways, each in a fresh process)


QUICK = Sizes(repeats=5, warmup=1, epoch_examples=128, epoch_batch_size=32, batches_timed=4, inference_examples=32, parse_sentences=300,
              batch_size=8, inference_batch_size=16, qa_questions=4, qa_paragraphs=5)
FULL = Sizes(repeats=7, warmup=2, epoch_examples=256, epoch_batch_size=32, batches_timed=8, inference_examples=128, parse_sentences=1006,
             batch_size=16, inference_batch_size=32)
# For tests: a shallow, narrow backbone and a handful of examples; the numbers mean nothing.
TOY = Sizes(repeats=1, warmup=0, epoch_examples=4, epoch_batch_size=4, batches_timed=2, inference_examples=4, parse_sentences=5,
            batch_size=2, inference_batch_size=2, trex_copies=2, matmul_n=64, qa_questions=2, qa_paragraphs=2,
            choice_records=1, choice_length=32, ray_lines=300)
TOY_SHAPE = BenchShape(layers=4, hidden=64, heads=2, ffn=128, vocab=1000, max_length=32)

# The groups of entries, in the order they run; `--only` picks groups by any of their entry names.
GROUPS: dict[str, tuple[str, ...]] = {
    "adapter_step": ("adapter_step_vs_full_finetune", "mfu"),
    "cache": ("cached_epoch_vs_uncached",),
    "compile": ("compiled_vs_eager_step",),
    "buckets": ("bucketed_vs_padded",),
    "inference": ("composed_inference_vs_backbone",),
    "qa": ("qa_eval_vs_hf_pipeline", "qa_composed_eval_vs_base"),
    "cosmosqa": ("cosmosqa_step_vs_hf_multiple_choice",),
    "probe": ("probe_step_masked_rows_vs_every_position",),
    "floors": ("floors",),
    "prepare_trex": ("prepare_trex_rss_10x_over_1x", "prepare_trex_docs_per_s"),
    "parse": ("parse_conllu_words_per_s", "parse_spacy_words_per_s", "parse_stanza_words_per_s"),
    "ray": ("parse_one_process_sentences_per_s", "parse_workers_sentences_per_s", "parse_ray_sentences_per_s",
            "parse_ray_time_over_workers", "parse_ray_speedup_over_one_process"),
}
# Groups that take minutes whatever the size: they run only when --only names them.
ON_REQUEST = ("ray", "compile")  # compile: compilation alone takes minutes on a small CPU


def _runners(shape: BenchShape, sizes: Sizes, trex_dump: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    r, w = sizes.repeats, sizes.warmup
    return {
        "adapter_step": lambda: training_bench.adapter_step(shape, r, w, sizes.matmul_n),
        "cache": lambda: {"cached_epoch_vs_uncached": training_bench.cached_epoch(
            dataclasses.replace(shape, batch_size=sizes.epoch_batch_size), sizes.epoch_examples, r, sizes.batch_size)},
        "compile": lambda: {"compiled_vs_eager_step": training_bench.compiled_step(
            dataclasses.replace(shape, batch_size=sizes.epoch_batch_size), 4, r)},
        "buckets": lambda: {"bucketed_vs_padded": training_bench.bucketed_epoch(shape, sizes.batches_timed, r)},
        "inference": lambda: {"composed_inference_vs_backbone": training_bench.composed_inference(
            dataclasses.replace(shape, batch_size=sizes.inference_batch_size), sizes.inference_examples, r, w)},
        "qa": lambda: qa_bench.qa_inference(shape, sizes.qa_questions, sizes.qa_paragraphs,
                                            sizes.inference_batch_size, r, w),
        "cosmosqa": lambda: {"cosmosqa_step_vs_hf_multiple_choice": training_bench.cosmosqa_step(
            shape, sizes.choice_records, sizes.choice_length, r, w)},
        "probe": lambda: probe_bench.probe_step(shape, r, w),
        "floors": lambda: {"floors": floors.floors(shape, sizes)},
        "prepare_trex": lambda: data_bench.prepare_trex_memory(trex_dump, sizes.trex_copies),
        "parse": lambda: data_bench.parse_speed(sizes.parse_sentences),
        "ray": lambda: ray_bench.parse_engines(sizes.ray_lines, workers=2),
    }


def run_benchmarks(shape: BenchShape, sizes: Sizes, threads: int, only: set[str] | None = None,
                   trex_dump: Path | None = None) -> dict[str, Any]:
    """Runs the selected groups (all by default) and returns the report object."""
    import torch

    torch.set_num_threads(threads)
    shape = dataclasses.replace(shape, batch_size=sizes.batch_size)
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": timing.machine_info(threads), "shape": shape.to_dict()}
    runners = _runners(shape, sizes, trex_dump or data_bench.default_trex_dump())
    for group, names in GROUPS.items():
        if (only is None and group not in ON_REQUEST) or (only is not None and (group in only or only & set(names))):
            report.update(runners[group]())
    report["targets_met"] = sum(1 for v in report.values() if isinstance(v, dict) and v.get("met") is True)
    report["targets_missed"] = sorted(k for k, v in report.items() if isinstance(v, dict) and v.get("met") is False)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="fewer examples and repeats (about 5 minutes)")
    sizes.add_argument("--toy", action="store_true",
                       help="a seconds-long smoke run on a 4-layer, 64-wide backbone: checks the benchmarks "
                            "run and report; its numbers mean nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a CPU shared with other jobs, 2 OpenMP threads stall "
                             "each other at every barrier and time the load, not the code)")
    parser.add_argument("--only", default=None,
                        help="comma-separated entry or group names to run (" + ", ".join(GROUPS) + ")")
    parser.add_argument("--trex-dump", type=Path, default=None,
                        help="T-REx dump for the prepare-trex memory test (default: the bundled demo dump)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",")} if args.only else None
    if only:
        known = set(GROUPS) | {n for names in GROUPS.values() for n in names}
        unknown = sorted(only - known)
        if unknown:
            parser.error(f"unknown --only name(s): {', '.join(unknown)}")
    shape, chosen = (TOY_SHAPE, TOY) if args.toy else (BenchShape(), QUICK if args.quick else FULL)
    report = run_benchmarks(shape, chosen, args.threads, only, args.trex_dump)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
