"""What a user does with a finetuned model, through the CLI: `inspect` says what it is, `evaluate`
and `predict` refuse to overwrite and name a wrong folder, `predict` reads stdin, scores on request,
and the small refusals around them in words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"
FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backbone, make_trex_rc):
    """A workdir with a fac adapter, its composition with itself under another name, and a finetuned model."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    root = tmp_path_factory.mktemp("made")
    workdir = root / "work"
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result

    data = make_trex_rc(root / "trex-rc", 16, 4)
    for name in ("fac", "fac2"):
        run("train-adapter", "--kind", "fac", "--name", name, "--data", data, "--backbone", tiny_backbone, *FAST,
            "--cache-features", "off")
    run("compose", "fac", "fac2")
    run("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *FAST)
    return workdir


def test_inspect_says_what_a_finetuned_model_is(cli, made, tiny_backbone, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    model = made / "finetuned" / "openentity-fac"
    text = cli("inspect", model).stdout
    metrics = json.loads((model / "metrics.json").read_text())
    def row(name: str) -> str:
        return re.search(rf"^{name}  +(.*?)\s*$", text, re.M)[1]

    assert row("task") == "openentity"
    assert row("backbone") == tiny_backbone.name  # a folder is recorded by its name; its path is a hint
    assert row("backbone fingerprint").startswith(f"folder {tiny_backbone.resolve()} (config ")
    assert row("adapters") == "fac (fac)"
    assert row("test").startswith(f"precision: {metrics['test']['precision']:.4g}, ")
    assert "{" not in text and "'" not in text  # no Python reprs
    report = json.loads(cli("inspect", model, "--json").stdout)
    assert report["about"]["task"] == "openentity" and report["about"]["dev"] == metrics["dev"]


def test_inspect_says_adapter_kind_and_composition_trainable(cli, made, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    text = cli("inspect", made / "adapters" / "fac").stdout
    assert any(line.split() == ["kind", "adapter", "(fac)"] for line in text.splitlines())
    assert "{" not in text
    composition = cli("inspect", made / "compositions" / "fac+fac2").stdout
    assert "?" not in composition
    assert re.search(r"^adapters +fac \(fac\), fac2 \(fac\)\s*$", composition, re.M)


def test_evaluate_refuses_to_overwrite_like_every_other_command(cli, made):
    model = made / "finetuned" / "openentity-fac"
    args = ("evaluate", model, "--data", TYPING, "--split", "dev", "--batch-size", "8")
    assert cli(*args).exit_code == 0
    again = cli(*args)
    out = cli.workdir / "evaluations" / "openentity-fac-dev"
    assert again.exit_code == 2
    assert again.stderr.strip() == f"error: {out}: already exists; pass --overwrite to replace it"
    assert cli(*args, "--overwrite").exit_code == 0


def test_predict_reads_stdin_refuses_to_overwrite_and_names_a_wrong_folder(cli, made, tmp_path):
    model = made / "finetuned" / "openentity-fac"
    records = json.loads((TYPING / "test.json").read_text())[:3]
    text = "".join(json.dumps(r) + "\n" for r in records)
    piped = cli("predict", model, "-", input=text)
    assert piped.exit_code == 0, piped.stderr
    assert [json.loads(line)["index"] for line in piped.stdout.splitlines()] == [0, 1, 2]
    bad = cli("predict", model, "-", input=text + '{"sent": "x"}\n')
    assert bad.exit_code == 2 and bad.stderr.startswith("error: <stdin>, line 4: ")

    out = tmp_path / "predictions.jsonl"
    (tmp_path / "in.jsonl").write_text(text)
    assert cli("predict", model, tmp_path / "in.jsonl", "--out", out).exit_code == 0
    before = out.read_bytes()
    again = cli("predict", model, tmp_path / "in.jsonl", "--out", out)
    assert again.exit_code == 2 and again.stderr.strip() == f"error: {out}: already exists; pass --overwrite to replace it"
    assert cli("predict", model, tmp_path / "in.jsonl", "--out", out, "--overwrite").exit_code == 0
    assert out.read_bytes() == before

    adapter = made / "adapters" / "fac"
    wrong = cli("predict", adapter, tmp_path / "in.jsonl")
    assert wrong.exit_code == 2
    assert wrong.stderr.strip() == (f"error: {adapter}: not a finetuned model folder (its manifest says 'adapter'; "
                                    "`kadapter finetune` makes one)")


def test_small_refusals_say_what_is_wrong_in_words(cli, made, tmp_path):
    same = cli("compose", made / "adapters" / "fac", made / "adapters" / "fac")
    assert same.exit_code == 2
    assert same.stderr.strip() == ("error: two adapters share the name 'fac': give each adapter once, or rename one "
                                   "with --name when training it")

    composition = made / "compositions" / "fac+fac2"
    fused = cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", composition, "--fusion", "add")
    assert fused.exit_code == 2
    assert fused.stderr.strip() == (f"error: {composition}: --fusion add: this composition fuses with concat; leave "
                                    "--fusion out, or compose again with --fusion add")

    config = tmp_path / "config.yaml"
    config.write_text("epochz: 3\n")
    unknown = cli("train-adapter", "--kind", "fac", "--config", config)
    assert unknown.exit_code == 2 and "unknown option 'epochz' (known: " in unknown.stderr
    known = unknown.stderr.split("known: ")[1]
    assert "json," in known and "json_out" not in known and "mask_padding" in known


def test_predict_and_evaluate_give_scores_on_request(cli, made):
    import math

    model = made / "finetuned" / "openentity-fac"
    labels = json.loads((model / "labels.json").read_text())
    records = json.loads((TYPING / "test.json").read_text())[:4]
    text = "".join(json.dumps(r) + "\n" for r in records)
    plain = [json.loads(line) for line in cli("predict", model, "-", input=text).stdout.splitlines()]
    assert all("scores" not in line for line in plain)

    scored = [json.loads(line) for line in cli("predict", model, "-", "--scores", input=text).stdout.splitlines()]
    every = [json.loads(line) for line in cli("predict", model, "-", "--all-scores", input=text).stdout.splitlines()]
    for line, full, before in zip(scored, every, plain):
        assert line["pred"] == before["pred"] and sorted(line["scores"]) == sorted(line["pred"])
        assert all(p > 0.5 for p in line["scores"].values())  # OpenEntity predicts the labels with logit > 0
        assert list(full["scores"]) == labels  # every label, in label order
        assert all(0 < p < 1 for p in full["scores"].values())
        assert all(math.isclose(full["scores"][k], v, abs_tol=1e-6) for k, v in line["scores"].items())
        assert {k for k, p in full["scores"].items() if p > 0.5} == set(line["pred"])

    result = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--scores", "--out", cli.workdir / "ev")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in (cli.workdir / "ev" / "predictions-dev.jsonl").read_text().splitlines()]
    assert lines and all(sorted(line["scores"]) == sorted(line["pred"]) for line in lines)
