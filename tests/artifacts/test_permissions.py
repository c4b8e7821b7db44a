"""Sharing a workdir: every file of every artifact the CLI writes has the umask's permissions (0644
and 0755 folders under umask 022), so a colleague — another Unix user — reads all of it.

safetensors' `save_file` writes its files 0600; before the fix the weights of adapters, finetuned
models and probes could not be opened by anyone but their writer (docs/artifacts.md, "Sharing").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kadapter_cli.artifacts.layout import DEMO_DATA

FAST = ("--max-steps", "1", "--batch-size", "4", "--max-length", "32")
KINDS = ("trex-rc", "parsed", "adapters/fac", "adapters/lin", "compositions/fac+lin", "finetuned/openentity-fac",
         "evaluations/openentity-fac-dev", "probes/fac", "tiny-backbone")


@pytest.fixture(scope="module")
def shared_workdir(tiny_backbone):
    """Every kind of artifact, written through the CLI under umask 022, in a folder every user may
    enter (pytest's own temporary folders are 0700)."""
    from kadapter_cli.cli import app

    root = Path(tempfile.mkdtemp(prefix="kadapter-share-"))
    root.chmod(0o755)
    workdir = root / "work"
    runner = CliRunner()

    def run(*args) -> None:
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, f"kadapter {' '.join(map(str, args))} failed:\n{result.output}"

    old = os.umask(0o022)
    try:
        run("tiny-backbone", workdir / "tiny-backbone")
        run("prepare-trex", DEMO_DATA / "trex" / "re-nlg_demo-0.json", "--min-count", "1")
        run("parse", DEMO_DATA / "corpus" / "corpus.conllu", "--parser", "conllu")
        run("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, *FAST, "--limit", "16")
        run("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *FAST, "--limit", "16")
        run("compose", "fac", "lin")
        run("finetune", "--task", "openentity", "--data", DEMO_DATA / "typing", "--adapters", "fac", *FAST,
            "--limit", "8")
        run("evaluate", workdir / "finetuned" / "openentity-fac", "--data", DEMO_DATA / "typing", "--split", "dev")
        run("train-probe", "--adapters", "fac", "--corpus", DEMO_DATA / "lama" / "corpus.txt", *FAST, "--limit", "8")
        yield workdir
    finally:
        os.umask(old)
        shutil.rmtree(root, ignore_errors=True)


def _tree(folder: Path) -> tuple[list[Path], list[Path]]:
    paths = [folder, *folder.rglob("*")]
    return [p for p in paths if p.is_file()], [p for p in paths if p.is_dir()]


def test_every_artifact_file_has_the_umasks_mode(shared_workdir):
    for kind in KINDS:
        files, folders = _tree(shared_workdir / kind)
        assert (shared_workdir / kind / "manifest.json") in files, kind
        assert {oct(f.stat().st_mode & 0o7777) for f in files} == {"0o644"}, (
            kind, {f.name: oct(f.stat().st_mode & 0o777) for f in files if f.stat().st_mode & 0o777 != 0o644})
        assert {oct(d.stat().st_mode & 0o7777) for d in folders} == {"0o755"}, kind
    weights = list(shared_workdir.rglob("*.safetensors"))
    assert len(weights) >= 5  # adapters (weights + head), finetuned model, probe, tiny backbone


def test_another_user_reads_every_artifact_file(shared_workdir):
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root to switch users; the modes are checked above")
    files, folders = _tree(shared_workdir)
    other = 65534  # nobody
    for folder in folders:
        listed = subprocess.run(["ls", folder], user=other, group=other, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
    read = subprocess.run(["cat", *files], user=other, group=other, capture_output=True)
    assert read.returncode == 0, read.stderr.decode()
    assert len(read.stdout) == sum(f.stat().st_size for f in files)


def test_the_mode_follows_the_umask(tmp_path):
    """A stricter umask is honoured too: the fix gives the umask's mode, not a fixed 0644."""
    from kadapter_cli.artifacts.output import atomic_output

    old = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            secret = tmp / "sub" / "w.bin"
            secret.write_bytes(b"x")
            secret.chmod(0o600)  # as safetensors' save_file leaves its files
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "sub" / "w.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
