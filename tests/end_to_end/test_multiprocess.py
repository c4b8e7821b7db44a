"""Every training command through the real CLI under two CPU processes (gloo), as the README says:
`accelerate launch --multi_gpu --num_processes 2 -m kadapter_cli.cli ...` and `torchrun`.

One process owns the output (lock, `.partial`, rename, manifest, log, predictions, the printed
table); both compute. A kill -9 of the whole launch and `--resume` under two processes end with the
weights of an uninterrupted two-process run. The tiny backbone and a few steps keep each launch to
seconds of training (most of the time is starting the processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.kill_helpers import kill_after_checkpoint
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAST = ["--batch-size", "8", "--lr", "1e-3", "--max-length", "48", "--seed", "5"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", KADAPTER_PROGRESS="0", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("KADAPTER_DEBUG", None)
    return env


def _accelerate(*args: str) -> list[str]:
    # The README's command; --main_process_port 0 lets parallel test runs each take a free port.
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
            "-m", "kadapter_cli.cli", *args]


def _torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "kadapter_cli.cli", *args]


def _run(command: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    if not Path(command[0]).exists():
        pytest.skip(f"no {Path(command[0]).name} beside {sys.executable}")
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data, tiny_backbone):
    """A workdir with trex-rc/ and parsed/ from the real samples."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir = tmp_path_factory.mktemp("multi") / "work"
    for args in (["prepare-trex", shared_data / "trex", "--min-count", "1"],
                 ["parse", "--parser", "conllu", shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"]):
        result = CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return workdir, tiny_backbone


def _assert_one_owner_wrote(folder: Path) -> dict:
    """A complete artifact: no scratch or lock beside it, a manifest over its files, one log line per step."""
    assert not any(p.name.startswith(f".{folder.name}.") for p in folder.parent.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    steps = [line["step"] for line in map(json.loads, (folder / "train_log.jsonl").read_text().splitlines())
             if "loss" in line]
    assert steps == sorted(set(steps)) and steps  # written once, by one process
    return manifest


def test_train_adapter_fac_under_accelerate_launch_and_torchrun(work):
    workdir, backbone = work
    outputs = {}
    for launcher, name in ((_accelerate, "fac-accelerate"), (_torchrun, "fac-torchrun")):
        done = _run(launcher("--workdir", str(workdir), "train-adapter", "--kind", "fac", "--name", name,
                             "--backbone", str(backbone), *FAST, "--micro-batch-size", "2", "--max-steps", "6",
                             "--log-every", "1"))
        assert "batch 8 = micro-batch 2 × 2 accumulation steps × 2 processes" in done.stderr
        assert done.stdout.count(f"adapter {name} (fac)") == 1  # one process reports
        folder = workdir / "adapters" / name
        manifest = _assert_one_owner_wrote(folder)
        assert manifest["stats"]["batch_split"] == {"batch_size": 8, "micro_batch_size": 2, "grad_accum": 2,
                                                    "processes": 2}
        assert manifest["stats"]["steps"] == 6 and manifest["stats"]["feature_cache"] == "memory"
        outputs[name] = load_file(folder / "kadapter_adapter.safetensors")
    # Both launchers run the same two processes: the same weights.
    first, second = outputs.values()
    assert all(first[k].equal(second[k]) for k in first)


def test_train_adapter_lin_killed_and_resumed_with_two_processes_ends_as_uninterrupted(work):
    workdir, backbone = work
    args = ["train-adapter", "--kind", "lin", "--backbone", str(backbone), *FAST, "--limit", "160",
            "--max-steps", "40", "--save-every", "4", "--eval-every", "20"]
    _run(_accelerate("--workdir", str(workdir), *args, "--name", "lin-reference"))

    name = "lin-resumed"
    command = _accelerate("--workdir", str(workdir), *args, "--name", name)
    # The launcher and both workers killed at once, as a power loss would.
    kill_after_checkpoint(command, _env(), workdir / "adapters" / f".{name}.partial", min_step=8, timeout=180, cwd=REPO)
    assert not (workdir / "adapters" / name).exists()
    done = _run(command + ["--resume"])
    assert "resuming from" in done.stderr

    _assert_one_owner_wrote(workdir / "adapters" / name)
    resumed = load_file(workdir / "adapters" / name / "kadapter_adapter.safetensors")
    reference = load_file(workdir / "adapters" / "lin-reference" / "kadapter_adapter.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(resumed[k].equal(reference[k]) for k in resumed), "resumed weights differ from the uninterrupted run"
    metrics = [json.loads((workdir / "adapters" / n / "metrics.json").read_text())["dev"] for n in (name, "lin-reference")]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("frozen", [False, True], ids=["backbone-trained", "freeze-backbone-disk-cache"])
def test_finetune_under_accelerate_launch(work, shared_data, frozen):
    workdir, backbone = work
    data = shared_data / "openentity" / "ernie-format"
    run = f"openentity-{'frozen' if frozen else 'trained'}"
    extra = ["--freeze-backbone", "--cache-features", "on", "--cache-budget", "0"] if frozen else []
    # 21 records per split: the last evaluation batch is uneven over the two processes.
    done = _run(_accelerate("--workdir", str(workdir), "finetune", "--task", "openentity", "--data", str(data),
                            "--backbone", str(backbone), "--name", run, *FAST, "--limit", "21", "--epochs", "2",
                            "--json", *extra))
    results = json.loads(done.stdout)  # printed once, by the main process
    folder = workdir / "finetuned" / run
    manifest = _assert_one_owner_wrote(folder)
    assert manifest["stats"]["batch_split"]["processes"] == 2
    assert manifest["stats"]["feature_cache"] == ("disk" if frozen else "off")
    assert json.loads((folder / "metrics.json").read_text()) == results
    records = json.loads((data / "test.json").read_text())[:21]
    lines = [json.loads(x) for x in (folder / "predictions-test.jsonl").read_text().splitlines()]
    # Gathered once each, in input order, no padding duplicates.
    assert [x["index"] for x in lines] == list(range(21))
    assert [sorted(x["gold"]) for x in lines] == [sorted(r["labels"]) for r in records]

    if frozen:  # the run predicted from fp16 cached states; a fresh evaluation recomputes them in fp32
        return
    # The saved model predicts in one process what the two processes wrote.
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    evaluated = CliRunner().invoke(app, ["--workdir", str(workdir), "evaluate", str(folder), "--data", str(data),
                                         "--split", "test", "--json"], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output
    # evaluate reads the whole split; the run's test metrics were on its first 21 records.
    recomputed = [json.loads(x) for x in
                  (workdir / "evaluations" / f"{run}-test" / "predictions-test.jsonl").read_text().splitlines()][:21]
    assert [x["pred"] for x in recomputed] == [x["pred"] for x in lines]
