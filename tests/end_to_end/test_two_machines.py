"""Two machines, as on a cluster, played on loopback: two `accelerate launch` commands, machine ranks
0 and 1, one CPU process each, the main one at 127.0.0.1 (docs: Paper scale, "Several machines").

Each training command gives the artifact two processes on one machine give, byte for byte. The main
process (rank 0 of the run, on machine 0) owns the output: with one output folder that both machines
write to (a shared file system), it is written once; with a folder each (separate disks), machine 0's
holds the artifact and machine 1's holds nothing, neither an artifact nor a `.partial` folder."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import pytest
from helpers.launching import (
    assert_one_owner_wrote,
    free_port,
    kill_tree,
    machine,
    one_machine,
    run,
    run_machines,
    start_machines,
)

pytestmark = pytest.mark.slow

FAST = ["--batch-size", "8", "--lr", "1e-3", "--max-length", "48", "--seed", "5"]
CORPUS = ["The capital of France is Paris and it is a large city.", "Dante was born in Florence in Italy.",
          "The Eiffel Tower stands in Paris, on the left bank of the Seine."]
# finetune-frozen: `finetune --freeze-backbone` with its features cached on disk (a cache each process writes)
COMMANDS = ("train-adapter", "finetune", "finetune-frozen", "train-probe")
FROZEN = ["--freeze-backbone", "--cache-features", "on", "--cache-budget", "0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data, tiny_backbone) -> dict[str, Path]:
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    root = tmp_path_factory.mktemp("machines")
    workdir = root / "work"
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "prepare-trex", str(shared_data / "trex"),
                                      "--min-count", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 6) + "\n")
    return {"workdir": workdir, "backbone": tiny_backbone, "corpus": corpus, "root": root,
            "openentity": shared_data / "openentity" / "ernie-format"}


def _arguments(command: str, inputs: dict[str, Path], out: Path) -> list[str]:
    cli_command = command.removesuffix("-frozen")
    common = ["--workdir", str(inputs["workdir"]), cli_command, "--backbone", str(inputs["backbone"]), "--out",
              str(out), *FAST]
    if command == "train-adapter":  # dev evaluated at every epoch's end: the best weights go to every process
        return [*common, "--kind", "fac", "--name", out.name, "--limit", "16", "--max-steps", "4", "--eval-every", "2"]
    if cli_command == "finetune":
        return [*common, "--task", "openentity", "--data", str(inputs["openentity"]), "--name", out.name,
                "--limit", "12", "--max-steps", "3", "--json", *(FROZEN if command == "finetune-frozen" else [])]
    return [*common, "--corpus", str(inputs["corpus"]), "--name", out.name, "--max-steps", "3"]


def _weights(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def one_machine_outputs(inputs) -> Callable[[str], Path]:
    """`one_machine_outputs(command)`: the command under two processes on one machine (run once, on
    first use): what two machines must give."""
    outputs: dict[str, Path] = {}

    def output(command: str) -> Path:
        if command not in outputs:
            out = inputs["root"] / "one-machine" / command
            run(one_machine(*_arguments(command, inputs, out)), timeout=300)
            outputs[command] = out
        return outputs[command]

    return output


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("folders", ["shared", "separate"])
def test_two_machines_give_the_one_machine_artifact(inputs, one_machine_outputs, command, folders):
    root = inputs["root"] / f"{folders}-{command}"
    # Shared: both machines name the same folder. Separate: each machine its own (on one disk here,
    # as two machines' disks would be).
    outs = [root / "out" / command] * 2 if folders == "shared" else [root / f"machine-{r}" / command for r in (0, 1)]
    port = free_port()
    done = run_machines([machine(rank, port, *_arguments(command, inputs, outs[rank])) for rank in (0, 1)],
                        timeout=400)

    reference = one_machine_outputs(command)
    manifest = assert_one_owner_wrote(outs[0])
    if command != "train-probe":  # the probe's manifest records no batch split
        assert manifest["stats"]["batch_split"]["processes"] == 2
    assert _weights(outs[0]) == _weights(reference) and _weights(reference)
    assert sorted(p.name for p in outs[0].iterdir()) == sorted(p.name for p in reference.iterdir())
    if command.startswith("finetune"):  # the same predictions, printed once by machine 0
        assert (outs[0] / "predictions-test.jsonl").read_text() == (reference / "predictions-test.jsonl").read_text()
        assert json.loads(done[0].stdout) == json.loads((outs[0] / "metrics.json").read_text())
    assert done[1].stdout.strip() == ""  # machine 1 prints nothing
    if folders == "separate":
        left = sorted(p.relative_to(root).as_posix() for p in (root / "machine-1").rglob("*"))
        assert left == [], f"machine 1's output folder holds {left}"


def test_resume_on_a_folder_each_is_refused_alike_on_every_machine(inputs):
    """A run on two machines, each with its own output folder, interrupted once machine 0 holds a
    checkpoint; `--resume` then is refused on both machines with the same message, exit 2, as
    machine 1 cannot see machine 0's checkpoints, and nothing is deleted (docs: Paper scale, "Several machines")."""
    root = inputs["root"] / "resume-separate"
    outs = [root / f"machine-{rank}" / "fac" for rank in (0, 1)]
    checkpoints = outs[0].parent / ".fac.partial" / "checkpoints"
    args = ["--workdir", str(inputs["workdir"]), "train-adapter", "--backbone", str(inputs["backbone"]), *FAST,
            "--kind", "fac", "--limit", "16", "--max-steps", "400", "--save-every", "1"]
    port = free_port()
    launchers = start_machines([machine(rank, port, *args, "--out", str(outs[rank])) for rank in (0, 1)])
    try:
        deadline = time.monotonic() + 240
        while not any(checkpoints.glob("step-*/state.json")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in launchers), \
                [p.communicate()[1][-3000:] for p in launchers if p.poll() is not None]
            time.sleep(0.5)
    finally:
        for launcher in launchers:
            kill_tree(launcher.pid)
            launcher.communicate()
    assert not any(outs[1].parent.glob(".fac.partial/checkpoints/step-*"))  # machine 1 wrote none

    resume_port = free_port()
    done = run_machines([machine(rank, resume_port, *args, "--out", str(outs[rank]), "--resume") for rank in (0, 1)],
                        timeout=300, check=False)
    for rank, machine_done in enumerate(done):
        stderr = machine_done.stderr
        # The process exits 2; its launcher (torch elastic) reports that and exits 1
        assert machine_done.returncode == 1 and re.search(r"exitcode\s*: 2 ", stderr), (rank, stderr[-4000:])
        assert ("--resume: the main process resumes from step-" in stderr and ", process 1 finds no checkpoint; on "
                "several machines a run resumes only where they all read the main process's output folder (a shared "
                "file system): start again with --overwrite or put the output folder on one" in stderr), (rank, stderr)
        assert "/kadapter_cli/" not in stderr, (rank, stderr[-4000:])  # no traceback but the launcher's own
    assert any(checkpoints.glob("step-*/state.json")) and not outs[0].exists()
