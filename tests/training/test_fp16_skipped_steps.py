"""fp16's grad scaler skips a step whose gradients overflow; the loop must see it although the fused
AdamW's `step()` is always called (it skips inside its kernel): the step is logged as skipped, the
learning-rate schedule does not advance on it, its inf gradient norm is not logged, and the weights
stay as they were.

fp16 needs CUDA here, so the run is on the CPU with torch's real `GradScaler` on the CPU in the
accelerator, where Accelerate puts it for fp16 on a GPU: the scaling, unscaling, overflow check and
the fused optimizer's skip are torch's own code."""

from __future__ import annotations

import json
import math

import torch
from helpers.train_toy import ToyObjective, build_model, toy_examples

from kadapter_cli.training import loop
from kadapter_cli.training.config import TrainConfig

OVERFLOW_AT = 3  # the optimizer step whose gradient is made inf


class OverflowingObjective(ToyObjective):
    """The toy objective; at step `OVERFLOW_AT` one gradient becomes inf. Keeps the weights seen at
    the start of every step."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.weights_at_step: dict[int, dict[str, torch.Tensor]] = {}

    def loss(self, model, batch):
        self.calls += 1
        self.weights_at_step[self.calls] = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = super().loss(model, batch)
        if self.calls == OVERFLOW_AT:
            weight = model.out.weight
            weight.register_hook(lambda g: g if not weight._overflow_once else _once(weight, g))
            weight._overflow_once = True
        return loss


def _once(weight, grad):
    weight._overflow_once = False
    return grad * math.inf


def with_cpu_grad_scaler(monkeypatch):
    """`make_accelerator` as the loop calls it, with a real GradScaler (on the CPU) in the accelerator."""
    real = loop.make_accelerator

    def make(config, log_with=None):
        accelerator = real(config, log_with=log_with)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)

        def unscale_gradients(optimizer=None):  # what Accelerate does for fp16 on a GPU
            for opt in accelerator._optimizers:
                accelerator.scaler.unscale_(opt.optimizer)

        accelerator.unscale_gradients = unscale_gradients
        return accelerator

    monkeypatch.setattr(loop, "make_accelerator", make)


def test_an_overflowing_fp16_step_is_skipped_and_logged(tmp_path, monkeypatch):
    with_cpu_grad_scaler(monkeypatch)
    torch.manual_seed(0)
    model = build_model(0)
    objective = OverflowingObjective()
    config = TrainConfig(batch_size=8, max_steps=5, lr=3e-3, warmup=0, log_every=1, seed=0, device="cpu")
    loop.train(model, objective, toy_examples(40, 1), None, config, tmp_path)

    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = {line["step"]: line for line in lines if "loss" in line}
    assert [steps[s]["skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    # The skipped step logs no gradient norm (it was inf); the others log a finite one.
    assert "grad_norm" not in steps[OVERFLOW_AT]
    assert all(math.isfinite(steps[s]["grad_norm"]) for s in (1, 2, 4, 5))
    # Linear decay from step 0: the multiplier is (5 - k) / 5 after k scheduler steps. The skipped
    # step does not advance it, so steps 3 and 2 log the same learning rate.
    lrs = [steps[s]["lr"] for s in range(1, 6)]
    assert lrs == [3e-3 * m for m in (4 / 5, 3 / 5, 3 / 5, 2 / 5, 1 / 5)]
    # The weights after the skipped step are those before it; the other steps change them.
    before, after = objective.weights_at_step[OVERFLOW_AT], objective.weights_at_step[OVERFLOW_AT + 1]
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not torch.equal(objective.weights_at_step[2]["out.weight"], before["out.weight"])
    assert not torch.equal(after["out.weight"], model.out.weight.detach())
