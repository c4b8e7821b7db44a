"""The training loop: schedule, frozen parameters, checkpoints, exact resume, best-checkpoint selection,
logs, out-of-memory errors, and the same code under `accelerate launch` with two processes."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.kill_helpers import kill_after_checkpoint
from helpers.train_toy import ToyObjective, build_model, toy_examples
from safetensors.torch import load_file

from kadapter_cli.artifacts.output import latest_checkpoint, remove_checkpoints
from kadapter_cli.errors import BadInput, KadapterError
from kadapter_cli.training.checkpoints import copy_into, write_checkpoint
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.loop import evaluate, train
from kadapter_cli.training.rng import rng_state, set_rng_state
from kadapter_cli.training.setup import (
    TrainingOutOfMemory,
    adamw,
    is_out_of_memory,
    make_accelerator,
    warmup_then_linear_decay,
)

TOY_SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "train_toy.py"
REPO = TOY_SCRIPT.parents[2]
TIMING_FIELDS = {"examples_per_s", "tokens_per_s", "ms_per_step", "model_tflops", "eval_seconds", "train_seconds", "mfu"}


class Interrupted(Exception):
    """Stands in for a kill inside one process."""


class InterruptingObjective(ToyObjective):
    """Raises on the `at`-th call of `loss` (1-based), i.e. in the middle of training."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupted
        return super().loss(model, batch)


def _config(**overrides) -> TrainConfig:
    defaults = dict(epochs=2, batch_size=8, lr=3e-3, warmup=0.1, log_every=2, seed=7, device="cpu")
    return TrainConfig(**{**defaults, **overrides})


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def _training_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in lines]


def _run(n_train: int, config: TrainConfig, run_dir: Path, objective=None, resume: bool = False, n_dev: int = 30):
    model = build_model(config.seed)
    result = train(model, objective or ToyObjective(), toy_examples(n_train, 1), toy_examples(n_dev, 2),
                   config, run_dir, resume=resume)
    return model, result


# ---------------------------------------------------------------- optimisation


def test_learning_rate_warms_up_then_decays_linearly_to_zero(tmp_path):
    config = _config(lr=1e-2, warmup=4, max_steps=10, log_every=1, epochs=5)
    _run(80, config, tmp_path / "run")
    lrs = {line["step"]: line["lr"] for line in _training_lines(tmp_path / "run") if "lr" in line}
    expected = {s: 1e-2 * (s / 4 if s < 4 else (10 - s) / 6) for s in range(1, 11)}
    assert lrs.keys() == expected.keys()
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr)


def test_optimizer_steps_before_the_scheduler(tmp_path):
    # With warm-up the schedule starts at lr 0: if the scheduler stepped first (the original's order)
    # the first update would already use lr/warmup and move the weights.
    initial = _weights(build_model(7))
    warm, _ = _run(40, _config(max_steps=1, warmup=4), tmp_path / "warm")
    _assert_identical(_weights(warm), initial)
    cold, _ = _run(40, _config(max_steps=1, warmup=0), tmp_path / "cold")
    assert not torch.equal(cold.out.weight, initial["out.weight"])


def test_only_trainable_parameters_change_and_are_saved(tmp_path):
    initial = _weights(build_model(7))
    model, _ = _run(48, _config(epochs=1), tmp_path / "run")
    after = _weights(model)
    for frozen in ("embed.weight", "frozen_projection.weight", "frozen_projection.bias"):
        assert torch.equal(after[frozen], initial[frozen])
    assert not torch.equal(after["hidden.weight"], initial["hidden.weight"])
    trainable = {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert set(load_file(tmp_path / "run" / "best.safetensors")) == trainable
    assert set(load_file(latest_checkpoint(tmp_path / "run") / "model.safetensors")) == trainable


def test_bf16_autocast_runs_on_cpu(tmp_path):
    model, result = _run(48, _config(epochs=1, precision="bf16"), tmp_path / "run")
    assert result.steps == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_without_a_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: fp16 is allowed")
    with pytest.raises(BadInput, match="precision=fp16 needs a CUDA device"):
        _run(16, _config(precision="fp16"), tmp_path / "run")


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
])
def test_out_of_memory_names_the_options_to_lower(tmp_path, monkeypatch, error):
    def out_of_memory(self, model, batch):
        raise error

    monkeypatch.setattr(ToyObjective, "loss", out_of_memory)
    with pytest.raises(TrainingOutOfMemory) as caught:
        _run(16, _config(), tmp_path / "run")
    message = str(caught.value)
    assert "out of memory during training step 1" in message
    for option in ("batch_size", "max_length", "cache_features"):
        assert option in message
    assert caught.value.exit_code == 2  # a user-actionable error, not an internal failure


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(tmp_path, monkeypatch):
    def broken(self, model, batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ToyObjective, "loss", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _run(16, _config(), tmp_path / "run")


@pytest.mark.parametrize("option, value, shown", [
    ("batch_size", 0, "^batch_size must be at least 1"),
    ("warmup", -1, "^warmup must be at least 0"),
    ("lr", 0.0, "^lr must be positive"),
    ("precision", "fp8", "^precision must be auto, fp32, bf16 or fp16"),
    ("save_every", 0, "^save_every must be at least 1"),
    ("adam_beta2", 1.0, r"^adam_beta2 must be in \[0, 1\)"),
    ("adam_beta1", -0.1, r"^adam_beta1 must be in \[0, 1\)"),
])
def test_invalid_options_are_bad_input_naming_the_option(option, value, shown):
    with pytest.raises(BadInput, match=shown):
        TrainConfig.from_options({option: value})


def test_adamw_takes_betas_and_eps_from_the_config():
    from kadapter_cli.training.setup import adamw as _adamw

    params = [("w", torch.nn.Parameter(torch.zeros(2, 2))), ("b", torch.nn.Parameter(torch.zeros(2)))]
    optimizer = _adamw(params, TrainConfig(adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-6))
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.9), 1e-6)}


def test_warmup_is_steps_or_a_share_of_total_steps():
    assert TrainConfig(warmup=0.1).warmup_steps(90) == 9
    assert TrainConfig(warmup=5).warmup_steps(90) == 5
    assert TrainConfig(warmup=0).warmup_steps(90) == 0


def test_config_from_command_options_keeps_none_for_off_and_defaults_for_unset():
    config = TrainConfig.from_options({"epochs": None, "max_steps": None, "batch_size": 4, "backbone": "x"})
    assert (config.epochs, config.max_steps, config.batch_size) == (3, None, 4)


def test_a_diverging_loss_stops_training_with_advice(tmp_path, monkeypatch):
    original = ToyObjective.loss

    def nan_loss(self, model, batch):
        return original(self, model, batch) * float("nan")

    monkeypatch.setattr(ToyObjective, "loss", nan_loss)
    with pytest.raises(KadapterError, match=r"training diverged: the loss is nan at step 2; lower lr"):
        _run(32, _config(log_every=2), tmp_path / "run")


# ---------------------------------------------------------------- evaluation, logs, best checkpoint


def test_evaluate_returns_outputs_in_input_order(tmp_path):
    model = build_model(7)
    dev = toy_examples(37, 2)
    metrics, outputs = evaluate(model, ToyObjective(), dev, _config(batch_size=5))
    assert [o["id"] for o in outputs] == [e["id"] for e in dev]
    assert metrics["n"] == 37 and metrics["in_order"] == 1.0


class ScriptedObjective(ToyObjective):
    """Dev scores follow a script; keeps the weights each evaluation saw, to check which are kept."""

    def __init__(self, script: list[float]):
        super().__init__()
        self.script, self.snapshots, self._new_evaluation = script, [], True

    def predict(self, model, batch):
        if self._new_evaluation:  # first batch of an evaluation: these are the weights being scored
            self.snapshots.append(_weights(model))
            self._new_evaluation = False
        return super().predict(model, batch)

    def score(self, outputs, examples):
        self._new_evaluation = True
        return {"accuracy": self.script[len(self.snapshots) - 1]}


def test_best_dev_checkpoint_is_selected_and_loaded_back(tmp_path):
    objective = ScriptedObjective([0.2, 0.9, 0.4, 0.5])
    model, result = _run(80, _config(epochs=5, max_steps=8, eval_every=2, save_every=2), tmp_path / "run",
                         objective=objective)
    assert (result.best_step, result.steps) == (4, 8)
    assert result.best_metrics == {"accuracy": 0.9} and result.final_metrics == {"accuracy": 0.5}
    _assert_identical(_weights(model), objective.snapshots[1])
    dev_lines = [line for line in _training_lines(tmp_path / "run") if "dev" in line]
    assert [(d["step"], d["best"]) for d in dev_lines] == [(2, True), (4, True), (6, False), (8, False)]


def test_train_log_has_throughput_lines_and_a_summary(tmp_path):
    _, result = _run(48, _config(epochs=2, log_every=2), tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [2, 4, 6, 8, 10, 12]
    for line in train_lines:
        assert {"epoch", "lr", "loss", "grad_norm", "examples_per_s", "tokens_per_s", "ms_per_step", "model_tflops"} <= line.keys()
        assert math.isfinite(line["loss"]) and line["examples_per_s"] > 0 and line["tokens_per_s"] > line["examples_per_s"]
    assert [x["epoch"] for x in lines if "dev" in x] == [1.0, 2.0]
    assert lines[-1]["best_step"] == result.best_step and lines[-1]["best_dev"] == result.best_metrics
    assert result.throughput["examples_per_s"] > 0


# ---------------------------------------------------------------- checkpoints and resume


def test_checkpoints_are_complete_safe_to_load_and_only_the_last_two_are_kept(tmp_path):
    run = tmp_path / "run"
    _run(48, _config(epochs=2, save_every=4), run)
    folders = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert folders == ["step-12", "step-8"]
    ckpt = run / "checkpoints" / "step-12"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)  # no arbitrary pickles
    assert optim["scheduler"]["last_epoch"] == 12 and optim["optimizer"]["state"]
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    assert rng["world_size"] == 1 and isinstance(rng["ranks"][0]["torch"], torch.Tensor)
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["step"], state["epoch"], state["steps_in_epoch"]) == (12, 2, 0)
    assert state["batch_split"] == {"batch_size": 8, "micro_batch_size": 8, "grad_accum": 1, "processes": 1}
    assert state["config"]["seed"] == 7 and state["best_step"] in (6, 12)


def test_resume_at_an_epoch_boundary_is_bit_identical(tmp_path):
    config = _config(epochs=2)  # 48 examples / 8 = 6 steps an epoch; checkpoints at epoch ends only
    reference, ref_result = _run(48, config, tmp_path / "reference")

    with pytest.raises(Interrupted):  # dies on the first step of epoch 2
        _run(48, config, tmp_path / "run", objective=InterruptingObjective(at=7))
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert (state["step"], state["epoch"], state["steps_in_epoch"]) == (6, 1, 0)

    resumed, result = _run(48, config, tmp_path / "run", resume=True)
    _assert_identical(_weights(resumed), _weights(reference))
    assert (result.best_step, result.best_metrics) == (ref_result.best_step, ref_result.best_metrics)
    assert _training_lines(tmp_path / "run") == _training_lines(tmp_path / "reference")


def test_resume_mid_epoch_and_mid_accumulation_is_bit_identical(tmp_path):
    # 60 examples / batch 8 = 8 steps an epoch, each 2 micro-batches of 4; saves at steps 3, 6, 9, 12 and epoch ends.
    config = _config(epochs=3, micro_batch_size=4, save_every=3, eval_every=5)
    reference, _ = _run(60, config, tmp_path / "reference")
    with pytest.raises(Interrupted):  # second micro-batch of step 11: gradients half accumulated
        _run(60, config, tmp_path / "run", objective=InterruptingObjective(at=22))
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert (state["step"], state["epoch"], state["steps_in_epoch"]) == (9, 1, 1)
    resumed, _ = _run(60, config, tmp_path / "run", resume=True)
    _assert_identical(_weights(resumed), _weights(reference))
    assert _training_lines(tmp_path / "run") == _training_lines(tmp_path / "reference")
    _assert_identical(load_file(tmp_path / "run" / "best.safetensors"), load_file(tmp_path / "reference" / "best.safetensors"))


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    _, fresh = _run(32, _config(epochs=1), tmp_path / "a")
    _, resumed = _run(32, _config(epochs=1), tmp_path / "b", resume=True)
    assert "starting fresh" in capsys.readouterr().err
    assert resumed.steps == fresh.steps == 4
    assert _training_lines(tmp_path / "a") == _training_lines(tmp_path / "b")


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    model, result = _run(32, _config(epochs=1), tmp_path / "run")
    log_before = (tmp_path / "run" / "train_log.jsonl").read_text()
    again, again_result = _run(32, _config(epochs=1), tmp_path / "run", resume=True)
    _assert_identical(_weights(again), _weights(model))
    assert again_result.steps == result.steps and again_result.best_step == result.best_step
    assert (tmp_path / "run" / "train_log.jsonl").read_text().count("\n") == log_before.count("\n")


def test_resume_with_changed_training_options_is_refused(tmp_path):
    with pytest.raises(Interrupted):
        _run(48, _config(save_every=2), tmp_path / "run", objective=InterruptingObjective(at=5))
    with pytest.raises(BadInput, match=r"cannot resume with different training options \(lr 0.003 → 0.001\)"):
        _run(48, _config(save_every=2, lr=1e-3), tmp_path / "run", resume=True)


def test_checkpoint_from_before_an_option_existed_resumes_at_that_options_default(tmp_path):
    with pytest.raises(Interrupted):
        _run(48, _config(save_every=2), tmp_path / "run", objective=InterruptingObjective(at=5))
    states = list((tmp_path / "run").rglob("state.json"))
    assert states
    for state_file in states:  # as written by a version without the AdamW beta options
        state = json.loads(state_file.read_text())
        del state["config"]["adam_beta1"], state["config"]["adam_beta2"]
        state_file.write_text(json.dumps(state))
    with pytest.raises(BadInput, match=r"adam_beta2 0.999 → 0.9\b"):
        _run(48, _config(save_every=2, adam_beta2=0.9), tmp_path / "run", resume=True)
    _, result = _run(48, _config(save_every=2), tmp_path / "run", resume=True)
    assert result.steps == 12  # 48 examples, batch 8, 2 epochs: it ran to the end


def test_fresh_start_discards_earlier_checkpoints(tmp_path):
    _run(32, _config(epochs=1, save_every=1), tmp_path / "run")
    _run(32, _config(epochs=1, max_steps=2, save_every=1), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-1", "step-2"]



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_gpu_checkpoints_the_grad_scaler_and_resumes(tmp_path):
    config = _config(epochs=2, precision="fp16", device="cuda", save_every=3)
    with pytest.raises(Interrupted):
        _run(48, config, tmp_path / "run", objective=InterruptingObjective(at=8))
    optim = torch.load(latest_checkpoint(tmp_path / "run") / "optimizer.pt", weights_only=True)
    assert optim["scaler"]["scale"] > 0
    model, result = _run(48, config, tmp_path / "run", resume=True)
    assert result.steps == 12
    assert all(torch.isfinite(p).all() for p in model.parameters())

# ---------------------------------------------------------------- real processes: kill -9, accelerate launch


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", KADAPTER_PROGRESS="0", PYTHONPATH=str(REPO))
    env.pop("KADAPTER_DEBUG", None)
    return env


def _toy_command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TOY_SCRIPT), str(run_dir), "--epochs", "2", "--save-every", "4", "--seed", "3", *extra]


def _kill_after_checkpoint(run_dir: Path, min_step: int, *extra: str) -> None:
    """Starts the toy run, SIGKILLs it as soon as a checkpoint of at least `min_step` exists."""
    kill_after_checkpoint(_toy_command(run_dir, "--step-delay", "0.03", *extra), _env(), run_dir, min_step)


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_weights(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_toy_command(reference), env=_env(), check=True, capture_output=True, timeout=120)

    run = tmp_path / "run"
    _kill_after_checkpoint(run, min_step=1)  # killed right after its first checkpoint
    _kill_after_checkpoint(run, 16, "--resume")  # the resumed run killed again, later on
    done = subprocess.run(_toy_command(run, "--resume"), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr

    _assert_identical(load_file(run / "final.safetensors"), load_file(reference / "final.safetensors"))
    _assert_identical(load_file(run / "checkpoints" / "step-60" / "model.safetensors"),
                      load_file(reference / "checkpoints" / "step-60" / "model.safetensors"))
    assert _training_lines(run) == _training_lines(reference)


def launch_two_processes(run: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The toy script under `accelerate launch` with two CPU processes (skips where they cannot start)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip(f"no accelerate launcher beside {sys.executable}")
    # `accelerate launch --cpu` starts one process unless given an MPI hostfile; the torchrun-based
    # launcher (`--multi_gpu`) with no visible GPU starts real CPU processes joined over gloo.
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               str(TOY_SCRIPT), str(run), *args]
    try:
        done = subprocess.run(command, env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"two-process run did not finish in {timeout:g} s")
    if done.returncode != 0 and not (run / "train_log.jsonl").exists():
        pytest.skip(f"accelerate launch could not start two CPU processes here:\n{done.stderr[-1500:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_with_the_whole_batch(tmp_path):
    run = tmp_path / "run"
    done = launch_two_processes(run, "--epochs", "4", "--seed", "3", "--save-every", "10", "--lr", "0.03",
                                "--batch-size", "8", "--micro-batch-size", "4", "--dropout", "0")
    assert "batch 8 = micro-batch 4 × 1 accumulation step × 2 processes" in done.stderr

    result = json.loads(done.stdout.strip().splitlines()[-1])
    dev = toy_examples(60, 2)
    majority = max(sum(e["label"] for e in dev), len(dev) - sum(e["label"] for e in dev)) / len(dev)
    assert result["best_metrics"]["n"] == 60 and result["best_metrics"]["in_order"] == 1.0  # gathered, once each
    assert result["best_metrics"]["accuracy"] >= majority + 0.05  # learned, not the majority class
    # 240 examples / batch 8 = 30 steps an epoch, whatever the number of processes.
    assert result["steps"] == 120
    assert result["batch_split"] == {"batch_size": 8, "micro_batch_size": 4, "grad_accum": 1, "processes": 2}
    losses = [x["loss"] for x in _training_lines(run) if "loss" in x]
    assert losses[-1] < losses[0]
    rng = torch.load(latest_checkpoint(run) / "rng.pt", weights_only=True)
    assert rng["world_size"] == 2 and not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])

    # The same run in one process, with micro-batch 8 (= 2 × 4) and with 4 accumulation steps of 2:
    # the same weights at the last step, up to float rounding (dropout off: masks differ per process).
    two_processes = load_file(run / "checkpoints" / "step-120" / "model.safetensors")
    for micro in (8, 2):
        config = TrainConfig(epochs=4, seed=3, save_every=10, lr=0.03, batch_size=8, micro_batch_size=micro,
                             warmup=0.1, log_every=5, device="cpu")
        model = build_model(3, dropout=0.0)
        train(model, ToyObjective(), toy_examples(240, 1), toy_examples(60, 2), config, tmp_path / f"one-{micro}")
        one = load_file(tmp_path / f"one-{micro}" / "checkpoints" / "step-120" / "model.safetensors")
        assert one.keys() == two_processes.keys()
        for name in one:
            torch.testing.assert_close(two_processes[name], one[name], rtol=1e-4, atol=1e-5, msg=f"{name}, micro {micro}")


# ---------------------------------------------------------------- batch sizes


@pytest.mark.parametrize("batch, micro, processes, split", [
    (128, 128, 1, (128, 1)),  # fac on one GPU
    (256, 64, 1, (64, 4)),  # lin on one GPU
    (128, 128, 4, (32, 1)),  # the micro-batch is cut to each process's share
    (2048, 8, 1, (8, 256)),  # FIGER on one GPU
    (2048, 8, 4, (8, 64)),
    (100, 64, 1, (50, 2)),  # lowered to divide the share
    (10, 4, 1, (2, 5)),
    (32, None, 2, (16, 1)),  # no micro-batch: each process's whole share at once
])
def test_the_effective_batch_splits_into_micro_batches_accumulation_and_processes(batch, micro, processes, split):
    result = TrainConfig(batch_size=batch, micro_batch_size=micro).batch_split(processes)
    assert (result.micro_batch_size, result.grad_accum) == split
    assert result.micro_batch_size * result.grad_accum * result.processes == batch


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(BadInput, match=r"batch_size 128 does not split evenly over 3 processes; "
                                       r"use a multiple of 3 \(e\.g\. 126 or 129\)"):
        TrainConfig(batch_size=128).batch_split(3)


def test_every_default_batch_splits_on_one_process_and_on_four():
    from kadapter_cli.tasks import TASKS, get_task
    from kadapter_cli.training.config import KIND_DEFAULTS

    defaults = [*KIND_DEFAULTS.values(), *(get_task(name).defaults_for([]) for name in TASKS)]
    for d in defaults:
        for processes in (1, 4):
            split = TrainConfig(batch_size=d["batch_size"], micro_batch_size=d["micro_batch_size"]).batch_split(processes)
            assert split.micro_batch_size <= d["micro_batch_size"] and split.micro_batch_size * split.grad_accum * processes == d["batch_size"]
    assert get_task("figer").defaults_for([])["batch_size"] == 2048  # the paper's effective batch, not a micro-batch


def test_train_adapter_prints_and_records_the_split(cli, shared_data, tiny_backbone):
    assert cli("prepare-trex", shared_data / "trex", "--min-count", "1").exit_code == 0
    result = cli("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, "--batch-size", "10",
                 "--micro-batch-size", "4", "--max-steps", "2", "--max-length", "48")
    assert result.exit_code == 0, result.output
    assert ("batch 10 = micro-batch 2 × 5 accumulation steps × 1 process (micro-batch lowered from 4: it must "
            "divide the 10 examples each process takes per step)") in " ".join(result.stderr.split())
    manifest = json.loads((cli.workdir / "adapters" / "fac" / "manifest.json").read_text())
    assert manifest["stats"]["batch_split"] == {"batch_size": 10, "micro_batch_size": 2, "grad_accum": 5, "processes": 1}
    assert manifest["config"]["micro_batch_size"] == 4 and manifest["config"]["batch_size"] == 10


def test_help_says_the_batch_is_effective(cli):
    for command in ("train-adapter", "finetune"):
        text = " ".join(cli(command, "--help").stdout.replace("│", " ").split())
        # rich cuts long option names to fit 80 columns ("--micro-batch-…")
        assert "Effective batch" in text and "--micro-batch-" in text and "--clip-mode" in text


def test_separate_clipping_clips_the_backbone_and_the_rest_each_on_their_own():
    from kadapter_cli.training.setup import clip_gradients, clip_groups, make_accelerator

    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(1, 1, bias=False), "head": torch.nn.Linear(1, 1, bias=False)})
    accelerator = make_accelerator(TrainConfig(device="cpu"))

    def clipped(mode: str) -> tuple[float, float, float]:
        model["backbone"].weight.grad = torch.tensor([[10.0]])
        model["head"].weight.grad = torch.tensor([[0.5]])
        norm = clip_gradients(accelerator, clip_groups(model, mode), 1.0)
        return float(norm), float(model["backbone"].weight.grad), float(model["head"].weight.grad)

    total = math.hypot(10.0, 0.5)
    assert clipped("joint") == pytest.approx((total, 10.0 / total, 0.5 / total), rel=1e-5)
    assert clipped("separate") == pytest.approx((total, 1.0, 0.5), rel=1e-5)  # the head's small gradient kept
    assert clip_gradients(accelerator, clip_groups(model, "joint"), 0.0) is None


def test_cli_defaults_of_loop_options_equal_the_loops_own():
    # The CLI spells these defaults out (importing the loop at start-up would slow `kadapter --help`).
    from kadapter_cli.commands import train as train_commands

    defaults = TrainConfig()
    for name in ("weight_decay", "adam_eps", "adam_beta1", "adam_beta2", "max_grad_norm", "clip_mode", "seed",
                 "log_every"):
        assert getattr(train_commands, name.upper()).default == getattr(defaults, name), name


# ---------------------------------------------------------------- Cases found by mutation testing (docs/MUTATION.md) for the training loop: the learning-rate schedule's
# numbers at its edges, which parameters AdamW decays, which errors count as out of memory, the
# checkpoint files that exact resume reads (RNG states, complete folders, weights, the grad scaler, a
# GPU run's files on a CPU), what the loop does with epochs, micro-batches and its bar, and what
# `make_accelerator`, `adamw` and `--threads` decide on a machine stood in for (CUDA, cores, load).

@pytest.mark.parametrize("step, warmup, total, multiplier", [
    (0, 4, 10, 0.0), (1, 4, 10, 0.25), (3, 4, 10, 0.75), (4, 4, 10, 1.0), (7, 4, 10, 0.5), (10, 4, 10, 0.0),
    (12, 4, 10, 0.0),  # past the end: 0, never negative
    (0, 1, 5, 0.0), (1, 1, 5, 1.0), (3, 1, 5, 0.5),  # warm-up of one step
    (0, 0, 4, 1.0), (1, 0, 4, 0.75), (2, 0, 2, 0.0),  # no warm-up: decay from the first step
    (0, 3, 3, 0.0), (2, 3, 3, 2 / 3), (3, 3, 3, 0.0),  # warm-up as long as the run: no decay phase left
    (3, 3, 4, 1.0), (4, 3, 4, 0.0),  # a decay phase of one step
])
def test_warmup_then_linear_decay_multipliers(step, warmup, total, multiplier):
    assert warmup_then_linear_decay(step, warmup, total) == pytest.approx(multiplier, abs=1e-12)


def test_adamw_decays_matrices_only_with_the_configured_decay():
    w, b, norm = (torch.nn.Parameter(torch.zeros(*shape)) for shape in ((2, 3), (3,), (3,)))
    optimizer = adamw([("w", w), ("b", b), ("norm.weight", norm)], TrainConfig(lr=0.5, weight_decay=0.1))
    groups = [(g["weight_decay"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]
    assert groups == [(0.1, [id(w)]), (0.0, [id(b), id(norm)])]
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups)
    # One decaying step moves a matrix of ones even with a zero gradient; a bias stays put.
    ones, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer = adamw([("m", ones), ("bias", bias)], TrainConfig(lr=0.5, weight_decay=0.1))
    ones.grad, bias.grad = torch.zeros_like(ones), torch.zeros_like(bias)
    optimizer.step()
    assert torch.allclose(ones, torch.full((2, 2), 1 - 0.5 * 0.1)) and torch.equal(bias, torch.ones(2))
    # Only one group when every parameter is 1-d.
    assert len(adamw([("b", b)], TrainConfig()).param_groups) == 1


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 2.00 GiB",
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes",
    "HIP error: not enough memory",
])
def test_out_of_memory_messages_are_recognised(message):
    assert is_out_of_memory(RuntimeError(message))


def test_memory_errors_are_out_of_memory_and_other_errors_are_not():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_device_cuda_without_a_gpu_is_refused():
    with pytest.raises(BadInput) as caught:
        make_accelerator(TrainConfig(device="cuda"))
    assert str(caught.value) == "device=cuda: no CUDA device is visible to this process"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_fp16_without_a_gpu_is_refused_with_advice():
    with pytest.raises(BadInput) as caught:
        make_accelerator(TrainConfig(device="auto", precision="fp16"))
    assert str(caught.value) == "precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_machine_device_cpu_stays_on_cpu_and_fp16_autocasts():
    assert make_accelerator(TrainConfig(device="cpu")).device.type == "cpu"
    accelerator = make_accelerator(TrainConfig(device="auto", precision="fp16"))
    assert accelerator.device.type == "cuda" and accelerator.mixed_precision == "fp16"
    cuda = [("w", torch.nn.Parameter(torch.zeros(2, 2, device="cuda")))]
    assert adamw(cuda, TrainConfig()).defaults["fused"] is True


def test_accelerator_follows_device_and_precision_across_runs_in_one_process():
    # Accelerate's state is process-wide: a second accelerator with another precision must still get it.
    assert make_accelerator(TrainConfig(device="cpu", precision="bf16")).mixed_precision == "bf16"
    accelerator = make_accelerator(TrainConfig(device="cpu", precision="fp32"))
    assert accelerator.mixed_precision == "no" and accelerator.device.type == "cpu"


def test_out_of_memory_message_in_full():
    from kadapter_cli.training.setup import out_of_memory

    error = out_of_memory("training step 3", 16, 256)
    assert str(error) == (
        "out of memory during training step 3 (batch of 16 examples, longest 256 tokens); "
        "lower micro_batch_size (the effective batch_size stays), max_length, "
        "or cache_budget (cache_features=off turns the feature cache off)")
    assert error.exit_code == 2


def test_adamw_uses_the_fused_kernel_for_cpu_parameters():
    # benchmarks/RESULTS.md: the per-tensor loop costs 3-5x more per step on CPU.
    cpu = [("w", torch.nn.Parameter(torch.zeros(2, 2)))]
    assert adamw(cpu, TrainConfig()).defaults["fused"] is True
    meta = [("w", torch.nn.Parameter(torch.zeros(2, 2, device="meta")))]
    assert not adamw(meta, TrainConfig()).defaults["fused"]


# ---------------------------------------------------------------- checkpoints (resume)

def _draws():
    return torch.rand(3).tolist(), [random.random() for _ in range(3)], np.random.rand(3).tolist()


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def _write(root, step, value=0.0):
    return write_checkpoint(root, step, {"w": torch.full((2,), value)}, {"optimizer": {}}, {"ranks": []},
                            {"step": step})


def test_checkpoint_folders_are_found_by_step_number_and_only_when_complete(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for step in (9, 10):
        _write(root, step)
    assert latest_checkpoint(tmp_path / "run").name == "step-10"  # numeric order, not "step-9" > "step-10"
    (root / "step-11").mkdir()  # no state.json: a folder being written, not a checkpoint
    (root / "step-x12").mkdir()
    (root / "step-12").write_text("a file")
    assert latest_checkpoint(tmp_path / "run").name == "step-10"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_write_checkpoint_clears_a_killed_writer_s_scratch_and_replaces_the_same_step(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".step-3.tmp").mkdir(parents=True)
    (root / ".step-3.tmp" / "model.safetensors").write_text("half written")
    _write(root, 3, 1.0)
    folder = _write(root, 3, 2.0)  # the same step again (a resumed run saving where it started)
    assert sorted(p.name for p in root.iterdir()) == ["step-3"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "optimizer.pt", "rng.pt", "state.json"]
    from safetensors.torch import load_file

    assert torch.equal(load_file(folder / "model.safetensors")["w"], torch.full((2,), 2.0))
    assert json.loads((folder / "state.json").read_text()) == {"step": 3}
    _write(root, 4), _write(root, 5)
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-5"]  # the newest two, nothing else


def test_remove_checkpoints_leaves_nothing_behind(tmp_path):
    _write(tmp_path / "checkpoints", 1)
    remove_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []
    remove_checkpoints(tmp_path)  # nothing to remove: no error


def test_copy_into_refuses_other_names_or_shapes(tmp_path):
    model = torch.nn.Linear(2, 3)
    model.bias.requires_grad_(False)
    with pytest.raises(BadInput) as caught:
        copy_into(model, {"bias": torch.zeros(3)}, tmp_path / "w.safetensors")
    assert "missing ['weight'], unexpected ['bias']" in str(caught.value)
    assert str(tmp_path / "w.safetensors") in str(caught.value)
    with pytest.raises(BadInput, match=r"weight: saved shape \(2, 2\), model has \(3, 2\)"):
        copy_into(model, {"weight": torch.zeros(2, 2)}, tmp_path / "w.safetensors")
    copy_into(model, {"weight": torch.ones(3, 2)}, tmp_path / "w.safetensors")
    assert torch.equal(model.weight, torch.ones(3, 2))


def test_resume_refusals_name_the_checkpoint_and_the_difference(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    def run(**overrides):
        config = TrainConfig(**{**dict(epochs=1, batch_size=8, lr=3e-3, seed=7, device="cpu", save_every=2), **overrides})
        return train(build_model(7), ToyObjective(), toy_examples(32, 1), None, config, tmp_path / "run", resume=True)

    run(max_steps=2)
    checkpoint = latest_checkpoint(tmp_path / "run")
    with pytest.raises(BadInput) as caught:
        run(max_steps=2, lr=1e-3, seed=8)
    assert str(caught.value) == (f"{checkpoint}: cannot resume with different training options (lr 0.003 → 0.001; "
                                 "seed 7 → 8); use the checkpoint's options or start again without resume=True")
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(BadInput) as caught:
        run(max_steps=2)
    assert str(caught.value) == (f"{checkpoint}: checkpoint was written by 2 processes, this run has 1; "
                                 "resume with the same number")


# -- resume across machines, the grad scaler, CUDA generators, untrusted files (docs/MUTATION.md)

def _toy_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=1, batch_size=8, lr=3e-3, seed=7, device="cpu", save_every=2), **overrides})


class _Killed(Exception):
    pass


def _toy_run(run_dir, resume=False, model=None, killed_at: int | None = None, **overrides):
    """The toy run (4 steps, a checkpoint every 2); `killed_at`: it stops in that step (1-based)."""
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    class Objective(ToyObjective):
        calls = 0

        def loss(self, model, batch):
            self.calls += 1
            if self.calls == killed_at:
                raise _Killed
            return super().loss(model, batch)

    model = model if model is not None else build_model(7)
    try:
        train(model, Objective(), toy_examples(32, 1), None, _toy_config(**overrides), run_dir, resume=resume)
    except _Killed:
        pass
    return model


def _save_as_on_a_gpu(path):
    """Rewrites a torch file as a CUDA run writes it: every tensor's storage tagged `cuda:0`."""
    import torch.serialization

    content = torch.load(path, weights_only=True)
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(content, path)
    finally:
        torch.serialization.location_tag = tag


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_a_checkpoint_written_on_a_gpu_resumes_on_a_cpu_only_machine(tmp_path):
    uninterrupted = _toy_run(tmp_path / "whole")
    _toy_run(tmp_path / "run", killed_at=4)  # a checkpoint at step 2 of the 4
    checkpoint = latest_checkpoint(tmp_path / "run")
    # A GPU run's optimizer state (AdamW's moments and step counts) lives on the device.
    _save_as_on_a_gpu(checkpoint / "optimizer.pt")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(checkpoint / "optimizer.pt", weights_only=True)  # as written: not loadable here without mapping
    resumed = _toy_run(tmp_path / "run", resume=True)
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def _checkpoint_and_loop(tmp_path):
    """A complete checkpoint of the toy run, and a fresh model, optimizer and schedule to load it into."""
    from helpers.train_toy import build_model

    _toy_run(tmp_path / "run", killed_at=4)
    model = build_model(7)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = adamw(trainable, _toy_config())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return latest_checkpoint(tmp_path / "run"), model, optimizer, scheduler


def _process(scaler=None):
    from types import SimpleNamespace

    return SimpleNamespace(num_processes=1, process_index=0, scaler=scaler)


def test_resume_restores_the_fp16_grad_scaler_from_the_checkpoint(tmp_path):
    from kadapter_cli.training.checkpoints import load_checkpoint

    checkpoint, model, optimizer, scheduler = _checkpoint_and_loop(tmp_path)
    saved = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    optim = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    torch.save({**optim, "scaler": saved.state_dict()}, checkpoint / "optimizer.pt")  # as an fp16 run writes it

    scaler = torch.amp.GradScaler("cpu")  # this run's, at its initial scale 65536
    state = load_checkpoint(checkpoint, model, optimizer, scheduler, _process(scaler), _toy_config())
    assert state.step == 2
    assert scaler.get_scale() == 512.0 and scaler.get_growth_interval() == 7
    # An accelerator without a scaler (fp32 / bf16) resumes from the same files, ignoring the scaler state.
    load_checkpoint(checkpoint, model, optimizer, scheduler, _process(None), _toy_config())
    # A checkpoint of a run without a scaler leaves this run's scaler as it is.
    torch.save({**optim, "scaler": None}, checkpoint / "optimizer.pt")
    fresh = torch.amp.GradScaler("cpu")
    load_checkpoint(checkpoint, model, optimizer, scheduler, _process(fresh), _toy_config())
    assert fresh.get_scale() == 65536.0


class _PickledCode:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("file", ["optimizer.pt", "rng.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_pickled_code(tmp_path, capsys, file):
    import pickle

    from kadapter_cli.training.checkpoints import load_checkpoint

    checkpoint, model, optimizer, scheduler = _checkpoint_and_loop(tmp_path)
    content = torch.load(checkpoint / file, weights_only=True)
    torch.save({**content, "extra": _PickledCode()}, checkpoint / file)
    capsys.readouterr()
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(checkpoint, model, optimizer, scheduler, _process(), _toy_config())
    assert "pickled code ran" not in capsys.readouterr().out


class _CudaGenerators:
    """Stands in for torch.cuda's generator calls on a machine without CUDA; records what is set."""

    def __init__(self, monkeypatch, available=True, initialized=True):
        self.states = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
        self.got, self.set = [], []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: self.got.append(1) or self.states)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set.append)


def test_cuda_generator_states_are_checkpointed_and_restored_when_cuda_is_in_use(monkeypatch):
    cuda = _CudaGenerators(monkeypatch)
    state = rng_state()
    assert state["cuda"] is cuda.states
    set_rng_state(state)
    assert cuda.set == [cuda.states]
    # A checkpoint of a CPU run carries no CUDA states: nothing is set.
    set_rng_state({k: v for k, v in state.items() if k != "cuda"})
    assert cuda.set == [cuda.states]


def test_cuda_generators_are_left_alone_when_cuda_is_not_in_use(monkeypatch):
    # --device cpu on a GPU machine: CUDA is there but never initialised; reading its generators would start it.
    cuda = _CudaGenerators(monkeypatch, available=True, initialized=False)
    assert "cuda" not in rng_state() and cuda.got == []
    # A GPU run's checkpoint resumed where there is no CUDA: its CUDA states cannot be set, and are not.
    cuda = _CudaGenerators(monkeypatch, available=False, initialized=False)
    state = {**rng_state(), "cuda": cuda.states}
    set_rng_state(state)
    assert cuda.set == [] and cuda.got == []


def test_weight_mismatch_messages_list_three_names_and_name_the_file(tmp_path):
    model = torch.nn.Sequential(*(torch.nn.Linear(1, 1) for _ in range(3)))  # 6 parameters: 0.weight ... 2.bias
    source = tmp_path / "model.safetensors"
    with pytest.raises(BadInput) as caught:
        copy_into(model, {f"other.{i}": torch.zeros(1) for i in range(5)}, source)
    assert str(caught.value) == (f"{source}: weights do not match the model's trainable parameters (missing "
                                 "['0.bias', '0.weight', '1.bias'], unexpected ['other.0', 'other.1', 'other.2'])")
    weights = {n: torch.zeros(2, 2) if n == "1.weight" else p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(BadInput) as caught:
        copy_into(model, weights, source)
    assert str(caught.value) == f"{source}: 1.weight: saved shape (2, 2), model has (1, 1)"


def test_resume_into_a_model_with_other_trainable_parameters_names_the_checkpoint_s_weights_file(tmp_path):
    from helpers.train_toy import build_model

    _toy_run(tmp_path / "run", killed_at=4)
    checkpoint = latest_checkpoint(tmp_path / "run")
    model = build_model(7)
    model.frozen_projection.requires_grad_(True)
    with pytest.raises(BadInput) as caught:
        _toy_run(tmp_path / "run", resume=True, model=model)
    assert str(caught.value) == (f"{checkpoint / 'model.safetensors'}: weights do not match the model's trainable "
                                 "parameters (missing ['frozen_projection.bias', 'frozen_projection.weight'], "
                                 "unexpected [])")


def test_a_checkpoint_that_records_no_options_is_taken_to_have_run_at_the_defaults(tmp_path):
    from kadapter_cli.training.config import TRAJECTORY_OPTIONS

    _toy_run(tmp_path / "run", killed_at=4)
    checkpoint = latest_checkpoint(tmp_path / "run")
    state = json.loads((checkpoint / "state.json").read_text())
    del state["config"]
    (checkpoint / "state.json").write_text(json.dumps(state))
    defaults, ours = TrainConfig(), _toy_config()
    changed = [f"{k} {getattr(defaults, k)!r} → {getattr(ours, k)!r}"
               for k in TRAJECTORY_OPTIONS if getattr(defaults, k) != getattr(ours, k)]
    assert len(changed) == 4  # epochs, batch_size, lr, seed
    with pytest.raises(BadInput) as caught:
        _toy_run(tmp_path / "run", resume=True)
    assert str(caught.value) == (f"{checkpoint}: cannot resume with different training options ("
                                 + "; ".join(changed) + "); use the checkpoint's options or start again without "
                                 "resume=True")


# -- what make_accelerator and adamw decide on a machine with CUDA (Accelerate and AdamW stood in for)

class _Recorder:
    """Stands in for `accelerate.Accelerator`: records its keyword arguments; optionally fails first."""

    def __init__(self, monkeypatch, fail_with: list[Exception] | None = None):
        import accelerate
        from accelerate.state import AcceleratorState

        self.calls, self.resets, self.fail_with = [], [], list(fail_with or [])
        recorder = self

        class Accelerator:
            def __init__(self, **kwargs):
                recorder.calls.append(kwargs)
                if recorder.fail_with:
                    raise recorder.fail_with.pop(0)

        monkeypatch.setattr(accelerate, "Accelerator", Accelerator)
        monkeypatch.setattr(AcceleratorState, "_reset_state", staticmethod(lambda *a, **k: self.resets.append(1)))


@pytest.mark.parametrize("cuda, device, precision, cpu, mixed", [
    (True, "cpu", "fp32", True, "no"),  # --device cpu on a GPU machine stays on the CPU
    (True, "cpu", "bf16", True, "bf16"),
    (True, "auto", "fp32", False, "no"),  # auto takes the GPU
    (True, "auto", "fp16", False, "fp16"),  # fp16 is allowed there, with Accelerate's fp16 autocast
    (True, "cuda", "bf16", False, "bf16"),
    (False, "auto", "fp32", True, "no"),  # cpu=True also without CUDA: torchrun's processes join over gloo
])
def test_device_and_precision_reach_accelerate(monkeypatch, cuda, device, precision, cpu, mixed):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # stand-ins: no GPU here
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda *a: None)
    accelerate = _Recorder(monkeypatch)
    make_accelerator(TrainConfig(device=device, precision=precision))
    assert accelerate.calls == [{"cpu": cpu, "mixed_precision": mixed, "log_with": None}]


def test_a_second_accelerator_in_one_process_resets_accelerate_s_state_and_keeps_the_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    accelerate = _Recorder(monkeypatch, [ValueError("AcceleratorState has already been initialized and cannot be "
                                                    "changed, restart your runtime completely")])
    trackers = [object()]  # what tracking.RunTracker hands over for --report-to
    make_accelerator(TrainConfig(device="cpu", precision="bf16"), log_with=trackers)
    assert accelerate.resets == [1]
    assert accelerate.calls == [{"cpu": True, "mixed_precision": "bf16", "log_with": trackers}] * 2


def test_the_run_s_trackers_reach_accelerate_and_no_trackers_is_none(monkeypatch):
    accelerate = _Recorder(monkeypatch)
    trackers = [object()]
    make_accelerator(TrainConfig(device="cpu"), log_with=trackers)
    make_accelerator(TrainConfig(device="cpu"), log_with=[])
    assert [call["log_with"] for call in accelerate.calls] == [trackers, None]


def test_other_accelerate_errors_are_not_retried(monkeypatch):
    accelerate = _Recorder(monkeypatch, [ValueError("unsupported mixed precision")])
    with pytest.raises(ValueError, match="unsupported mixed precision"):
        make_accelerator(TrainConfig(device="cpu"))
    assert len(accelerate.calls) == 1 and accelerate.resets == []


def test_under_a_launch_of_two_processes_accelerate_s_state_is_never_reset(monkeypatch):
    import accelerate.state

    class TwoProcesses:
        num_processes = 2

    monkeypatch.setattr(accelerate.state, "PartialState", TwoProcesses)
    recorder = _Recorder(monkeypatch, [ValueError("AcceleratorState has already been initialized")])
    with pytest.raises(ValueError, match="already been initialized"):
        make_accelerator(TrainConfig(device="cpu"))
    assert len(recorder.calls) == 1 and recorder.resets == []


def test_adamw_uses_the_fused_kernel_for_cuda_parameters(monkeypatch):
    from types import SimpleNamespace

    made = []
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kwargs: made.append(kwargs["fused"]))

    def on(device):
        return SimpleNamespace(ndim=2, device=torch.device(device))

    adamw([("w", on("cuda")), ("v", on("cuda:1"))], TrainConfig())
    adamw([("w", on("cuda")), ("v", on("meta"))], TrainConfig())
    assert made == [True, False]


# -- the loop itself: epoch orders, gradient sync, what it counts, the training bar (docs/MUTATION.md)

def test_each_epoch_trains_on_batchings_order_for_that_epoch_and_seed(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.loop import train

    seen: list[list[int]] = []

    class Recording(ToyObjective):
        def loss(self, model, batch):
            seen.append(sorted(batch["example_ids"].tolist()))
            return super().loss(model, batch)

    examples = toy_examples(32, 1)
    config = TrainConfig(epochs=3, batch_size=4, lr=3e-3, seed=5, device="cpu", bucket_size=2)
    train(build_model(7), Recording(), examples, None, config, tmp_path / "run")
    lengths = [len(e["ids"]) for e in examples]
    expected = [sorted(examples[j]["id"] for j in step) for epoch in range(3)
                for step in epoch_batches(lengths, 4, 5, epoch, 2)]
    assert seen == expected
    # Meaningful only because the orders differ between epochs, seeds and pool sizes:
    orders = [epoch_batches(lengths, 4, 5, 0, 2), epoch_batches(lengths, 4, 5, 1, 2),
              epoch_batches(lengths, 4, 6, 0, 2), epoch_batches(lengths, 4, 5, 0, 100)]
    assert all(a != b for i, a in enumerate(orders) for b in orders[i + 1:])


def test_gradients_are_all_reduced_only_on_each_step_s_last_micro_batch(tmp_path, monkeypatch):
    # On one process no_sync changes nothing; under DDP it is what keeps accumulation from syncing
    # every micro-batch (or, wrong the other way, never): record where each micro-batch's loss ran.
    from contextlib import contextmanager

    import accelerate
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    inside_no_sync, unsynced, models = [False], [], []

    @contextmanager
    def no_sync(self, model):
        models.append(model)
        inside_no_sync[0] = True
        try:
            yield
        finally:
            inside_no_sync[0] = False

    monkeypatch.setattr(accelerate.Accelerator, "no_sync", no_sync)

    class Recording(ToyObjective):
        def loss(self, model, batch):
            unsynced.append(inside_no_sync[0])
            return super().loss(model, batch)

    config = TrainConfig(epochs=1, batch_size=12, micro_batch_size=4, lr=3e-3, seed=7, device="cpu")
    model = build_model(7)
    train(model, Recording(), toy_examples(24, 1), None, config, tmp_path / "run")
    assert unsynced == [True, True, False] * 2  # 2 steps of 3 micro-batches
    assert len(models) == 4 and all(m is model for m in models)  # the model DDP wraps (here: itself)


def test_checkpoints_count_the_examples_and_tokens_trained_on(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    # Steps of 8 in 4 micro-batches of 2; the short last step (1 example) also gets three stand-in
    # micro-batches of share 0, which are not examples seen.
    examples = toy_examples(33, 1)
    config = TrainConfig(epochs=2, batch_size=8, micro_batch_size=2, lr=3e-3, seed=7, device="cpu")
    train(build_model(7), ToyObjective(), examples, None, config, tmp_path / "run")
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["examples_seen"] == 2 * 33
    assert state["tokens_seen"] == 2 * sum(len(e["ids"]) for e in examples)


def test_micro_batches_train_the_weights_and_log_the_loss_of_the_whole_batch(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    def run(name, micro):
        model = build_model(7, dropout=0.0)  # no dropout: the split changes the order of random draws
        config = TrainConfig(epochs=2, batch_size=8, micro_batch_size=micro, lr=3e-3, seed=7, device="cpu",
                             log_every=1)
        train(model, ToyObjective(), toy_examples(30, 1), None, config, tmp_path / name)
        lines = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return model, [line["loss"] for line in lines if "loss" in line]

    whole, whole_losses = run("whole", None)
    # 4 micro-batches of 2 a step; the short last step of 6 in parts of 2, 1, 1, 2: shares 1/3, 1/6, 1/6, 1/3.
    split, split_losses = run("split", 2)
    assert len(split_losses) == len(whole_losses) == 8
    assert split_losses == pytest.approx(whole_losses, rel=1e-5)
    for (name, a), (_, b) in zip(whole.state_dict().items(), split.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def _terminal(monkeypatch, interactive: bool):
    import io

    from rich.console import Console

    import kadapter_cli.progress

    screen = io.StringIO()
    monkeypatch.setenv("KADAPTER_PROGRESS", "1" if interactive else "0")
    monkeypatch.setattr(kadapter_cli.progress, "console", Console(file=screen, force_terminal=interactive, width=200))
    return screen


def test_the_training_bar_counts_steps_and_shows_the_loss_on_a_terminal(tmp_path, monkeypatch):
    import re

    screen = _terminal(monkeypatch, interactive=True)
    _toy_run(tmp_path / "run")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    last = plain.rsplit("train ", 1)[-1]
    assert re.match(r"[━╺╸ ]+ 4/4 ([\d,.]+|–) steps/s loss \d+\.\d{4} · \d+ ex/s · \d+ ms/step", last), plain


def test_the_training_bar_stays_silent_when_not_on_a_terminal(tmp_path, monkeypatch):
    screen = _terminal(monkeypatch, interactive=False)
    _toy_run(tmp_path / "run")
    assert "steps/s" not in screen.getvalue() and "4/4" not in screen.getvalue()


def test_a_resumed_run_s_bar_starts_at_the_checkpoint_s_step(tmp_path, monkeypatch):
    import rich.progress

    started = []
    add_task = rich.progress.Progress.add_task

    def recording(self, description, **fields):
        started.append((description, fields))
        return add_task(self, description, **fields)

    monkeypatch.setattr(rich.progress.Progress, "add_task", recording)
    _toy_run(tmp_path / "run", killed_at=3)
    _toy_run(tmp_path / "run", resume=True)
    assert started == [("train", dict(total=4, completed=0, status="", unit="steps")),
                       ("train", dict(total=4, completed=2, status="", unit="steps"))]


def test_train_starts_afresh_unless_told_to_resume(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    _toy_run(tmp_path / "run", killed_at=3)  # leaves a checkpoint at step 2
    assert latest_checkpoint(tmp_path / "run") is not None
    # Another --lr: resuming would be refused; starting afresh is what happens.
    model = build_model(7)
    result = train(model, ToyObjective(), toy_examples(32, 1), None, _toy_config(lr=1e-3), tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert result.steps == 4 and [line["step"] for line in lines if "loss" in line] == [2, 4]
    fresh = _toy_run(tmp_path / "fresh", lr=1e-3)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


def test_out_of_memory_in_a_training_step_names_the_step_the_micro_batch_and_the_longest_example(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.batching import epoch_batches
    from kadapter_cli.training.loop import train
    from kadapter_cli.training.setup import TrainingOutOfMemory, out_of_memory

    class OutOfMemory(ToyObjective):
        calls = 0

        def loss(self, model, batch):
            self.calls += 1
            if self.calls == 9:  # the first micro-batch of step 3 (4 micro-batches of 2 a step)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().loss(model, batch)

    examples = toy_examples(32, 1)
    with pytest.raises(TrainingOutOfMemory) as caught:
        train(build_model(7), OutOfMemory(), examples, None, _toy_config(micro_batch_size=2), tmp_path / "run")
    lengths = [len(e["ids"]) for e in examples]
    step = epoch_batches(lengths, 8, 7, 0, 100)[2]
    longest = max(lengths[j] for j in step)
    assert longest < max(lengths)  # the step's longest, not the data's
    assert str(caught.value) == str(out_of_memory("training step 3", 2, longest))


def test_limit_takes_the_first_examples_of_train_and_dev(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    config = _toy_config(limit=16, save_every=None)
    result = train(build_model(7), ToyObjective(), toy_examples(32, 1), toy_examples(24, 2), config, tmp_path / "run")
    assert result.steps == 2  # 16 examples in steps of 8
    assert result.final_metrics["n"] == 16.0  # the dev examples scored
    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["examples_seen"] == 16


def test_no_training_examples_is_bad_input(tmp_path):
    from helpers.train_toy import ToyObjective, build_model

    from kadapter_cli.training.loop import train

    with pytest.raises(BadInput) as caught:
        train(build_model(7), ToyObjective(), [], None, _toy_config(), tmp_path / "run")
    assert str(caught.value) == "no training examples"


def test_without_max_steps_the_schedule_spans_every_epoch_and_ends_at_zero(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    config = _toy_config(epochs=2, warmup=2, log_every=1, save_every=None)
    result = train(build_model(7), ToyObjective(), toy_examples(32, 1), None, config, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    lrs = {line["step"]: line["lr"] for line in lines if "lr" in line}
    assert result.steps == 8  # 2 epochs of 32 examples in steps of 8
    assert lrs == pytest.approx({s: 3e-3 * (s / 2 if s < 2 else (8 - s) / 6) for s in range(1, 9)})


@pytest.mark.parametrize("warmup, warned", [(3, False), (4, True), (5, True)])
def test_a_warmup_as_long_as_the_run_is_warned_about(tmp_path, capsys, warmup, warned):
    # 4 steps: step k trains at the schedule's multiplier after k-1 steps, so warm-up 4 never reaches --lr.
    _toy_run(tmp_path / "run", warmup=warmup)
    message = (f"warning: warmup={warmup} steps is not shorter than the run (4 steps): the learning rate never "
               "reaches lr=0.003; give a share instead (warmup=0.1 = the first 10%)")
    assert (message in capsys.readouterr().err) is warned


def test_a_model_without_trainable_parameters_is_refused(tmp_path):
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.errors import KadapterError
    from kadapter_cli.training.loop import train

    model = build_model(7).requires_grad_(False)
    with pytest.raises(KadapterError) as caught:
        train(model, ToyObjective(), toy_examples(8, 1), None, _toy_config(), tmp_path / "run")
    assert str(caught.value) == "the model has no trainable parameters (every parameter has requires_grad=False)"


def test_resuming_says_from_where_and_a_finished_run_says_it_is_complete(tmp_path, capsys):
    _toy_run(tmp_path / "run", killed_at=3)
    checkpoint = latest_checkpoint(tmp_path / "run")
    capsys.readouterr()
    _toy_run(tmp_path / "run", resume=True)
    assert f"resuming from {checkpoint} (step 2 of 4)" in capsys.readouterr().err
    _toy_run(tmp_path / "run", resume=True)
    said = capsys.readouterr().err
    assert "training already complete at step 4" in said and "resuming from" in said


def test_the_run_folder_is_made_with_its_parents(tmp_path):
    _toy_run(tmp_path / "runs" / "today" / "run")
    assert (tmp_path / "runs" / "today" / "run" / "best.safetensors").is_file()


# -- --threads: explicit, OMP_NUM_THREADS, or the cores idle now (train_setup.auto_threads)

def _machine(monkeypatch, load=(0.0, 0.0, 0.0), affinity=None, cpu_count=16, omp=None):
    import os

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    if affinity is None:
        monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    else:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)

    def getloadavg():
        if load is None:
            raise OSError("no load average here")
        return load

    monkeypatch.setattr(os, "getloadavg", getloadavg)


@pytest.mark.parametrize("machine, threads", [
    (dict(omp="3", load=(64.0, 64.0, 64.0)), 3),  # OMP_NUM_THREADS wins over what is idle
    (dict(omp=" 4 "), 4),
    (dict(omp="0"), 1),  # at least one
    (dict(omp="many", affinity=8, load=(2.6, 5.0, 7.0)), 5),  # not a number: what is idle
    (dict(affinity=8, load=(2.6, 5.0, 7.0)), 5),  # 8 cores less the 1-minute load 2.6, rounded
    (dict(affinity=8, load=(2.4, 0.0, 0.0)), 6),
    (dict(affinity=8, load=(0.0, 5.0, 5.0)), 8),  # never more than the cores
    (dict(affinity=8, load=(64.0, 64.0, 64.0)), 1),  # every core busy: one thread
    (dict(affinity=8, load=None), 8),  # no load average on this system: every core counts as idle
    (dict(affinity=3, cpu_count=16), 3),  # the cores this process may use, not all the machine's
    (dict(cpu_count=16), 16),  # no affinity call on this system: the machine's cores
    (dict(cpu_count=None), 1),  # not even a core count
])
def test_automatic_threads_are_omp_num_threads_or_the_idle_cores(monkeypatch, machine, threads):
    from kadapter_cli.training.setup import auto_threads

    _machine(monkeypatch, **machine)
    assert auto_threads() == threads


def test_threads_are_set_as_given_and_zero_is_refused(monkeypatch):
    from kadapter_cli.training.setup import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        _machine(monkeypatch, omp="3")
        assert set_threads(None) == 3 and torch.get_num_threads() == 3
        with pytest.raises(BadInput) as caught:
            set_threads(0)
        assert str(caught.value) == "threads must be at least 1, got 0"
    finally:
        torch.set_num_threads(before)


def test_a_parameter_without_a_gradient_in_a_step_is_not_moved_in_it(tmp_path):
    # Gradients are freed after each step, not zeroed: a parameter a step does not use (a head only
    # some batches reach) gets no AdamW update from its momentum in that step.
    from helpers.train_toy import ToyObjective, build_model, toy_examples

    from kadapter_cli.training.loop import train

    class FirstStepOnly(ToyObjective):
        calls = 0

        def loss(self, model, batch):
            self.calls += 1
            loss = super().loss(model, batch)
            return loss + model.extra.sum() if self.calls == 1 else loss

    def run(name, **overrides):
        model = build_model(7)
        model.extra = torch.nn.Parameter(torch.ones(2))
        train(model, FirstStepOnly(), toy_examples(32, 1), None, _toy_config(**overrides), tmp_path / name)
        return model.extra.detach().clone()

    after_one_step = run("one", max_steps=1)
    assert not torch.equal(after_one_step, torch.ones(2))
    assert torch.equal(run("four"), after_one_step)
