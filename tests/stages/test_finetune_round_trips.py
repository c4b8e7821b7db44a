"""`kadapter finetune` builds its task once and hands it down; `evaluate` and `predict` read a
finetuned folder's config.json once."""

from __future__ import annotations

import pytest

from kadapter_cli.artifacts.layout import DEMO_DATA

TYPING = DEMO_DATA / "typing"


@pytest.fixture
def counted_tasks(monkeypatch):
    """How many task objects of openentity are built."""
    from kadapter_cli.tasks import TASKS

    task_class, built = TASKS["openentity"], []
    original = task_class.__init__

    def counting(self, **options):
        built.append(options)
        original(self, **options)

    monkeypatch.setattr(task_class, "__init__", counting)
    return built


@pytest.fixture
def run(cli, tiny_backbone, counted_tasks):
    result = cli("finetune", "--task", "openentity", "--data", TYPING, "--backbone", tiny_backbone, "--max-steps", "1",
                 "--batch-size", "4", "--max-length", "32", "--limit", "8", "--threads", "1", "--name", "run")
    assert result.exit_code == 0, result.stderr
    return cli.workdir / "finetuned" / "run"


def test_finetune_builds_its_task_once(run, counted_tasks):
    assert counted_tasks == [{}]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_read_the_saved_config_once(cli, run, monkeypatch, command):
    from kadapter_cli.stages import finetune

    reads, read = [], finetune.finetuned_config
    monkeypatch.setattr(finetune, "finetuned_config", lambda folder: reads.append(folder) or read(folder))
    args = ["--data", TYPING, "--split", "dev", "--json"] if command == "evaluate" else [TYPING / "dev.json"]
    result = cli(command, run, *args, "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert reads == [run]
