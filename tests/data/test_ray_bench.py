"""`benchmarks/ray_bench.py` (docs/speed.md): parse three ways, one report; run tiny here, the numbers mean nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import ray_bench, run  # noqa: E402


def test_the_three_engines_parse_the_same_sentences_and_the_ratios_follow_from_the_times(tmp_path):
    out = tmp_path / "report.json"
    ray_bench.main(["--lines", "60", "--small-lines", "0", "--out", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report) == set(run.GROUPS["ray"])  # what `benchmarks/run.py --only ray` reports
    runs = {name: report[f"parse_{name}_sentences_per_s"]["detail"] for name in ("one_process", "workers", "ray")}
    assert {r["sentences"] for r in runs.values()} == {60}  # the demo corpus: one sentence a line
    assert all(r["sentences_per_s"] > 0 and r["seconds"] > 0 for r in runs.values())
    assert runs["ray"]["retries"] == 0 and runs["workers"]["retries"] is None
    assert report["parse_ray_time_over_workers"]["value"] == round(runs["ray"]["seconds"] / runs["workers"]["seconds"], 3)
    assert report["parse_ray_time_over_workers"]["detail"]["workers"] == 2
    assert "ray" in run.ON_REQUEST  # minutes at its real size: not part of `make bench`
