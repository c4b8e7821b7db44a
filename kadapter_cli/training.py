"""The one training loop: adapter pretraining and task fine-tuning both run through `train()`.

What the loop owns, and nothing else: AdamW over the parameters that require grad, linear warm-up
then linear decay to 0, gradient clipping, gradient accumulation, dev evaluation with best-checkpoint
selection, checkpoints with exact resume, and the training log. What is optimised — how examples are
padded, what the loss is, how outputs are scored — comes from an `Objective`.

Built on Accelerate, so the same code runs on CPU, on one GPU (bf16/fp16 autocast) and on several
processes under `accelerate launch` or `torchrun`: each process takes every N-th batch of the same
seeded order, gradients are averaged by DDP, evaluation gathers outputs from all processes, and
only the main process writes files.

Exact resume: a checkpoint holds the trainable weights, optimizer/scheduler/grad-scaler state, every
process's RNG states and the data position (epoch, optimizer steps done in it). Batch orders are a
pure function of (seed, epoch) (`batching.py`), so a run killed at any moment and resumed from its
last checkpoint ends with the same weights, bit for bit, as one that was never interrupted (on the
same hardware and number of processes).

Run folder layout (CONTRACT §2):

    run_dir/train_log.jsonl            one line per `log_every` steps, one per dev evaluation
    run_dir/best.safetensors           trainable weights of the best dev checkpoint
    run_dir/checkpoints/step-<N>/      model.safetensors, optimizer.pt, rng.pt, state.json (last 2 kept)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

from kadapter_cli.batching import epoch_batches, groups, restore_order, sequential_batches, shard
from kadapter_cli.errors import BadInput, KadapterError
from kadapter_cli.progress import info, progress

if TYPE_CHECKING:  # torch and accelerate are imported inside functions: `kadapter --help` stays fast
    import torch
    from accelerate import Accelerator
    from torch import nn

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
BEST_WEIGHTS = "best.safetensors"
KEEP_CHECKPOINTS = 2

# Options that shape the trajectory: resuming with any of them changed would not continue the same run.
_TRAJECTORY_OPTIONS = (
    "epochs", "max_steps", "batch_size", "lr", "warmup", "weight_decay", "adam_eps", "adam_beta1", "adam_beta2",
    "max_grad_norm", "grad_accum", "seed", "limit", "bucket_size", "precision",
)

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of common training GPUs, for the MFU column.
_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


# ---------------------------------------------------------------- configuration and interfaces


@dataclass
class TrainConfig:
    """Every option of the loop; field names are the CLI's long option names with `_` (CONTRACT §1)."""

    epochs: int = 3
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule ends there too)
    batch_size: int = 32  # examples per micro-batch per process
    lr: float = 2e-5
    warmup: float = 0  # >= 1: steps; 0 < x < 1: share of the total steps
    weight_decay: float = 0.0  # not applied to biases and norm weights (1-d parameters)
    adam_eps: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # Dozat & Manning's parser uses 0.9: it helps the lin pointer head (README)
    max_grad_norm: float = 1.0  # 0 turns clipping off
    grad_accum: int = 1
    seed: int = 42
    save_every: int | None = None  # steps; None = only at the end of each epoch
    eval_every: int | None = None  # steps; None = at the end of each epoch
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    limit: int | None = None  # use the first N training (and dev) examples
    bucket_size: int = 100  # batches per length-sorted pool

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "TrainConfig":
        """The loop's options out of a command's full option dict (other keys are ignored)."""
        values = {}
        for f in dataclasses.fields(cls):
            # None means "not given" for options that have a value by default, "off" for the others.
            if f.name in options and (options[f.name] is not None or f.default is None):
                values[f.name] = options[f.name]
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """`BadInput` naming the option for any value the loop cannot run with."""
        def at_least(name: str, value: float | None, low: float, optional: bool = False) -> None:
            if value is None and optional:
                return
            if value is None or value < low:
                raise BadInput(f"--{name.replace('_', '-')} must be at least {low:g}, got {value}")

        at_least("epochs", self.epochs, 1)
        at_least("max_steps", self.max_steps, 1, optional=True)
        at_least("batch_size", self.batch_size, 1)
        at_least("grad_accum", self.grad_accum, 1)
        at_least("log_every", self.log_every, 1)
        at_least("bucket_size", self.bucket_size, 1)
        at_least("save_every", self.save_every, 1, optional=True)
        at_least("eval_every", self.eval_every, 1, optional=True)
        at_least("limit", self.limit, 1, optional=True)
        for name in ("warmup", "weight_decay", "max_grad_norm"):
            at_least(name, getattr(self, name), 0)
        if not self.lr > 0:
            raise BadInput(f"--lr must be positive, got {self.lr}")
        if not self.adam_eps > 0:
            raise BadInput(f"--adam-eps must be positive, got {self.adam_eps}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise BadInput(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise BadInput(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")

    def warmup_steps(self, total_steps: int) -> int:
        """`warmup` ≥ 1 is a step count; a value in (0, 1) is a share of `total_steps`."""
        if self.warmup >= 1:
            return int(self.warmup)
        return int(round(self.warmup * total_steps))


class Objective(Protocol):
    """What the loop optimises. Fac, lin and each downstream task provide one."""

    primary_metric: str  # key of `score()` used to pick the best checkpoint (higher is better)

    def length(self, example: Any) -> int:
        """Tokens in the example (for length bucketing and the tokens/s column)."""

    def collate(self, examples: list) -> dict[str, "torch.Tensor"]:
        """A batch padded to its own longest example (tensors on CPU; the loop moves them)."""

    def loss(self, model: "nn.Module", batch: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        """Mean loss of the batch. `model` is as Accelerate prepared it (DDP-wrapped under several
        processes): call it, do not reach into its attributes."""

    def predict(self, model: "nn.Module", batch: dict[str, "torch.Tensor"]) -> list:
        """One output per example, in batch order, as plain Python values (they are gathered
        across processes)."""

    def score(self, outputs: list, examples: list) -> dict[str, float]:
        """Metrics of outputs (in input order) against their examples."""


@dataclass
class TrainResult:
    """What a finished run reports; the model itself already holds the best weights."""

    best_metrics: dict[str, float]  # dev metrics at `best_step` ({} without dev data)
    best_step: int  # the step whose weights the model holds (the last one without dev data)
    steps: int  # optimizer steps done
    final_metrics: dict[str, float]  # dev metrics at the last step ({} without dev data)
    throughput: dict[str, float] = field(default_factory=dict)  # examples/s, tokens/s, ms/step, train_s


class TrainingOutOfMemory(BadInput):
    """Training or evaluation ran out of device or host memory; the message names what to lower."""


# ---------------------------------------------------------------- the loop


@dataclass
class _State:
    """Where a run is; saved as a checkpoint's state.json."""

    step: int = 0
    epoch: int = 0  # the epoch in progress (== epochs once all are done)
    steps_in_epoch: int = 0  # optimizer steps of `epoch` already done
    batch_in_epoch: int = 0  # this process's micro-batches of `epoch` already done
    best_step: int | None = None
    best_metric: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    examples_seen: int = 0  # over all processes
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps (evaluation and saving excluded)


def train(
    model: "nn.Module",
    objective: Objective,
    train_examples: Sequence,
    dev_examples: Sequence | None,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
) -> TrainResult:
    """Trains `model` on `train_examples`, evaluating on `dev_examples`; returns with the best weights loaded.

    Only parameters with `requires_grad` are optimised: the caller decides what is frozen (and a
    model that keeps a frozen part in eval mode does so by overriding `train()`). `resume=True`
    continues from the latest complete checkpoint under `run_dir/checkpoints/` (or starts fresh,
    saying so, when there is none); `resume=False` discards earlier checkpoints and log.
    """
    import torch
    from accelerate.utils import set_seed

    config.validate()
    run_dir = Path(run_dir)
    accelerator = make_accelerator(config)
    is_main = accelerator.is_main_process
    world = accelerator.num_processes

    examples = _limited(train_examples, config.limit)
    dev = _limited(dev_examples, config.limit) if dev_examples is not None else []
    if not examples:
        raise BadInput("no training examples")
    lengths = [int(objective.length(e)) for e in examples]
    n_batches = math.ceil(len(examples) / config.batch_size)
    steps_per_epoch = math.ceil(math.ceil(n_batches / world) / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # device_specific: each process draws its own dropout masks.
    set_seed(config.seed, device_specific=True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise KadapterError("the model has no trainable parameters (every parameter has requires_grad=False)")
    optimizer = _adamw(trainable, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        _warmup_then_linear_decay, warmup=config.warmup_steps(total_steps), total=total_steps))
    # The scheduler is not handed to Accelerate: its prepared form steps once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = _State()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, unwrapped, optimizer, scheduler, accelerator, config)
        if is_main:
            _truncate_log(run_dir / LOG_FILE, state.step)
            info(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
    else:
        if resume and is_main:
            info(f"no checkpoint under {run_dir / CHECKPOINTS}; starting fresh")
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_checkpoints(run_dir)
            (run_dir / LOG_FILE).unlink(missing_ok=True)
            (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    loop = _Loop(accelerator, model, unwrapped, optimizer, scheduler, objective, examples, lengths, dev,
                 config, run_dir, state, total_steps)
    if state.step < total_steps:
        loop.run()
    elif is_main:
        info(f"training already complete at step {state.step}")
    return loop.finish()


class _Loop:
    """The state of one `train()` call; split out so each phase is a short method."""

    def __init__(self, accelerator, model, unwrapped, optimizer, scheduler, objective, examples, lengths,
                 dev, config: TrainConfig, run_dir: Path, state: _State, total_steps: int):
        self.accelerator, self.model, self.unwrapped = accelerator, model, unwrapped
        self.optimizer, self.scheduler, self.objective = optimizer, scheduler, objective
        self.examples, self.lengths, self.dev = examples, lengths, dev
        self.config, self.run_dir, self.state = config, run_dir, state
        self.total_steps = total_steps
        self.is_main = accelerator.is_main_process
        self.trainable = [p for p in unwrapped.parameters() if p.requires_grad]
        self.flops_per_token = _flops_per_token(unwrapped)
        self.peak_flops = _peak_flops(accelerator.device, config.precision)
        self._window = _Window()

    # -- phases

    def run(self) -> None:
        config, state = self.config, self.state
        columns = _progress_columns()
        bar = progress(*columns)
        bar.disable = bar.disable or not self.is_main  # one bar, not one per process
        with bar:
            task = bar.add_task("train", total=self.total_steps, completed=state.step, status="")
            for epoch in range(state.epoch, config.epochs):
                all_batches = epoch_batches(self.lengths, config.batch_size, config.seed, epoch, config.bucket_size)
                mine = shard(all_batches, self.accelerator.process_index, self.accelerator.num_processes)
                step_groups = groups(mine, config.grad_accum)
                first = state.steps_in_epoch if epoch == state.epoch else 0
                for g in range(first, len(step_groups)):
                    self._train_step(step_groups[g])
                    epoch_end = g == len(step_groups) - 1
                    final = state.step >= self.total_steps
                    if epoch_end:
                        state.epoch, state.steps_in_epoch, state.batch_in_epoch = epoch + 1, 0, 0
                    else:
                        state.epoch, state.steps_in_epoch = epoch, g + 1
                        state.batch_in_epoch = min((g + 1) * config.grad_accum, len(mine))
                    self._after_step(epoch + (g + 1) / len(step_groups), epoch_end, final)
                    if self.is_main:
                        bar.update(task, completed=state.step, status=self._window.status)
                    if final:
                        return

    def _train_step(self, group: list[list[int]]) -> None:
        """One optimizer step over a group of micro-batches (gradient accumulation)."""
        accelerator, state = self.accelerator, self.state
        self.model.train()
        self._window.start()
        loss_sum = None
        n_examples = n_tokens = 0
        try:
            for i, indices in enumerate(group):
                batch = self._batch(indices)
                # Gradients are all-reduced only on the group's last micro-batch.
                sync = nullcontext() if i == len(group) - 1 else accelerator.no_sync(self.model)
                with sync:
                    with accelerator.autocast():
                        loss = self.objective.loss(self.model, batch)
                    accelerator.backward(loss / len(group))
                detached = loss.detach().float()
                loss_sum = detached if loss_sum is None else loss_sum + detached
                n_examples += len(indices)
                n_tokens += sum(self.lengths[j] for j in indices)
            grad_norm = None
            if self.config.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
            self.optimizer.step()
            # optimizer.step() before scheduler.step() (the original has them the other way round).
            if not accelerator.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        except (RuntimeError, MemoryError) as e:
            if _is_out_of_memory(e):
                longest = max(self.lengths[j] for indices in group for j in indices)
                raise _out_of_memory(f"training step {state.step + 1}", max(map(len, group)), longest) from None
            raise
        self._window.add(loss_sum / len(group), grad_norm, n_examples, n_tokens)
        state.step += 1

    def _after_step(self, epoch_progress: float, epoch_end: bool, final: bool) -> None:
        config, state = self.config, self.state
        save = final or epoch_end or (config.save_every is not None and state.step % config.save_every == 0)
        # A log line at every checkpoint too: the counters it flushes into the state are then saved whole.
        if save or state.step % config.log_every == 0:
            self._log_training(epoch_progress)
        if self.dev and (final or (epoch_end if config.eval_every is None else state.step % config.eval_every == 0)):
            self._evaluate_and_select(epoch_progress)
        if save:
            self._save_checkpoint()

    def finish(self) -> TrainResult:
        """Loads the best weights back (writing them first when there is no dev data) and reports."""
        from safetensors.torch import load_file

        state, accelerator = self.state, self.accelerator
        best_path = self.run_dir / BEST_WEIGHTS
        if not self.dev:
            state.best_step = state.step
            if self.is_main:
                _save_weights_atomically(_trainable_state(self.unwrapped), best_path)
        accelerator.wait_for_everyone()
        _copy_into(self.unwrapped, load_file(best_path), best_path)
        seconds = max(state.train_seconds, 1e-9)
        throughput = {
            "examples_per_s": state.examples_seen / seconds,
            "tokens_per_s": state.tokens_seen / seconds,
            "ms_per_step": 1000 * seconds / max(state.step, 1),
            "train_seconds": state.train_seconds,
        }
        if self.is_main:
            if state.best_metrics:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in state.best_metrics.items() if isinstance(v, float))
                info(f"best dev at step {state.best_step}: {shown}")
            _append_log(self.run_dir / LOG_FILE, {"step": state.step, "best_step": state.best_step,
                                                  "best_dev": state.best_metrics, **throughput})
        return TrainResult(best_metrics=dict(state.best_metrics), best_step=int(state.best_step),
                           steps=state.step, final_metrics=dict(state.last_metrics), throughput=throughput)

    # -- pieces

    def _batch(self, indices: list[int]) -> dict:
        from accelerate.utils import send_to_device

        return send_to_device(self.objective.collate([self.examples[j] for j in indices]), self.accelerator.device)

    def _log_training(self, epoch_progress: float) -> None:
        record = self._window.summary(self.accelerator, self.flops_per_token, self.peak_flops)
        state = self.state
        state.examples_seen += record.pop("_examples")
        state.tokens_seen += record.pop("_tokens")
        state.train_seconds += record.pop("_seconds")
        if not math.isfinite(record["loss"]):
            raise KadapterError(
                f"training diverged: the loss is {record['loss']} at step {state.step}; lower --lr, raise "
                "--warmup, or train in --precision bf16 or fp32")
        if self.is_main:
            lr = self.scheduler.get_last_lr()[0]
            _append_log(self.run_dir / LOG_FILE, {"step": state.step, "epoch": round(epoch_progress, 4),
                                                  "lr": lr, **record})

    def _evaluate_and_select(self, epoch_progress: float) -> None:
        started = time.perf_counter()
        metrics, _ = _evaluate(self.accelerator, self.unwrapped, self.objective, self.dev, self.config)
        metrics = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}  # numpy/torch scalars → JSON
        state = self.state
        key = self.objective.primary_metric
        if key not in metrics:
            raise KadapterError(f"the objective's primary metric {key!r} is not among its scores ({', '.join(metrics)})")
        state.last_metrics = metrics
        improved = state.best_metric is None or metrics[key] > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.best_metrics = float(metrics[key]), state.step, metrics
            if self.is_main:
                _save_weights_atomically(_trainable_state(self.unwrapped), self.run_dir / BEST_WEIGHTS)
        if self.is_main:
            _append_log(self.run_dir / LOG_FILE, {"step": state.step, "epoch": round(epoch_progress, 4),
                                                  "dev": metrics, "best": improved,
                                                  "eval_seconds": round(time.perf_counter() - started, 3)})

    def _save_checkpoint(self) -> None:
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        # Every process's RNG states go into the one file the main process writes.
        rng_states = _rng_state()
        all_rng = gather_object([rng_states]) if accelerator.num_processes > 1 else [rng_states]
        if self.is_main:
            scaler = getattr(accelerator, "scaler", None)
            _write_checkpoint(
                self.run_dir / CHECKPOINTS, self.state.step,
                weights=_trainable_state(self.unwrapped),
                optim={"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None else None},
                rng={"world_size": accelerator.num_processes, "ranks": all_rng},
                state={**dataclasses.asdict(self.state), "world_size": accelerator.num_processes,
                       "total_steps": self.total_steps, "config": dataclasses.asdict(self.config)},
            )
        accelerator.wait_for_everyone()


class _Window:
    """Training numbers since the last log line.

    Losses and gradient norms stay on the device until the log line, and time is the wall time from
    the window's first step to the log line (evaluation and saving fall outside windows), so no
    step waits for the device just to be measured.
    """

    def __init__(self) -> None:
        self._reset()
        self.status = ""

    def _reset(self) -> None:
        self.loss_sum = None
        self.grad_norm_sum = None
        self.steps = 0
        self.examples = 0
        self.tokens = 0
        self.started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def add(self, loss, grad_norm, examples: int, tokens: int) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        if grad_norm is not None:
            grad_norm = grad_norm.detach().float()
            self.grad_norm_sum = grad_norm if self.grad_norm_sum is None else self.grad_norm_sum + grad_norm
        self.steps += 1
        self.examples += examples
        self.tokens += tokens

    def summary(self, accelerator, flops_per_token: float, peak_flops: float | None) -> dict[str, Any]:
        """Log fields averaged over the window and summed over processes (a collective: every process calls it)."""
        import torch

        loss_sum = float(self.loss_sum)  # waits for the device: the window's work is done after this
        seconds = time.perf_counter() - self.started
        totals = torch.tensor([loss_sum, float(self.steps), float(self.examples), float(self.tokens), seconds],
                              dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(totals, reduction="sum")
        loss_sum, steps, examples, tokens, seconds = totals.tolist()
        world = accelerator.num_processes
        wall = max(seconds / world, 1e-9)  # processes run side by side: their mean time is the wall time
        record: dict[str, Any] = {
            "loss": loss_sum / steps,
            "examples_per_s": round(examples / wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "ms_per_step": round(1000 * wall / (steps / world), 2),
            "model_tflops": float(f"{flops_per_token * tokens / wall / 1e12:.4g}"),
        }
        if self.grad_norm_sum is not None:
            record["grad_norm"] = float(self.grad_norm_sum) / self.steps
        if peak_flops:
            record["mfu"] = round(flops_per_token * tokens / wall / (peak_flops * world), 4)
        record.update(_examples=int(examples), _tokens=int(tokens), _seconds=wall)
        self.status = f"loss {record['loss']:.4f} · {record['examples_per_s']:.0f} ex/s · {record['ms_per_step']:.0f} ms/step"
        self._reset()
        return record


# ---------------------------------------------------------------- evaluation


def evaluate(
    model: "nn.Module",
    objective: Objective,
    examples: Sequence,
    config: TrainConfig,
    accelerator: "Accelerator | None" = None,
) -> tuple[dict[str, float], list]:
    """Scores `model` on `examples`; returns `(metrics, outputs in input order)`.

    Batches are sorted by length (little padding) and spread over the processes; every process gets
    all outputs back. Without an `accelerator` one is made from `config` and the model is moved to
    its device.
    """
    if accelerator is None:
        accelerator = make_accelerator(config)
        model = model.to(accelerator.device)
    return _evaluate(accelerator, model, objective, list(examples), config)


def _evaluate(accelerator, model, objective: Objective, examples: list, config: TrainConfig) -> tuple[dict, list]:
    import torch
    from accelerate.utils import send_to_device

    if not examples:
        return {}, []
    lengths = [int(objective.length(e)) for e in examples]
    batches = shard(sequential_batches(lengths, config.batch_size), accelerator.process_index,
                    accelerator.num_processes, pad=False)
    was_training = model.training
    model.eval()
    pairs: list[tuple[int, Any]] = []
    try:
        with torch.no_grad():
            for indices in batches:
                batch = send_to_device(objective.collate([examples[j] for j in indices]), accelerator.device)
                with accelerator.autocast():
                    outputs = objective.predict(model, batch)
                if len(outputs) != len(indices):
                    raise KadapterError(f"objective.predict returned {len(outputs)} outputs for {len(indices)} examples")
                pairs.extend(zip(indices, outputs))
    except (RuntimeError, MemoryError) as e:
        if _is_out_of_memory(e):
            raise _out_of_memory("evaluation", config.batch_size, max(lengths)) from None
        raise
    finally:
        model.train(was_training)
    if accelerator.num_processes > 1:
        pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
    outputs = restore_order([i for i, _ in pairs], [o for _, o in pairs], len(examples))
    return objective.score(outputs, examples), outputs


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under `run_dir/checkpoints/`, or None.

    Only `step-<N>` folders count: one is renamed into place only after all its files are written.
    """
    root = Path(run_dir) / CHECKPOINTS
    complete = [p for p in _step_folders(root) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def remove_checkpoints(run_dir: str | Path) -> None:
    """Deletes `run_dir/checkpoints/` (a command calls this once its artifact is complete)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.exists():
        trash = root.with_name(f".{CHECKPOINTS}.trash-{os.getpid()}")
        os.replace(root, trash)  # one atomic step: never a half-deleted checkpoint that looks complete
        shutil.rmtree(trash, ignore_errors=True)


def _step_folders(root: Path) -> list[Path]:
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
                found.append(p)
    return sorted(found, key=lambda p: int(p.name[5:]))


def _write_checkpoint(root: Path, step: int, weights: dict, optim: dict, rng: dict, state: dict) -> Path:
    """Writes `root/step-<step>/` atomically, then keeps only the newest `KEEP_CHECKPOINTS`."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".step-*"):  # scratch of a writer that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    tmp.mkdir()
    save_file(weights, tmp / "model.safetensors")
    torch.save(optim, tmp / "optimizer.pt")
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        _fsync(f)
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in _step_folders(root)[:-KEEP_CHECKPOINTS]:
        _discard(old)
    return final


def _load_checkpoint(folder: Path, model, optimizer, scheduler, accelerator, config: TrainConfig) -> _State:
    import torch
    from safetensors.torch import load_file

    saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    # An option a checkpoint does not record (written before the option existed) ran at its default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved_config = {k: saved.get("config", {}).get(k, defaults[k]) for k in _TRAJECTORY_OPTIONS}
    changed = [f"--{k.replace('_', '-')} {saved_config[k]!r} → {getattr(config, k)!r}"
               for k in _TRAJECTORY_OPTIONS if saved_config[k] != getattr(config, k)]
    if changed:
        raise BadInput("cannot resume with different training options (" + "; ".join(changed)
                       + "); use the checkpoint's options or start again without --resume", folder)
    if saved.get("world_size") != accelerator.num_processes:
        raise BadInput(f"checkpoint was written by {saved.get('world_size')} processes, this run has "
                       f"{accelerator.num_processes}; resume with the same number", folder)
    _copy_into(model, load_file(folder / "model.safetensors"), folder / "model.safetensors")
    optim = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and optim.get("scaler") is not None:
        scaler.load_state_dict(optim["scaler"])
    rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    _set_rng_state(rng["ranks"][accelerator.process_index])
    names = {f.name for f in dataclasses.fields(_State)}
    return _State(**{k: v for k, v in saved.items() if k in names})


def _discard(folder: Path) -> None:
    trash = folder.with_name(f".{folder.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)  # renamed first so a half-deleted folder never looks like a checkpoint
    shutil.rmtree(trash, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _trainable_state(model) -> dict:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save_weights_atomically(weights: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(weights, tmp)
    _fsync(tmp)
    os.replace(tmp, path)


def _copy_into(model, weights: dict, source: Path) -> None:
    """Copies saved trainable weights into the model; `BadInput` if the names or shapes differ."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(weights):
        missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise BadInput(f"weights do not match the model's trainable parameters (missing {missing[:3]}, "
                       f"unexpected {extra[:3]})", source)
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != weights[name].shape:
                raise BadInput(f"{name}: saved shape {tuple(weights[name].shape)}, model has {tuple(p.shape)}", source)
            p.copy_(weights[name])


# ---------------------------------------------------------------- RNG states (tensors and lists only)


def _rng_state() -> dict:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng_to_list(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_python_rng_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["kind"], s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["gauss"]))


def _python_rng_to_list(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _python_rng_from_list(state: list) -> tuple:
    version, internal, gauss_next = state
    return (version, tuple(internal), gauss_next)


# ---------------------------------------------------------------- accelerator, optimizer, schedule


def make_accelerator(config: TrainConfig) -> "Accelerator":
    """An `Accelerator` for `--device` / `--precision`; the launcher (if any) decides the processes."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if config.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is visible to this process")
    on_cpu = config.device == "cpu" or not torch.cuda.is_available()
    if config.precision == "fp16" and on_cpu:
        raise BadInput("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision]
    # Gradient accumulation is the loop's own (`groups` of micro-batches), not Accelerate's counter:
    # checkpoints then fall on optimizer-step boundaries and an epoch's short last group is averaged
    # over its own size.
    # cpu=True also on a machine without CUDA: only then does Accelerate join processes started by
    # torchrun / `accelerate launch --multi_gpu` over gloo instead of running each one alone.
    try:
        return Accelerator(cpu=on_cpu, mixed_precision=mixed)
    except ValueError as e:
        # Accelerate's state is process-wide: a second run in one process (a pipeline, a test) with
        # another precision or device must reset it. Under a multi-process launch it cannot be.
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(cpu=on_cpu, mixed_precision=mixed)


def _adamw(named_params: list, config: TrainConfig):
    import torch

    # Decay matrices only: decaying biases and LayerNorm gains pulls them towards 0 for no benefit.
    decay = [p for n, p in named_params if p.ndim >= 2]
    no_decay = [p for n, p in named_params if p.ndim < 2]
    param_groups = [g for g in ({"params": decay, "weight_decay": config.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    # The fused kernel updates every parameter in one pass: the per-tensor loop costs 3-5x more per
    # step, which is a tenth of an adapter step on CPU (benchmarks/RESULTS.md).
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named_params)
    return torch.optim.AdamW(param_groups, lr=config.lr, eps=config.adam_eps,
                             betas=(config.adam_beta1, config.adam_beta2), fused=fused)


def _warmup_then_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: 0 → 1 over `warmup` steps, then linearly to 0 at `total` (as HF's linear schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------- helpers


def _limited(examples: Sequence | None, limit: int | None) -> list:
    examples = list(examples or [])
    return examples[:limit] if limit is not None else examples


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return "out of memory" in message or "can't allocate memory" in message or "not enough memory" in message


def _out_of_memory(where: str, batch_examples: int, longest: int) -> TrainingOutOfMemory:
    return TrainingOutOfMemory(
        f"out of memory during {where} (batch of {batch_examples} examples, longest {longest} tokens); "
        "lower --batch-size (raise --grad-accum to keep the effective batch), --max-length, "
        "or --cache-budget (--cache-features off turns the feature cache off)"
    )


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drops log lines written after the checkpoint we resume from: they will be written again."""
    if not path.is_file():
        return
    kept = []
    for line in _log_lines(path):
        record = json.loads(line)
        if record.get("step", 0) <= step and "best_dev" not in record:  # the end-of-run summary is rewritten
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _log_lines(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        yield line


def _flops_per_token(model) -> float:
    """Approximate training FLOPs per token: 2·N forward over all weights + 4·N backward over trainable ones.

    Attention's L² term is left out (small at these lengths); a cached backbone that is skipped
    makes this an overestimate.
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2.0 * total + 4.0 * trainable


def _peak_flops(device, precision: str) -> float | None:
    import torch

    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in _PEAK_FLOPS.items() if gpu in name), None)


def _progress_columns() -> list:
    from rich.progress import TextColumn

    return [TextColumn("{task.fields[status]}")]
