"""The one training loop: adapter pretraining and task fine-tuning both run through `train()`.

What the loop owns, and nothing else: AdamW over the parameters that require grad, linear warm-up
then linear decay to 0, gradient clipping, the split of each effective batch into micro-batches
over processes and accumulation steps, dev evaluation with best-checkpoint selection, checkpoints
with exact resume, and the training log. What is optimised — how examples are
padded, what the loss is, how outputs are scored — comes from an `Objective`.

Built on Accelerate, so the same code runs on CPU, on one GPU (bf16/fp16 autocast) and on several
processes under `accelerate launch` or `torchrun`. `batch_size` is the effective batch (examples
per optimizer step over all processes); each step's examples are split into `micro_batch_size`
parts over processes and accumulation steps, and the losses are weighted so that the gradient is
the mean over the step whatever the split (`batching.step_micro_batches`): N processes give the
weights of one process up to float rounding. Gradients are averaged by DDP, evaluation gathers
outputs from all processes once each, and only the main process writes files.

Exact resume: a checkpoint holds the trainable weights, optimizer/scheduler/grad-scaler state, every
process's RNG states and the data position (epoch, optimizer steps done in it). Batch orders are a
pure function of (seed, epoch) (`batching.py`), so a run killed at any moment and resumed from its
last checkpoint ends with the same weights, bit for bit, as one that was never interrupted (on the
same hardware and number of processes; on CUDA only with `config.deterministic`, whose kernels add
in a fixed order).

The loop's pieces live one concern a file: `train_config.py` (options, the `Objective` protocol,
the result), `train_setup.py` (accelerator, AdamW, schedule, out-of-memory message),
`checkpoints.py` (checkpoint files, RNG states, exact resume) and `train_log.py` (log lines,
throughput and MFU).

Run folder layout (docs/artifacts.md):

    run_dir/train_log.jsonl            one line per `log_every` steps, one per dev evaluation
    run_dir/best.safetensors           trainable weights of the best dev checkpoint
    run_dir/checkpoints/step-<N>/      model.safetensors, optimizer.pt, rng.pt, state.json (last 2 kept)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kadapter_cli.artifacts.output import CHECKPOINTS, checkpoint_step, latest_checkpoint, remove_checkpoints
from kadapter_cli.errors import BadInput, KadapterError, ParamText
from kadapter_cli.processes import is_main_process
from kadapter_cli.progress import info, progress
from kadapter_cli.training.batching import epoch_batches, restore_order, sequential_batches, shard, step_micro_batches
from kadapter_cli.training.checkpoints import (
    BEST_WEIGHTS,
    TrainState,
    load_best_weights,
    load_checkpoint,
    resume_checkpoint,
    save_weights_atomically,
    trainable_state,
    write_checkpoint,
)
from kadapter_cli.training.config import BatchSplit, Objective, TrainConfig, TrainResult
from kadapter_cli.training.flops import count_flops, device_peak
from kadapter_cli.training.log import (
    LOG_FILE,
    StepWindow,
    append_log,
    progress_columns,
    truncate_log,
)
from kadapter_cli.training.rng import rng_state
from kadapter_cli.training.setup import (
    TrainingOutOfMemory,
    adamw,
    clip_gradients,
    clip_groups,
    compile_trainable,
    is_out_of_memory,
    make_accelerator,
    out_of_memory,
    resolve_precision,
    warmup_then_linear_decay,
)
from kadapter_cli.training.tracking import RunTracker, tracking_location

if TYPE_CHECKING:  # torch and accelerate are imported inside functions: `kadapter --help` stays fast
    from accelerate import Accelerator
    from torch import nn

# A forward pass's fixed cost on a CPU in tokens' worth of compute: measured about 45 for the
# benchmark's 24-layer, 256-wide backbone (a 1 × 4 batch against 16 × 64); roberta-large's tokens cost
# about 16 times more, so it should be a few there (`batching.sequential_batches`).
CPU_BATCH_OVERHEAD_TOKENS = 32

__all__ = ["train", "evaluate", "predict", "TrainConfig", "TrainResult", "Objective", "TrainingOutOfMemory",
           "make_accelerator", "latest_checkpoint", "remove_checkpoints"]


def train(
    model: "nn.Module",
    objective: Objective,
    train_examples: Sequence,
    dev_examples: Sequence | None,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    hparams: dict[str, Any] | None = None,
) -> TrainResult:
    """Trains `model` on `train_examples`, evaluating on `dev_examples`; returns with the best weights loaded.

    Only parameters with `requires_grad` are optimised: the caller decides what is frozen (and a
    model that keeps a frozen part in eval mode does so by overriding `train()`). `resume=True`
    continues from the latest complete checkpoint under `run_dir/checkpoints/` (or starts fresh,
    saying so, when there is none); `resume=False` discards earlier checkpoints and log.
    `hparams` (the command's effective configuration; default: `config`) go to the trackers of
    `config.report_to`.
    """
    import torch
    from accelerate.utils import set_seed

    config.validate()
    # The precision the run computes in (auto → bf16 on a capable GPU, fp32 elsewhere): checkpoints
    # record it, so a resume on the same hardware with `auto` continues the same run.
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, config.device))
    run_dir = Path(run_dir)
    checkpoint = resume_checkpoint(run_dir) if resume else None
    run_name, tracking_dir = tracking_location(config, run_dir)
    tracker = RunTracker(config.report_to, run_name, tracking_dir, hparams or dataclasses.asdict(config),
                         resume_step=checkpoint_step(checkpoint) if checkpoint is not None else None)
    accelerator = make_accelerator(config, log_with=tracker.trackers)
    is_main = is_main_process()
    world = accelerator.num_processes

    examples = _limited(train_examples, config.limit)
    dev = _limited(dev_examples, config.limit) if dev_examples is not None else []
    if not examples:
        raise BadInput("no training examples")
    lengths = [int(objective.length(e)) for e in examples]
    split = config.batch_split(world)
    if is_main:
        info(split.describe())
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    # --max-steps overrides the epoch count, as in the Hugging Face Trainer: the run takes that many
    # steps, over as many epochs (the last one cut short) as they need.
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = config.warmup_steps(total_steps)
    # Step k trains at the multiplier of step k-1, so a warm-up as long as the run never gets to 1 either.
    if warmup_steps >= total_steps and is_main:
        info(ParamText("warning: {warmup:{steps:,}} steps is not shorter than the run ({total:,} steps): the "
                       "learning rate never reaches {lr:{peak:g}}; give a share instead ({warmup:0.1} = the first 10%)",
                       steps=warmup_steps, total=total_steps, peak=config.lr))

    # device_specific: each process draws its own dropout masks.
    set_seed(config.seed, device_specific=True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise KadapterError("the model has no trainable parameters (every parameter has requires_grad=False)")
    if config.compile:
        compile_trainable(model, objective)
    optimizer = adamw(trainable, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        warmup_then_linear_decay, warmup=warmup_steps, total=total_steps))
    # The scheduler is not handed to Accelerate: its prepared form steps once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = TrainState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, unwrapped, optimizer, scheduler, accelerator, config)
        if is_main:
            truncate_log(run_dir / LOG_FILE, state.step)
            info(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
    elif is_main:
        if resume:
            info(f"no checkpoint under {run_dir / CHECKPOINTS}; starting fresh")
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_checkpoints(run_dir)
        (run_dir / LOG_FILE).unlink(missing_ok=True)
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    loop = _Loop(accelerator, model, unwrapped, optimizer, scheduler, objective, examples, lengths, dev,
                 config, split, run_dir, state, total_steps, epochs, tracker)
    try:
        tracker.start(accelerator)
        if state.step < total_steps:
            loop.run()
        elif is_main:
            info(f"training already complete at step {state.step}")
        return loop.finish()
    finally:
        tracker.finish()


class _Loop:
    """The state of one `train()` call; split out so each phase is a short method."""

    def __init__(self, accelerator, model, unwrapped, optimizer, scheduler, objective, examples, lengths,
                 dev, config: TrainConfig, split: BatchSplit, run_dir: Path, state: TrainState, total_steps: int,
                 epochs: int, tracker: RunTracker):
        self.accelerator, self.model, self.unwrapped = accelerator, model, unwrapped
        self.tracker = tracker
        self.optimizer, self.scheduler, self.objective = optimizer, scheduler, objective
        self.examples, self.lengths, self.dev = examples, lengths, dev
        self.config, self.split, self.run_dir, self.state = config, split, run_dir, state
        self.total_steps, self.epochs = total_steps, epochs
        self.is_main = is_main_process()
        self.clip_groups = clip_groups(unwrapped, config.clip_mode)
        # Model FLOPs per real token: counted on this call's first step that has tokens (`training/flops.py`).
        self.flops_per_token: float | None = None
        self.peak_flops, peak_source = device_peak(accelerator.device, accelerator.mixed_precision)
        if self.is_main and accelerator.device.type == "cuda":
            info(f"MFU against {peak_source}" if self.peak_flops else peak_source)
        # fp16's grad scaler: the scale after the last step (a drop means that step was skipped).
        self._scaler = getattr(accelerator, "scaler", None)
        self._scale = self._scaler.get_scale() if self._scaler is not None else None
        self._window = StepWindow(count_skips=self._scaler is not None)
        self.bar = None  # the live training bar, once `run()` shows it (dev evaluation adds its row there)

    # -- phases

    def run(self) -> None:
        config, state = self.config, self.state
        columns = progress_columns()
        bar = self.bar = progress(*columns)
        bar.disable = bar.disable or not self.is_main  # one bar, not one per process
        with bar:
            task = bar.add_task("train", total=self.total_steps, completed=state.step, status="", unit="steps")
            split, rank = self.split, self.accelerator.process_index
            for epoch in range(state.epoch, self.epochs):
                # One batch per optimizer step, the same on every process; each takes its parts.
                steps = epoch_batches(self.lengths, config.batch_size, config.seed, epoch, config.bucket_size)
                first = state.steps_in_epoch if epoch == state.epoch else 0
                plan = {g: step_micro_batches(steps[g], split.processes, split.grad_accum, rank)
                        for g in range(first, len(steps))}
                feeder = _Feeder(self._batch, [ix for g in plan for ix, _ in plan[g]]) if self._prefetches() else None
                try:
                    self._epoch(epoch, steps, first, plan, feeder, bar, task)
                finally:
                    if feeder is not None:
                        feeder.close()
                if state.step >= self.total_steps:
                    return

    def _prefetches(self) -> bool:
        """Whether batches are made one ahead on a background thread: on a CUDA device (the host's
        collation and cache gathering then overlap the device's step), for objectives whose
        collation draws no random numbers (a prefetched draw would move the RNG state a checkpoint
        saves). Never on a CPU: the thread would compete with the step for the same cores."""
        return self.accelerator.device.type == "cuda" and not getattr(self.objective, "collate_draws_random", False)

    def _epoch(self, epoch: int, steps: list, first: int, plan: dict, feeder, bar, task) -> None:
        """The steps `first`… of `epoch` (`plan`: each step's micro-batches); returns early at the run's last step."""
        state = self.state
        for g in range(first, len(steps)):
            self._train_step(plan[g], feeder)
            epoch_end = g == len(steps) - 1
            final = state.step >= self.total_steps
            if epoch_end:
                state.epoch, state.steps_in_epoch = epoch + 1, 0
            else:
                state.epoch, state.steps_in_epoch = epoch, g + 1
            self._after_step(epoch + (g + 1) / len(steps), epoch_end, final)
            if self.is_main:
                bar.update(task, completed=state.step, status=self._window.status)
            if final:
                return

    def _train_step(self, micro_batches: list[tuple[list[int], float]], feeder: "_Feeder | None" = None) -> None:
        """One optimizer step: this process's micro-batches, each loss weighted by its share of the step
        (made here, or taken from `feeder`, which made them ahead)."""
        accelerator, state = self.accelerator, self.state
        processes = accelerator.num_processes
        self.model.train()
        self._window.start()
        loss_sum = None
        n_examples = n_tokens = 0
        counting = count_flops() if self.flops_per_token is None else nullcontext()
        try:
            with counting as counted:
                for i, (indices, share) in enumerate(micro_batches):
                    batch = self._batch(indices) if feeder is None else feeder.get(indices)
                    # Gradients are all-reduced only on the step's last micro-batch.
                    sync = nullcontext() if i == len(micro_batches) - 1 else accelerator.no_sync(self.model)
                    with sync:
                        with accelerator.autocast():
                            loss = self.objective.loss(self.model, batch)
                        # DDP averages over processes: × processes makes the reduced gradient the step's mean.
                        accelerator.backward(loss * (share * processes))
                    weighted = loss.detach().float() * (share * processes)
                    loss_sum = weighted if loss_sum is None else loss_sum + weighted
                    if share > 0:  # a zero-share stand-in is not an example seen
                        n_examples += len(indices)
                        n_tokens += sum(self.lengths[j] for j in indices)
            grad_norm = clip_gradients(accelerator, self.clip_groups, self.config.max_grad_norm)
            self.optimizer.step()
            skipped = self._step_skipped()
            # optimizer.step() before scheduler.step() (the original has them the other way round).
            if not skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        except (RuntimeError, MemoryError) as e:
            if is_out_of_memory(e):
                longest = max(self.lengths[j] for indices, _ in micro_batches for j in indices)
                raise out_of_memory(f"training step {state.step + 1}", max(len(ix) for ix, _ in micro_batches),
                                    longest) from None
            raise
        # A zero-share stand-in runs but carries no tokens: a step with one does not set the rate.
        if counted is not None and n_tokens and all(share > 0 for _, share in micro_batches):
            self.flops_per_token = counted.total / n_tokens
        flops = (self.flops_per_token or 0.0) * n_tokens
        # The window sums over processes and divides by their step count: the step's mean loss.
        # A skipped step's gradient norm is inf or nan: it stays out of the window's mean.
        self._window.add(loss_sum, None if skipped else grad_norm, n_examples, n_tokens, skipped=skipped,
                         flops=flops)
        state.step += 1

    def _step_skipped(self) -> bool:
        """Whether the grad scaler (fp16) skipped the optimizer step just taken: inf or nan gradients.

        Accelerate tells a skip by `optimizer.step()` not being called, but a fused optimizer is always
        called (it skips inside its kernel), so the scale is compared instead: the scaler lowers it
        after, and only after, a step it skipped."""
        if self._scaler is None:
            return bool(self.accelerator.optimizer_step_was_skipped)
        before, self._scale = self._scale, self._scaler.get_scale()
        return self._scale < before or bool(self.accelerator.optimizer_step_was_skipped)

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
        state, accelerator = self.state, self.accelerator
        best_path = self.run_dir / BEST_WEIGHTS
        if not self.dev:
            state.best_step = state.step
            if self.is_main:
                save_weights_atomically(trainable_state(self.unwrapped), best_path)
        accelerator.wait_for_everyone()
        load_best_weights(self.unwrapped, best_path, accelerator)
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
            append_log(self.run_dir / LOG_FILE, {"step": state.step, "best_step": state.best_step,
                                                  "best_dev": state.best_metrics, **throughput})
        return TrainResult(best_metrics=dict(state.best_metrics), best_step=int(state.best_step),
                           steps=state.step, final_metrics=dict(state.last_metrics), throughput=throughput,
                           batch_split=self.split.as_dict())

    # -- pieces

    def _batch(self, indices: list[int]) -> dict:
        from accelerate.utils import send_to_device

        # non_blocking: a copy from pinned memory (a cache's gathered rows) overlaps the device's work.
        return send_to_device(self.objective.collate([self.examples[j] for j in indices]), self.accelerator.device,
                              non_blocking=self.accelerator.device.type == "cuda")

    def _log_training(self, epoch_progress: float) -> None:
        record = self._window.summary(self.accelerator, self.peak_flops)
        state = self.state
        state.examples_seen += record.pop("_examples")
        state.tokens_seen += record.pop("_tokens")
        state.train_seconds += record.pop("_seconds")
        if not math.isfinite(record["loss"]):
            raise KadapterError(ParamText(
                "training diverged: the loss is {loss} at step {step}; lower {lr}, raise "
                "{warmup}, or train in {precision:bf16} or fp32", loss=record["loss"], step=state.step))
        if self.is_main:
            line = {"step": state.step, "epoch": round(epoch_progress, 4), "lr": self.scheduler.get_last_lr()[0],
                    **record}
            append_log(self.run_dir / LOG_FILE, line)
            self.tracker.log_train(line, state.step)

    def _evaluate_and_select(self, epoch_progress: float) -> None:
        started = time.perf_counter()
        metrics, _ = _evaluate(self.accelerator, self.unwrapped, self.objective, self.dev, self.config,
                               self.bar, "evaluating dev", transient=True)
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
                save_weights_atomically(trainable_state(self.unwrapped), self.run_dir / BEST_WEIGHTS)
        if self.is_main:
            append_log(self.run_dir / LOG_FILE, {"step": state.step, "epoch": round(epoch_progress, 4),
                                                  "dev": metrics, "best": improved,
                                                  "eval_seconds": round(time.perf_counter() - started, 3)})
            self.tracker.log_dev(metrics, state.step)

    def _save_checkpoint(self) -> None:
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        # Every process's RNG states go into the one file the main process writes.
        rng_states = rng_state()
        all_rng = gather_object([rng_states]) if accelerator.num_processes > 1 else [rng_states]
        if self.is_main:
            scaler = getattr(accelerator, "scaler", None)
            write_checkpoint(
                self.run_dir / CHECKPOINTS, self.state.step,
                weights=trainable_state(self.unwrapped),
                optim={"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None else None},
                rng={"world_size": accelerator.num_processes, "ranks": all_rng},
                state={**dataclasses.asdict(self.state), "world_size": accelerator.num_processes,
                       "total_steps": self.total_steps, "config": dataclasses.asdict(self.config),
                       "batch_split": self.split.as_dict()},
            )
        accelerator.wait_for_everyone()


class _Feeder:
    """The batches of a known sequence of micro-batches, each made by `make(indices)` on one
    background thread one ahead of its use. The copies to the device are issued there, on the
    device's default stream, so the step that reads a batch is ordered after its copy."""

    def __init__(self, make, order: list[list[int]]):
        from concurrent.futures import ThreadPoolExecutor

        self._make, self._order, self._next = make, order, 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kadapter-feeder")
        self._pending = self._submit()

    def _submit(self):
        if self._next >= len(self._order):
            return None
        future = self._pool.submit(self._make, self._order[self._next])
        self._next += 1
        return future

    def get(self, indices: list[int]) -> dict:
        expected = self._order[self._next - 1] if self._pending is not None else None
        if expected != list(indices):
            raise KadapterError(f"batches were asked for out of order: {indices[:3]}…, expected {(expected or [])[:3]}…")
        future, self._pending = self._pending, self._submit()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- evaluation


def evaluate(
    model: "nn.Module",
    objective: Objective,
    examples: Sequence,
    config: TrainConfig,
    accelerator: "Accelerator | None" = None,
    description: str = "evaluating",
) -> tuple[dict[str, float], list]:
    """Scores `model` on `examples`; returns `(metrics, outputs in input order)`.

    Batches are sorted by length (little padding) and spread over the processes; every process gets
    all outputs back. Without an `accelerator` one is made from `config` and the model is moved to
    its device. A bar labelled `description` shows the examples done.
    """
    if accelerator is None:
        accelerator = make_accelerator(config)
        model = model.to(accelerator.device)
    bar = progress()
    bar.disable = bar.disable or not is_main_process()
    with bar:
        return _evaluate(accelerator, model, objective, list(examples), config, bar, description)


def predict(model: "nn.Module", objective: Objective, examples: Sequence, config: TrainConfig,
            description: str = "predicting") -> list:
    """`model`'s outputs on `examples`, in input order, without scoring them (no gold needed)."""
    accelerator = make_accelerator(config)
    bar = progress()
    bar.disable = bar.disable or not is_main_process()
    with bar:
        return _outputs(accelerator, model.to(accelerator.device), objective, list(examples), config, bar, description)


def _evaluate(accelerator, model, objective: Objective, examples: list, config: TrainConfig,
              bar=None, description: str = "evaluating", transient: bool = False) -> tuple[dict, list]:
    """`bar`: a live rich `Progress` to show the examples done in; `transient`: its row goes when done
    (a dev evaluation's row under the training bar)."""
    if not examples:
        return {}, []
    outputs = _outputs(accelerator, model, objective, examples, config, bar, description, transient)
    return objective.score(outputs, examples), outputs


def _outputs(accelerator, model, objective: Objective, examples: list, config: TrainConfig,
             bar=None, description: str = "evaluating", transient: bool = False) -> list:
    import torch
    from accelerate.utils import send_to_device

    if not examples:
        return []
    lengths = [int(objective.length(e)) for e in examples]
    batch_size = config.forward_batch_size
    # Cutting batches on padding pays only where every token costs (a CPU) and batches are not all
    # padded to one length anyway.
    overhead = CPU_BATCH_OVERHEAD_TOKENS if accelerator.device.type == "cpu" and getattr(objective, "pad_to", None) is None else None
    batches = shard(sequential_batches(lengths, batch_size, overhead), accelerator.process_index,
                    accelerator.num_processes)
    was_training = model.training
    model.eval()
    pairs: list[tuple[int, Any]] = []
    task = bar.add_task(description, total=len(examples), unit="examples", status="") if bar is not None else None
    try:
        with torch.inference_mode():
            for indices in batches:
                batch = send_to_device(objective.collate([examples[j] for j in indices]), accelerator.device)
                with accelerator.autocast():
                    outputs = objective.predict(model, batch)
                if len(outputs) != len(indices):
                    raise KadapterError(f"objective.predict returned {len(outputs)} outputs for {len(indices)} examples")
                pairs.extend(zip(indices, outputs))
                if task is not None:
                    bar.advance(task, len(indices) * accelerator.num_processes)
    except (RuntimeError, MemoryError) as e:
        if is_out_of_memory(e):
            raise out_of_memory("evaluation", batch_size, max(lengths)) from None
        raise
    finally:
        model.train(was_training)
        if task is not None and transient:
            bar.remove_task(task)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        # Every process gets every (index, output) pair once: shards do not repeat batches.
        pairs = gather_object(pairs)
    return restore_order([i for i, _ in pairs], [o for _, o in pairs], len(examples))


def _limited(examples: Sequence | None, limit: int | None) -> list:
    examples = list(examples or [])
    return examples[:limit] if limit is not None else examples

