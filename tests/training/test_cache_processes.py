"""The feature cache under several processes: the memory budget (the default one or `--cache-budget`)
is a machine's, shared by its processes; the free disk is shared by the processes that write to it;
and every process takes the same decision, even when one of them sees less free space (a process
that cached while another did not would hold a model of another shape, and their first collective
would never match)."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import pytest
from helpers.launching import launch_env, one_machine, run

from kadapter_cli.training.feature_cache import FAKE_FREE_DISK, GiB, attach_cache


def _attach(tmp_path, **options):
    # Three examples, 6 tokens, one state 4 wide: 48 bytes in fp16.
    splits = [[{"input_ids": [1, 2, 3]}, {"input_ids": [5, 6]}], [{"input_ids": [7]}]]

    def compute(ids, mask):
        return [ids[..., None].float().expand(*ids.shape, 4)]

    return attach_cache(splits, compute, **{**dict(n_states=1, hidden=4, pad_id=0, batch_size=8, mode="auto",
                                                   folder=tmp_path / "fc"), **options})


def _disk_with_free(monkeypatch, free: int) -> None:
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(free * 4, free * 3, free))


@pytest.mark.parametrize("local_processes, storage", [("1", "memory"), ("2", "disk")])
def test_a_given_budget_is_shared_by_the_processes_of_a_machine(tmp_path, monkeypatch, local_processes, storage):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    _disk_with_free(monkeypatch, 100 * GiB)
    # 48 bytes: within a budget of 80, not within each of two processes' 40.
    assert _attach(tmp_path, budget_gib=80 / GiB) == storage


@pytest.mark.parametrize("local_processes, storage", [("1", "disk"), ("2", None)])
def test_the_free_disk_is_shared_by_the_processes_of_a_machine(tmp_path, monkeypatch, local_processes, storage):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    # At most half the free disk: 48 bytes fit in half of 100, not in half of each of two processes' 50.
    _disk_with_free(monkeypatch, 100)
    assert _attach(tmp_path, budget_gib=0) == storage


def test_a_test_may_make_one_rank_see_less_free_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv(FAKE_FREE_DISK, "0:100,1:0")
    monkeypatch.setenv("RANK", "0")
    assert _attach(tmp_path, budget_gib=0) == "disk"
    monkeypatch.setenv("RANK", "1")
    assert _attach(tmp_path, budget_gib=0) is None


@pytest.mark.slow
def test_two_processes_decide_alike_when_one_sees_no_free_disk(tmp_path, shared_data, tiny_backbone):
    """Memory is ruled out (`--cache-budget 0`); the main process sees room on disk, the other none.
    Each used to decide alone: the main process cached and dropped its backbone, the other kept it,
    and the launch died (or hung) at its first collective. Now both go without a cache."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir = tmp_path / "work"
    prepared = CliRunner().invoke(app, ["--workdir", str(workdir), "prepare-trex", str(shared_data / "trex"),
                                        "--min-count", "1"], catch_exceptions=False)
    assert prepared.exit_code == 0, prepared.output

    def command(name: str) -> list[str]:
        return one_machine("--workdir", str(workdir), "train-adapter", "--kind", "fac", "--name", name,
                           "--backbone", str(tiny_backbone), "--batch-size", "8", "--max-length", "48",
                           "--max-steps", "2", "--limit", "16", "--cache-features", "auto", "--cache-budget", "0")

    run(command("fac"), timeout=180, env=launch_env(**{FAKE_FREE_DISK: "1:0"}))
    manifest = json.loads((workdir / "adapters" / "fac" / "manifest.json").read_text())
    assert manifest["stats"]["feature_cache"] == "off"
    # With room on both, both cache on disk.
    run(command("fac-disk"), timeout=180)
    manifest = json.loads((workdir / "adapters" / "fac-disk" / "manifest.json").read_text())
    assert manifest["stats"]["feature_cache"] == "disk"
