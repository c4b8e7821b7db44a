"""The training loop: schedule, frozen parameters, checkpoints, exact resume, best-checkpoint selection,
logs, out-of-memory errors, and the same code under `accelerate launch` with two processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_helpers import kill_after_checkpoint
from safetensors.torch import load_file
from train_toy import ToyObjective, build_model, toy_examples

from kadapter_cli.artifacts.output import latest_checkpoint
from kadapter_cli.errors import BadInput, KadapterError
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.loop import evaluate, train
from kadapter_cli.training.setup import TrainingOutOfMemory

TOY_SCRIPT = Path(__file__).with_name("train_toy.py")
REPO = TOY_SCRIPT.parents[1]
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
