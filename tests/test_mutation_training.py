"""Cases found by mutation testing (docs/MUTATION.md) for the training loop: the learning-rate schedule's
numbers at its edges, which parameters AdamW decays, which errors count as out of memory, and the
checkpoint files that exact resume reads (RNG states, complete folders, weights)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from kadapter_cli.checkpoints import (copy_into, latest_checkpoint, remove_checkpoints, rng_state, set_rng_state,
                                      write_checkpoint)
from kadapter_cli.errors import BadInput
from kadapter_cli.train_config import TrainConfig
from kadapter_cli.train_setup import adamw, is_out_of_memory, make_accelerator, warmup_then_linear_decay


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
    assert str(caught.value) == "--device cuda: no CUDA device is visible to this process"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_fp16_without_a_gpu_is_refused_with_advice():
    with pytest.raises(BadInput) as caught:
        make_accelerator(TrainConfig(device="auto", precision="fp16"))
    assert str(caught.value) == "--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU"


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
    from kadapter_cli.train_setup import out_of_memory

    error = out_of_memory("training step 3", 16, 256)
    assert str(error) == (
        "out of memory during training step 3 (batch of 16 examples, longest 256 tokens); "
        "lower --micro-batch-size (the effective --batch-size stays), --max-length, "
        "or --cache-budget (--cache-features off turns the feature cache off)")
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
    from kadapter_cli.training import train
    from train_toy import ToyObjective, build_model, toy_examples

    def run(**overrides):
        config = TrainConfig(**{**dict(epochs=1, batch_size=8, lr=3e-3, seed=7, device="cpu", save_every=2), **overrides})
        return train(build_model(7), ToyObjective(), toy_examples(32, 1), None, config, tmp_path / "run", resume=True)

    run(max_steps=2)
    checkpoint = latest_checkpoint(tmp_path / "run")
    with pytest.raises(BadInput) as caught:
        run(max_steps=2, lr=1e-3, seed=8)
    assert str(caught.value) == (f"{checkpoint}: cannot resume with different training options (--lr 0.003 → 0.001; "
                                 "--seed 7 → 8); use the checkpoint's options or start again without --resume")
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, "world_size": 2}))
    with pytest.raises(BadInput) as caught:
        run(max_steps=2)
    assert str(caught.value) == (f"{checkpoint}: checkpoint was written by 2 processes, this run has 1; "
                                 "resume with the same number")
