"""`--deterministic`: the option reaches torch (deterministic algorithms, the cuBLAS workspace,
cuDNN) before the run's first CUDA work, from each training command; and a run resumed with it on
the CPU still ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import os

import pytest
import torch

from kadapter_cli.training import setup
from kadapter_cli.training.config import TrainConfig


class TorchRecorder:
    """Stands in for the process-wide switches `--deterministic` sets (the cuDNN and cuBLAS ones act
    only on CUDA): records what the run sets them to, and leaves the real ones untouched."""

    def __init__(self, monkeypatch, cuda_started: bool = False):
        self.algorithms: list[bool] = []
        self.enabled = False
        monkeypatch.setattr(torch, "use_deterministic_algorithms", self._use)
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: self.enabled)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_started)
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        monkeypatch.setattr(setup, "_determinism_saved", None)

    def _use(self, mode: bool, warn_only: bool = False) -> None:
        self.algorithms.append(mode)
        self.enabled = mode


def test_deterministic_sets_torch_cublas_and_cudnn_before_the_accelerator(monkeypatch):
    recorder = TorchRecorder(monkeypatch)
    seen_at_accelerator = {}

    class Accelerator:  # the state torch is in when Accelerate (and CUDA work after it) starts
        def __init__(self, **kwargs):
            seen_at_accelerator.update(algorithms=recorder.enabled, cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                                       cudnn=(torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))

    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", Accelerator)
    setup.make_accelerator(TrainConfig(device="cpu", deterministic=True))
    assert seen_at_accelerator == {"algorithms": True, "cublas": ":4096:8", "cudnn": (True, False)}

    # A later stage of the same process without the option gets back what was there before.
    setup.make_accelerator(TrainConfig(device="cpu"))
    assert recorder.algorithms == [True, False]
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)


def test_without_the_option_nothing_is_touched(monkeypatch):
    recorder = TorchRecorder(monkeypatch)
    setup.set_deterministic(False)
    assert recorder.algorithms == []
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)


@pytest.mark.parametrize("user_value, during_the_run", [
    (":16:8", ":16:8"),  # already deterministic: kept
    (":0:0", ":4096:8"),  # not deterministic: replaced for the run
])
def test_a_user_workspace_is_kept_or_replaced_then_given_back(user_value, during_the_run, monkeypatch):
    TorchRecorder(monkeypatch)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", user_value)
    setup.set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == during_the_run
    setup.set_deterministic(False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == user_value


def test_cuda_started_before_the_option_is_warned_about_in_full(monkeypatch, capsys):
    TorchRecorder(monkeypatch, cuda_started=True)
    setup.set_deterministic(True)
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: deterministic=True came after CUDA started in this process; set "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment for deterministic cuBLAS") in err
    setup.set_deterministic(False)


@pytest.mark.parametrize("command, stage, function", [
    ("train-adapter", "kadapter_cli.stages.pretrain", "train_adapter"),
    ("train-probe", "kadapter_cli.stages.probe", "train_probe"),
    ("finetune", "kadapter_cli.stages.finetune", "finetune"),
])
def test_each_training_command_passes_the_flag_to_the_loop(command, stage, function, cli, monkeypatch, tmp_path):
    import importlib

    configs = []

    def stand_in(spec, config, *args, **kwargs):
        configs.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module(stage), function, stand_in)
    args = {"train-adapter": ["--kind", "fac"], "train-probe": ["--corpus", str(tmp_path / "corpus.txt")],
            "finetune": ["--task", "openentity", "--adapters", "none"]}[command]
    for flags, expected in (([], False), (["--deterministic"], True)):
        cli(command, *args, *flags)
        assert configs.pop().deterministic is expected


class _Killed(Exception):
    pass


def test_a_resumed_run_with_deterministic_matches_an_uninterrupted_one(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    class Objective(ToyObjective):
        """The toy objective; `killed_at`: the run dies inside that step (1-based)."""

        def __init__(self, killed_at=None):
            super().__init__()
            self.calls, self.killed_at = 0, killed_at

        def loss(self, model, batch):
            self.calls += 1
            if self.calls == self.killed_at:
                raise _Killed
            return super().loss(model, batch)

    def run(run_dir, killed_at=None, resume=False):
        config = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup=0.1, log_every=5, save_every=7, seed=3,
                             device="cpu", deterministic=True)
        model = build_model(3)
        try:
            train(model, Objective(killed_at), toy_examples(96, 1), toy_examples(24, 2), config, run_dir,
                  resume=resume)
        except _Killed:
            return None
        assert torch.are_deterministic_algorithms_enabled()  # the option was on during the run
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    try:
        whole = run(tmp_path / "whole")
        assert run(tmp_path / "killed", killed_at=17) is None  # killed in step 17: the last checkpoint is step 14
        resumed = run(tmp_path / "killed", resume=True)
    finally:
        setup.set_deterministic(False)
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    assert (tmp_path / "whole" / "best.safetensors").read_bytes() == (tmp_path / "killed" / "best.safetensors").read_bytes()
