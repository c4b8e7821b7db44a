"""Experiment tracking (`--report-to`, docs/tracking.md): what the trackers receive, read back from their own
files with their own readers; tracking changes nothing a run computes, and resumes cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.train_toy import ToyObjective, build_model, toy_examples
from test_loop import Interrupted, InterruptingObjective, _config

from kadapter_cli.artifacts.manifest import verify_files
from kadapter_cli.training import tracking
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.loop import train

EXTRA_HINT = "pip install kadapter[tracking]"


def _run(config: TrainConfig, run_dir: Path, objective=None, resume: bool = False, hparams=None):
    model = build_model(config.seed)
    train(model, objective or ToyObjective(), toy_examples(48, 1), toy_examples(30, 2), config, run_dir,
          resume=resume, hparams=hparams)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _log(run_dir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training lines by step, dev lines by step) of train_log.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return ({x["step"]: x for x in lines if "loss" in x}, {x["step"]: x["dev"] for x in lines if "dev" in x})


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------- TensorBoard (always installed by `make test`)


def test_tensorboard_gets_every_log_line_and_dev_evaluation_at_its_step(tmp_path):
    run = tmp_path / "run"
    _run(_config(report_to="tensorboard", eval_every=4), run, hparams={"kind": "fac", "taps": [0, 1], "lr": 3e-3})
    train_lines, dev_lines = _log(run)
    scalars = _tensorboard_scalars(run / "tracking" / "run")  # the run's name: its folder's
    assert [s for s, _ in scalars["train/loss"]] == sorted(train_lines) == [2, 4, 6, 8, 10, 12]
    for key in ("loss", "lr", "grad_norm", "examples_per_s", "tokens_per_s"):
        assert scalars[f"train/{key}"] == [(s, pytest.approx(train_lines[s][key], rel=1e-5)) for s in sorted(train_lines)]
    assert sorted(dev_lines) == [4, 8, 12]
    assert scalars["dev/accuracy"] == [(s, pytest.approx(dev_lines[s]["accuracy"], rel=1e-5)) for s in sorted(dev_lines)]
    hparams = next((run / "tracking" / "run").glob("*/hparams.yml")).read_text()
    assert "taps: 0,1" in hparams and "kind: fac" in hparams


def test_tracking_changes_no_weight_and_a_resumed_run_logs_each_step_once(tmp_path):
    config = _config(report_to="tensorboard")
    reference = _run(_config(), tmp_path / "reference")  # no tracker at all
    with pytest.raises(Interrupted):  # dies in epoch 2, after step 6's checkpoint and step 8's log line
        _run(config, tmp_path / "run", objective=InterruptingObjective(at=9))
    resumed = _run(config, tmp_path / "run", resume=True)
    _same_weights(resumed, reference)
    scalars = _tensorboard_scalars(tmp_path / "run" / "tracking" / "run")
    train_lines, _ = _log(tmp_path / "run")
    # Step 8 was logged by the killed run and again after the resume: TensorBoard shows it once.
    assert scalars["train/loss"] == [(s, pytest.approx(train_lines[s]["loss"], rel=1e-5)) for s in sorted(train_lines)]


def test_cli_tracks_into_the_artifact_which_lists_the_tracker_files(cli, tmp_path, tiny_backbone):
    from conftest import _write_trex_rc as _trex_rc

    data = _trex_rc(tmp_path / "trex-rc")
    common = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--max-steps", "6",
              "--batch-size", "8", "--max-length", "24", "--device", "cpu", "--log-every", "2", "--eval-every", "3")
    result = cli(*common, "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    out = cli.workdir / "adapters" / "fac"
    manifest = json.loads((out / "manifest.json").read_text())
    event_files = [name for name in manifest["files"] if name.startswith("tracking/fac/events.out.tfevents")]
    assert event_files and manifest["config"]["report_to"] == "tensorboard"
    verify_files(out)
    scalars = _tensorboard_scalars(out / "tracking" / "fac")
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]
    assert [s for s, _ in scalars["dev/accuracy"]] == [3, 6]

    elsewhere = tmp_path / "runs"
    result = cli(*common, "--name", "fac2", "--report-to", "tensorboard", "--run-name", "fac-lr-test",
                 "--tracking-dir", elsewhere)
    assert result.exit_code == 0, result.output
    assert [s for s, _ in _tensorboard_scalars(elsewhere / "fac-lr-test")["train/loss"]] == [2, 4, 6]
    assert not (cli.workdir / "adapters" / "fac2" / "tracking").exists()


def test_a_tracker_that_is_not_installed_names_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(tracking._MODULES, "wandb", "kadapter_no_such_module")
    result = cli("train-adapter", "--kind", "fac", "--data", tmp_path / "none", "--report-to", "wandb")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --report-to wandb: the kadapter_no_such_module package is not installed; {EXTRA_HINT}"
    result = cli("finetune", "--task", "openentity", "--report-to", "tensorbored")
    assert result.exit_code == 2 and "unknown tracker 'tensorbored'" in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_under_two_processes_only_the_main_one_writes_tracker_files(tmp_path):
    from test_loop import launch_two_processes

    run = tmp_path / "run"
    launch_two_processes(run, "--epochs", "1", "--seed", "3", "--report-to", "tensorboard", timeout=180)
    event_files = sorted((run / "tracking" / "run").rglob("events.out.tfevents.*"))
    assert len(event_files) == 2  # one scalar writer and one hparams writer, both of the main process
    train_lines, _ = _log(run)
    assert sorted(train_lines) == [5, 10, 15, 20, 25, 30]  # 240 examples / batch 8 = 30 steps on any number of processes
    assert [s for s, _ in _tensorboard_scalars(run / "tracking" / "run")["train/loss"]] == [5, 10, 15, 20, 25, 30]


def test_cli_defaults_of_the_tracking_options_equal_the_loops_own():
    from kadapter_cli.commands import train as train_commands

    defaults = TrainConfig()
    for name in ("report_to", "run_name", "tracking_dir"):
        assert getattr(train_commands, name.upper()).default == getattr(defaults, name), name


def test_report_to_spellings():
    assert tracking.parse_report_to("none") == [] and tracking.parse_report_to(None) == []
    assert tracking.parse_report_to("tensorboard") == ["tensorboard"]
    assert set(tracking.parse_report_to("all")) == {t for t in tracking.TRACKERS if tracking.is_installed(t)}
    assert "tensorboard" in tracking.parse_report_to("all")


# ---------------------------------------------------------------- wandb and MLflow (where installed)


def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason=f"wandb is not installed ({EXTRA_HINT})")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = _config(report_to="wandb")
    with pytest.raises(Interrupted):
        _run(config, tmp_path / "run", objective=InterruptingObjective(at=9))
    run_id = json.loads((tmp_path / "run" / "tracking" / "run-ids.json").read_text())["wandb"]
    resumed = _run(config, tmp_path / "run", resume=True)
    _same_weights(resumed, _run(_config(), tmp_path / "reference"))
    assert json.loads((tmp_path / "run" / "tracking" / "run-ids.json").read_text())["wandb"] == run_id
    records = sorted((tmp_path / "run" / "tracking" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(records) == 2  # the interrupted start and the resumed one, both under the run's id
    content = records[-1].read_bytes()
    assert b"train/loss" in content and b"dev/accuracy" in content and b"adam_beta2" in content


def test_a_tracker_that_cannot_start_stops_the_run_with_its_reason(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason=f"mlflow is not installed ({EXTRA_HINT})")
    from kadapter_cli.errors import BadInput

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    with pytest.raises(BadInput, match=r"--report-to mlflow: a tracker did not start \(\w+"):
        _run(_config(report_to="mlflow"), tmp_path / "run")


def test_finetune_reports_to_wandb_offline_under_its_run_name(cli, tiny_backbone, monkeypatch):
    pytest.importorskip("wandb", reason=f"wandb is not installed ({EXTRA_HINT})")
    from kadapter_cli.artifacts.layout import DEMO_DATA

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = cli("finetune", "--task", "openentity", "--data", DEMO_DATA / "typing", "--backbone", tiny_backbone,
                 "--limit", "32", "--max-steps", "4", "--log-every", "2", "--batch-size", "8", "--max-length", "48",
                 "--freeze-backbone", "--report-to", "wandb", "--run-name", "oe-fl-s1")
    assert result.exit_code == 0, result.output
    out = cli.workdir / "finetuned" / "openentity-base"
    run_id = json.loads((out / "tracking" / "run-ids.json").read_text())["wandb"]
    [record] = (out / "tracking" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    content = record.read_bytes()
    assert b"oe-fl-s1" in content and b"train/loss" in content and b"dev/f1" in content
    verify_files(out)  # the wandb files are part of the artifact and listed in its manifest


def test_mlflow_file_store_holds_the_metrics_at_their_steps(tmp_path):
    pytest.importorskip("mlflow", reason=f"mlflow is not installed ({EXTRA_HINT})")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        _run(_config(report_to="mlflow"), run, objective=InterruptingObjective(at=9))
    _run(_config(report_to="mlflow"), run, resume=True)
    run_id = json.loads((run / "tracking" / "run-ids.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(run / "tracking").resolve().as_uri())
    train_lines, dev_lines = _log(run)
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert losses == {s: pytest.approx(line["loss"], rel=1e-5) for s, line in train_lines.items()}
    assert sorted(m.step for m in client.get_metric_history(run_id, "dev/accuracy")) == sorted(dev_lines)
    assert client.get_run(run_id).data.params["lr"] == "0.003"
