"""kill -9 at any moment loses nothing and leaves nothing half-written (docs/what-happens-when.md).

Each stage runs as a real process (`python -m kadapter_cli.cli`) and is killed with SIGKILL at
seeded random moments while it writes. Its output folder must then be either absent or complete
(a manifest whose sha256 sums match every file), a rerun must finish and leave no scratch folder
or lock behind, and interrupted training resumed with `--resume` must end with the same bytes in
`kadapter_adapter.safetensors` as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kadapter_cli.artifacts.manifest import verify_files

REPO = Path(__file__).resolve().parents[2]
DEMO_TREX = REPO / "kadapter_cli" / "demo_data" / "trex" / "re-nlg_demo-0.json"
RNG = random.Random(7)  # the kill moments: random, but the same on every run of the suite


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A failing test must not leave its kadapter processes running."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before it starts: SIGINT raises KeyboardInterrupt, as after Ctrl-C in a terminal.
    A shell starts a background job (`make test &`, `nohup ... &`) with SIGINT ignored, its children
    inherit that, and Python then leaves it ignored: the test's Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(workdir: Path, *args: object, log: Path | None = None) -> subprocess.Popen:
    """`kadapter --workdir W args...` as a separate process (one thread: runs are comparable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONHASHSEED": "0"}
    env.pop("KADAPTER_DEBUG", None)
    with open(log or os.devnull, "w") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(workdir), *map(str, args)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_ctrl_c_as_in_a_terminal)
    _started.append(process)
    return process


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Polls `condition()` until true; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.01)
    raise TimeoutError("the condition never held")


def kill(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGKILL)
    return process.wait(timeout=60)


def scratch(out: Path) -> list[Path]:
    """Hidden siblings of `out`: scratch folders, partial folders, locks."""
    return sorted(out.parent.glob(f".{out.name}.*"))


def assert_absent_or_complete(out: Path) -> bool:
    """The output is absent, or complete with every file matching the manifest; True if complete."""
    if not out.exists():
        return False
    verify_files(out)
    return True


def timed_run(workdir: Path, out: Path, args: tuple) -> float:
    """Runs the stage to completion; returns the seconds it spent writing (scratch folder to exit)."""
    process = start(workdir, *args)
    assert wait_for((out.parent / f".{out.name}.tmp-{process.pid}").exists, process)
    began = time.monotonic()
    assert process.wait(timeout=300) == 0
    return time.monotonic() - began


def interrupt_at_random_moments(workdir: Path, out: Path, args: tuple, kills: int, writing: float) -> int:
    """Starts the stage `kills` times, killing it at a random moment of its `writing` seconds.

    Returns how many kills landed mid-write (the scratch folder existed, the output did not).
    """
    mid_write = 0
    for _ in range(kills):
        process = start(workdir, *args)
        own_scratch = out.parent / f".{out.name}.tmp-{process.pid}"
        began = wait_for(own_scratch.exists, process)
        time.sleep(RNG.uniform(0.0, 0.8 * writing))
        was_writing = began and not out.exists()
        code = kill(process)
        if code == -signal.SIGKILL and was_writing and not out.exists():
            mid_write += 1
        if assert_absent_or_complete(out):
            shutil.rmtree(out)  # start the next round from nothing again
    return mid_write


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> Path:
    """About 8 MB of T-REx (the demo dump, 24 times under different document ids): a few seconds of work."""
    folder = tmp_path_factory.mktemp("dumps")
    docs = json.loads(DEMO_TREX.read_text(encoding="utf-8"))
    for k in range(24):
        (folder / f"part-{k:02d}.json").write_text(
            json.dumps([{**doc, "docid": f"{doc['docid']}-{k}"} for doc in docs]), encoding="utf-8")
    return folder


def test_prepare_trex_killed_at_random_moments_leaves_nothing_half_written(dumps, tmp_path, cli):
    workdir = tmp_path / "work"
    out = workdir / "trex-rc"
    args = ("prepare-trex", dumps, "--min-count", "1")

    # A second writer of the same output, while the first one holds it, is refused by name.
    first = start(workdir, *args)
    assert wait_for(lambda: (workdir / ".trex-rc.lock").exists(), first)
    second = cli(*args, workdir_path=workdir)
    assert second.exit_code == 2
    assert f"error: {out}: another kadapter command (pid {first.pid}) is writing this output" in second.stderr
    kill(first)

    reference = tmp_path / "reference"
    writing = timed_run(reference, reference / "trex-rc", args)
    assert interrupt_at_random_moments(workdir, out, args, kills=3, writing=writing) >= 1
    # A killed writer's scratch folder and lock are left behind; the next run clears them and finishes.
    final = start(workdir, *args)
    assert final.wait(timeout=300) == 0
    assert assert_absent_or_complete(out)
    assert scratch(out) == []
    for name in ("train.jsonl", "dev.jsonl", "relations.json"):
        assert (out / name).read_bytes() == (reference / "trex-rc" / name).read_bytes(), name

    # Killed while rebuilding it with --overwrite: the finished output is still there, whole.
    rebuild = start(workdir, *args, "--overwrite")
    assert wait_for((out.parent / f".trex-rc.tmp-{rebuild.pid}").exists, rebuild)
    time.sleep(RNG.uniform(0.0, 0.8 * writing))
    kill(rebuild)
    assert assert_absent_or_complete(out)
    assert start(workdir, *args, "--overwrite").wait(timeout=300) == 0
    assert scratch(out) == []


def test_parse_killed_at_random_moments_leaves_nothing_half_written(shared_data, tmp_path):
    trees = tmp_path / "trees"
    trees.mkdir()
    source = next((shared_data / "ud-english-ewt").glob("*.conllu"))
    for k in range(8):
        shutil.copy(source, trees / f"part-{k}.conllu")
    workdir = tmp_path / "work"
    out = workdir / "parsed"
    args = ("parse", trees, "--parser", "conllu")
    reference = tmp_path / "reference"
    writing = timed_run(reference, reference / "parsed", args)
    assert interrupt_at_random_moments(workdir, out, args, kills=2, writing=writing) >= 1
    assert start(workdir, *args).wait(timeout=300) == 0
    assert assert_absent_or_complete(out)
    assert scratch(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stats"]["sentences"] == 8 * 1006
    for name in ("train.jsonl", "dev.jsonl"):
        assert (out / name).read_bytes() == (reference / "parsed" / name).read_bytes(), name


def test_training_killed_then_resumed_ends_with_the_same_weights(tmp_path, tiny_backbone, make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc")
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--max-steps", "12",
            "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--cache-features", "off",
            "--save-every", "1", "--eval-every", "4", "--seed", "3")
    reference_dir = tmp_path / "reference"
    workdir = tmp_path / "work"
    out = workdir / "adapters" / "fac"
    checkpoints = out.parent / ".fac.partial" / "checkpoints"

    # The uninterrupted run and the one to be killed run side by side (they start at the same cost).
    reference = start(reference_dir, *args, log=tmp_path / "reference.log")
    run = start(workdir, *args, log=tmp_path / "run.log")
    def latest_step() -> int:
        return max((int(p.name[5:]) for p in checkpoints.glob("step-*") if p.name[5:].isdigit()), default=0)

    kill_after = RNG.randint(1, 6)  # the checkpoint after which the kill comes
    assert wait_for(lambda: latest_step() >= kill_after, run, timeout=300)
    time.sleep(RNG.uniform(0.0, 0.2))
    assert kill(run) == -signal.SIGKILL, (tmp_path / "run.log").read_text()
    assert not assert_absent_or_complete(out)  # killed mid-training: no adapter folder at all
    assert 1 <= latest_step() < 12

    resumed = start(workdir, *args, "--resume", log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    assert "resuming from" in (tmp_path / "resume.log").read_text()
    assert assert_absent_or_complete(out)
    assert scratch(out) == []
    expected = reference_dir / "adapters" / "fac"
    for name in ("kadapter_adapter.safetensors", "kadapter_head.safetensors"):
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name


# ---------------------------------------------------------------- interrupted runs are never thrown away

TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"


def _training_args(command: str, tiny_backbone: Path, data: Path) -> tuple:
    loop = ("--max-steps", "8", "--batch-size", "4", "--max-length", "24", "--device", "cpu",
            "--save-every", "1", "--eval-every", "4", "--seed", "3", "--lr", "1e-3", "--limit", "40")
    if command == "train-adapter":
        return ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone,
                "--cache-features", "off", *loop)
    return ("finetune", "--task", "openentity", "--data", TYPING, "--backbone", tiny_backbone, *loop)


def _weights(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("kadapter_adapter.safetensors", "model.safetensors")
            if (folder / name).exists()}


def _checkpoint_steps(partial: Path) -> list[str]:
    """Complete checkpoints, oldest first (`step-<N>` with its state.json)."""
    done = [p for p in (partial / "checkpoints").glob("step-*") if (p / "state.json").is_file()]
    return [p.name for p in sorted(done, key=lambda p: int(p.name[5:]))]


def _reached(partial: Path, step: int) -> bool:
    steps = _checkpoint_steps(partial)
    return bool(steps) and int(steps[-1][5:]) >= step


def _interrupt(process: subprocess.Popen, partial: Path, after_step: int, how: signal.Signals, log: Path) -> str:
    """Sends `how` once a checkpoint at or after `after_step` exists; returns the checkpoint left behind."""
    assert wait_for(lambda: _reached(partial, after_step), process, timeout=300), log.read_text()
    process.send_signal(how)
    code = process.wait(timeout=60)
    assert code == (130 if how == signal.SIGINT else -signal.SIGKILL), log.read_text()
    return _checkpoint_steps(partial)[-1]


@pytest.mark.parametrize("command", ["train-adapter", "finetune"])
def test_interrupted_training_is_refused_without_resume_and_resumed_with_it(command, tmp_path, tiny_backbone, cli,
                                                                             make_trex_rc):
    """Ctrl-C, then kill -9 of the resumed run: each time the rerun without --resume is refused and
    deletes nothing; --resume ends with the weights of an uninterrupted run."""
    args = _training_args(command, tiny_backbone, make_trex_rc(tmp_path / "trex-rc"))
    workdir = tmp_path / "work"
    out = workdir / ("adapters/fac" if command == "train-adapter" else "finetuned/openentity-base")
    partial = out.parent / f".{out.name}.partial"
    reference = start(tmp_path / "reference", *args, log=tmp_path / "reference.log")

    for how, after_step, extra in ((signal.SIGINT, 3, ()), (signal.SIGKILL, 5, ("--resume",))):
        log = tmp_path / f"run-{how.name}.log"
        last = _interrupt(start(workdir, *args, *extra, log=log), partial, after_step, how, log)
        if how == signal.SIGINT:
            assert f"interrupted: the run is kept in {partial} (last checkpoint {last}); rerun the same " \
                   "command with --resume to continue or --overwrite to start again" in log.read_text()
        kept = _checkpoint_steps(partial)
        again = cli(*args, workdir_path=workdir)
        assert again.exit_code == 2
        assert again.stderr.strip() == (f"error: {out}: an interrupted run exists (last checkpoint {last}); "
                                        "pass --resume to continue or --overwrite to start again")
        assert _checkpoint_steps(partial) == kept and not out.exists()

    resumed = start(workdir, *args, "--resume", log=tmp_path / "resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()
    assert f"resuming from {partial / 'checkpoints' / last}" in (tmp_path / "resume.log").read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    expected = tmp_path / "reference" / out.relative_to(workdir)
    assert _weights(out) and _weights(out) == _weights(expected)
    assert scratch(out) == []


def test_resume_on_a_finished_finetune_has_nothing_to_do(tmp_path, tiny_backbone, cli):
    args = _training_args("finetune", tiny_backbone, tmp_path)
    assert cli(*args, "--max-steps", "2").exit_code == 0
    out = cli.workdir / "finetuned" / "openentity-base"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli(*args, "--max-steps", "2", "--resume")
    assert again.exit_code == 0
    assert f"{out} is complete: nothing to resume" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


RUN_PIPELINE = """\
stages:
  - name: train-fac
    command: train-adapter
    options: {{kind: fac, data: {data}, backbone: {backbone}, max-steps: 8, batch-size: 4, max-length: 24,
              device: cpu, save-every: 1, eval-every: 4, seed: 3, lr: 1.0e-3, cache-features: "off"}}
"""


def test_run_resumes_an_interrupted_training_stage_by_itself(tmp_path, tiny_backbone, make_trex_rc):
    """`kadapter run` after Ctrl-C, then after kill -9 of the rerun: it resumes the stage from its
    checkpoints by itself, and ends with the weights of an uninterrupted run."""
    data = make_trex_rc(tmp_path / "trex-rc")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(RUN_PIPELINE.format(data=data, backbone=tiny_backbone))
    workdir = tmp_path / "work"
    partial = workdir / "adapters" / ".fac.partial"
    reference = start(tmp_path / "reference", "run", pipeline, log=tmp_path / "reference.log")

    log = tmp_path / "run.log"
    last = _interrupt(start(workdir, "run", pipeline, log=log), partial, 3, signal.SIGINT, log)
    assert "stage 'train-fac' was interrupted" in log.read_text()
    assert "rerunning resumes it from its last checkpoint if its options and inputs are unchanged" in log.read_text()
    for how in (signal.SIGKILL, None):
        log = tmp_path / f"rerun-{how}.log"
        rerun = start(workdir, "run", pipeline, log=log)
        if how is not None:
            wait_for(lambda: f"resuming from {partial / 'checkpoints' / last}" in log.read_text(), rerun)
            previous, last = last, _interrupt(rerun, partial, int(last[5:]) + 2, how, log)
            assert f"train-fac: resuming the interrupted run from {previous} (options and inputs unchanged)" \
                in log.read_text()
    assert rerun.wait(timeout=300) == 0, log.read_text()
    assert f"train-fac: resuming the interrupted run from {last} (options and inputs unchanged)" in log.read_text()
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    assert _weights(workdir / "adapters" / "fac") == _weights(tmp_path / "reference" / "adapters" / "fac")
