"""`kadapter evaluate` refuses an existing output before it computes anything, and `--no-save`
prints the metrics without writing (as `trainer.evaluate()` gives them back)."""

from __future__ import annotations

import json

import pytest

from kadapter_cli.artifacts.layout import DEMO_DATA

TYPING = DEMO_DATA / "typing"


@pytest.fixture
def model(cli, tiny_backbone):
    result = cli("finetune", "--task", "openentity", "--data", TYPING, "--backbone", tiny_backbone,
                 "--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--limit", "8")
    assert result.exit_code == 0, result.output
    return cli.workdir / "finetuned" / "openentity-base"


def _never_load(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_a_second_evaluate_refuses_before_loading_the_model(cli, model, monkeypatch):
    first = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--json")
    assert first.exit_code == 0, first.output
    out = cli.workdir / "evaluations" / "openentity-base-dev"
    assert json.loads((out / "metrics.json").read_text())["dev"] == json.loads(first.stdout)

    import kadapter_cli.stages.finetune as finetune

    monkeypatch.setattr(finetune, "_load_finetuned", _never_load)
    second = cli("evaluate", model, "--data", TYPING, "--split", "dev")
    assert second.exit_code == 2
    assert f"{out}: already exists; pass --overwrite to replace it" in second.output


def test_no_save_prints_the_metrics_and_writes_nothing(cli, model):
    before = sorted(p for p in cli.workdir.rglob("*"))
    shown = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--no-save", "--json")
    assert shown.exit_code == 0, shown.output
    metrics = json.loads(shown.stdout)
    assert 0.0 <= metrics["f1"] <= 1.0 and "strict_acc" in metrics
    table = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--no-save")
    assert table.exit_code == 0 and "strict_acc" in table.output and "→" not in table.output
    assert sorted(p for p in cli.workdir.rglob("*")) == before  # nothing written, not even a folder
    # the same numbers a saved evaluation writes
    saved = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--json")
    assert json.loads(saved.stdout) == metrics


def test_no_save_with_an_output_folder_is_refused(cli, model, tmp_path):
    result = cli("evaluate", model, "--data", TYPING, "--no-save", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--no-save writes nothing: leave out --out" in result.output
    assert not (tmp_path / "x").exists()


def test_a_pipeline_evaluate_stage_with_no_save_declares_no_output(tmp_path):
    from kadapter_cli.workflow.pipeline import Stage, command_io

    saved = Stage("e", "evaluate", inputs=("w/finetuned/openentity-fac",), options={"split": "dev"})
    assert command_io(saved, tmp_path / "w")[1] == [str(tmp_path / "w" / "evaluations" / "openentity-fac-dev")]
    printed = Stage("e", "evaluate", inputs=("w/finetuned/openentity-fac",), options={"no-save": True})
    assert command_io(printed, tmp_path / "w") == ([], [])
