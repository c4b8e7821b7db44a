"""`kadapter report` and the end of `kadapter demo` (docs/tracking.md), on real artifacts: the demo's own
pipeline cut to a few steps on the tiny backbone, plus a second seed of one row."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kadapter_cli.cli import app

pytestmark = pytest.mark.slow
VARIANTS = ("base", "fac", "lin", "fac+lin")


def _small_demo(folder: Path, workdir: Path, backbone: Path) -> Path:
    """pipelines/demo.yaml with the tiny backbone and a few steps per stage."""
    from kadapter_cli.workflow.pipeline import DEMO_PIPELINE

    spec = yaml.safe_load(DEMO_PIPELINE.read_text())
    spec["vars"].update(workdir=str(workdir), backbone=str(backbone))
    for stage in spec["stages"]:
        if stage["command"] == "train-adapter":
            stage["options"].update({"max-steps": 6, "limit": 96, "log-every": 2, "eval-every": 3})
        if stage["command"] == "finetune":
            stage["options"].update({"epochs": 2, "limit": 64, "log-every": 2})
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_backbone):
    """(workdir, the demo's stdout); the workdir also holds a second seed of the base row."""
    from kadapter_cli.workflow import pipeline

    folder = tmp_path_factory.mktemp("demo")
    workdir = folder / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "DEMO_PIPELINE", _small_demo(folder, workdir, tiny_backbone))
        result = CliRunner().invoke(app, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    extra = CliRunner().invoke(app, [
        "--workdir", str(workdir), "finetune", "--task", "openentity", "--data", str(pipeline.DEMO_DATA / "typing"),
        "--backbone", str(tiny_backbone), "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0.1",
        "--max-length", "48", "--freeze-backbone", "--limit", "64", "--log-every", "2", "--seed", "7",
        "--name", "openentity-base-seed7"], catch_exceptions=False)
    assert extra.exit_code == 0, extra.output
    return workdir, result.stdout


def _report(workdir: Path, *args: str):
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _metrics(workdir: Path, run: str) -> dict:
    return json.loads((workdir / "finetuned" / run / "metrics.json").read_text())


def test_demo_ends_with_the_report_table_and_the_papers_numbers(demo):
    _, stdout = demo
    tail = stdout[stdout.index("Fine-tuned runs: openentity, test split"):]
    rows = [line.split("│")[1].strip() for line in tail.splitlines() if line.startswith("│ ")]
    rows = [r for r in rows if r]  # narrow terminals wrap a row over two lines
    assert rows[:4] == list(VARIANTS)
    assert "(76.23)" in tail and "(77.61)" in tail  # the paper's RoBERTa and F+L OpenEntity F1
    assert "Knowledge adapters" not in tail  # the demo's own adapters table comes before


def test_report_json_equals_the_runs_metrics_and_averages_seeds(demo):
    workdir, _ = demo
    report = json.loads(_report(workdir, "--json", "--paper").stdout)
    assert report["tasks"] == {"openentity": ["precision", "recall", "f1", "strict_acc", "macro_f1"]}
    rows = {row["adapters"]: row for row in report["rows"]}
    assert list(rows) == list(VARIANTS)
    for variant in ("fac", "lin", "fac+lin"):
        cell = rows[variant]["cells"]["openentity"]
        expected = _metrics(workdir, f"openentity-{variant}")["test"]
        assert len(cell["runs"]) == 1
        for metric in report["tasks"]["openentity"]:
            assert cell["metrics"][metric]["mean"] == expected[metric] and cell["metrics"][metric]["n"] == 1
    base = rows["base"]["cells"]["openentity"]["metrics"]["f1"]
    seeds = [_metrics(workdir, run)["test"]["f1"] for run in ("openentity-base", "openentity-base-seed7")]
    assert base["n"] == 2 and sorted(base["values"]) == sorted(seeds)
    assert base["mean"] == pytest.approx(statistics.fmean(seeds)) and base["std"] == pytest.approx(statistics.stdev(seeds))
    assert base["paper"] == pytest.approx(0.7623) and rows["fac+lin"]["paper_row"] == "K-Adapter (F+L)"
    assert rows["fac"]["cells"]["openentity"]["metrics"]["strict_acc"]["paper"] is None  # the paper has no such column
    adapters = {a["adapter"]: a for a in report["adapters"]}
    for name, metric in (("fac", "accuracy"), ("lin", "uas")):
        dev = json.loads((workdir / "adapters" / name / "metrics.json").read_text())["dev"]
        assert adapters[name]["metrics"][metric]["mean"] == dev[metric]
    assert len(adapters) == 2  # the adapters inside compositions/fac+lin are not counted again


def test_report_csv_and_markdown(demo):
    workdir, _ = demo
    rows = list(csv.DictReader(io.StringIO(_report(workdir, "--csv").stdout)))
    assert [r["adapters"] for r in rows] == list(VARIANTS)
    fac = _metrics(workdir, "openentity-fac")["test"]
    assert float(rows[1]["openentity.f1"]) == fac["f1"] and rows[1]["openentity.f1.n"] == "1"
    assert rows[0]["openentity.f1.n"] == "2"
    text = _report(workdir, "--markdown", "--paper").stdout
    assert text.startswith("| adapters | runs | openentity P | openentity R | openentity F1 |")
    assert f"| fac | 1 | {100 * fac['precision']:.2f} (79.30) |" in text


def test_runs_that_differ_in_more_than_the_seed_get_rows_of_their_own(demo, tmp_path):
    workdir, _ = demo
    for name, lr in (("a", 1e-3), ("b", 5e-4)):
        copy = tmp_path / name
        shutil.copytree(workdir / "finetuned" / "openentity-fac", copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["config"]["lr"] = lr
        (copy / "manifest.json").write_text(json.dumps(manifest))
    report = json.loads(_report(workdir, "--json", str(tmp_path)).stdout)
    assert [r["adapters"] for r in report["rows"]] == ["fac (lr=0.0005)", "fac (lr=0.001)"]


def test_report_plots_the_curves_and_the_headline_bars(demo, tmp_path):
    from PIL import Image

    workdir, _ = demo
    figures = tmp_path / "figures"
    result = _report(workdir, "--paper", "--plot", str(figures))
    assert "Fine-tuned runs" in result.stdout
    sizes = {}
    for path in sorted(figures.iterdir()):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            sizes[path.name] = (image.format, image.size)
    assert sizes == {"curves-openentity.png": ("PNG", (1200, 450)), "curves-fac.png": ("PNG", (1200, 450)),
                     "curves-lin.png": ("PNG", (1200, 450)), "headline.png": ("PNG", (450, 400))}
    with Image.open(figures / "curves-openentity.png") as image:  # drawn on, not blank
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20


def test_report_of_an_empty_or_missing_folder(tmp_path):
    result = _report(tmp_path, str(tmp_path))
    assert "no finetuned runs or adapters found" in result.stdout
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such folder" in result.stderr


def test_demo_artifacts_carry_model_cards(demo):
    from helpers.cards import read_card

    from kadapter_cli.artifacts.manifest import verify_files

    workdir, _ = demo
    out = workdir / "finetuned" / "openentity-fac+lin"
    verify_files(out)  # README.md is listed with its sha256
    meta, body = read_card(out)
    test = _metrics(workdir, "openentity-fac+lin")["test"]
    results = {r["dataset"]["split"]: {m["type"]: m["value"] for m in r["metrics"]} for r in meta["model-index"][0]["results"]}
    assert results["test"]["f1"] == pytest.approx(test["f1"]) and set(results) == {"dev", "test"}
    assert meta["license"] == "mit" and meta["datasets"] == ["kadapter demo data"]  # the bundled, generated data
    assert {"fac-adapter", "lin-adapter", "openentity"} <= set(meta["tags"])
    assert "- `fac` (fac): taps" in body and "KAdapterForTask.from_pretrained(" in body and "kadapter predict" in body
    meta, _ = read_card(workdir / "adapters" / "lin")
    assert meta["datasets"] == ["kadapter demo data"]  # parsed/ made from the demo corpus
