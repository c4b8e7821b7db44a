"""What a training run is told and what it reports: `TrainConfig` (every option of the loop), how
its effective batch splits over processes and accumulation steps (`BatchSplit`), the `Objective`
protocol that plugs fac, lin and each downstream task into the loop, and `TrainResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kadapter_cli.errors import BadParameter

if TYPE_CHECKING:
    import torch
    from torch import nn

# Options that shape the trajectory: resuming with any of them changed would not continue the same run.
TRAJECTORY_OPTIONS = (
    "epochs", "max_steps", "batch_size", "lr", "warmup", "weight_decay", "adam_eps", "adam_beta1", "adam_beta2",
    "max_grad_norm", "clip_mode", "micro_batch_size", "seed", "limit", "bucket_size", "precision",
    "deterministic",
)
CLIP_MODES = ("joint", "separate")
# The frozen backbone's feature cache (training/feature_cache.py): auto (when within budget), on, off.
CACHE_MODES = ("auto", "on", "off")
DEFAULT_CACHE_FEATURES = "auto"
# auto: bf16 autocast on a CUDA GPU that computes bf16 natively (compute capability 8.0 or more:
# A100, H100, RTX 30xx and later), fp32 everywhere else (a CPU, a V100 or T4, whose bf16 is emulated).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BF16_MIN_CAPABILITY = (8, 0)
# --compile: lengths padded to a multiple of this, so the compiled graphs see a few shapes (64 / 16 = 4 at fac's max length).
COMPILE_LENGTH_MULTIPLE = 16
PRECISION_HELP = ("Mixed precision: auto (bf16 on a CUDA GPU of compute capability 8.0 or more, fp32 on a CPU "
                  "or an older GPU), fp32, bf16 (refused where only emulated: use fp16 there), fp16 (CUDA only).")

# ---------------------------------------------------------------- the paper's settings
# Torch-free, so that the commands' --help states them from here.

# Per adapter kind (App. A.1/A.2); every one is a flag. Warm-up is not in the paper; the scripts'
# 1200 (fac) / 500 (lin) steps assume millions of examples, so a share is used. batch_size is the
# paper's effective batch; micro_batch_size what one 24 GB GPU holds at a time with roberta-large
# frozen (the adapter's activations: about 8,000 tokens a micro-batch).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "fac": {"epochs": 5, "batch_size": 128, "micro_batch_size": 128, "lr": 2e-5, "warmup": 0.05, "max_length": 64},
    "lin": {"epochs": 10, "batch_size": 256, "micro_batch_size": 64, "lr": 1e-5, "warmup": 0.05, "max_length": 128},
}
KINDS = tuple(KIND_DEFAULTS)

# The knowledge probe's (App. D); the learning rate is not given there: ours, a flag.
PROBE_DEFAULTS: dict[str, Any] = {"epochs": 2, "batch_size": 1024, "micro_batch_size": 16, "lr": 1e-3,
                                  "warmup": 0, "max_length": 512}


def kind_defaults(kind: str) -> dict[str, Any]:
    """The paper's loop settings for an adapter kind; `BadParameter` for a kind that is not one."""
    if kind not in KIND_DEFAULTS:
        raise BadParameter("{kind} must be one of {kinds}, got {value!r}", kind, kinds=", ".join(KINDS))
    return KIND_DEFAULTS[kind]


@dataclass
class TrainConfig:
    """Every option of the loop; field names are the CLI's long option names with `_`."""

    epochs: int = 3
    max_steps: int | None = None  # the run's optimizer steps, overriding `epochs` (the schedule ends there too)
    batch_size: int = 32  # effective batch: examples per optimizer step over all processes (the paper's number)
    micro_batch_size: int | None = None  # examples per process per forward/backward; None = its whole share
    lr: float = 2e-5
    warmup: float = 0  # >= 1: steps; 0 < x < 1: share of the total steps
    weight_decay: float = 0.0  # not applied to biases and norm weights (1-d parameters)
    adam_eps: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # Dozat & Manning's parser uses 0.9: it helps the lin pointer head (README)
    max_grad_norm: float = 1.0  # 0 turns clipping off
    clip_mode: str = "joint"  # joint: one norm over all; separate: backbone and the rest each (the original code)
    seed: int = 42
    save_every: int | None = None  # steps; None = only at the end of each epoch
    eval_every: int | None = None  # steps; None = at the end of each epoch
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (PRECISIONS; auto: bf16 on CUDA cc >= 8.0, else fp32)
    # Deterministic kernels only (torch.use_deterministic_algorithms, cuBLAS workspace, cuDNN): what
    # makes a resumed CUDA run equal bit for bit to an uninterrupted one; the CPU is deterministic anyway.
    deterministic: bool = False
    limit: int | None = None  # use the first N training (and dev) examples
    compile: bool = False  # torch.compile the trainable parts (adapter and head); lengths to multiples of 16
    bucket_size: int = 100  # batches per length-sorted pool
    report_to: str = "none"  # tensorboard | wandb | mlflow | aim | all | none, or a comma-separated list
    run_name: str | None = None  # the trackers' run name (default: the artifact's folder name)
    tracking_dir: str | None = None  # the trackers' folder (default: <artifact>/tracking)

    def __post_init__(self) -> None:
        if self.tracking_dir is not None:
            self.tracking_dir = str(self.tracking_dir)  # a Path from the CLI; checkpoints store the config as JSON

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
        """`BadParameter` naming the parameter and its value for any value the loop cannot run with."""
        def at_least(name: str, value: float | None, low: float, optional: bool = False) -> None:
            if value is None and optional:
                return
            if value is None or value < low:
                raise BadParameter("{%s} must be at least {low:g}, got {value}" % name, value, low=low)

        at_least("epochs", self.epochs, 1)
        at_least("max_steps", self.max_steps, 1, optional=True)
        at_least("batch_size", self.batch_size, 1)
        at_least("micro_batch_size", self.micro_batch_size, 1, optional=True)
        at_least("log_every", self.log_every, 1)
        at_least("bucket_size", self.bucket_size, 1)
        at_least("save_every", self.save_every, 1, optional=True)
        at_least("eval_every", self.eval_every, 1, optional=True)
        at_least("limit", self.limit, 1, optional=True)
        for name in ("warmup", "weight_decay", "max_grad_norm"):
            at_least(name, getattr(self, name), 0)
        if not self.lr > 0:
            raise BadParameter("{lr} must be positive, got {value}", self.lr)
        if not self.adam_eps > 0:
            raise BadParameter("{adam_eps} must be positive, got {value}", self.adam_eps)
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise BadParameter("{%s} must be in [0, 1), got {value}" % name, getattr(self, name))
        if self.device not in ("auto", "cpu", "cuda"):
            raise BadParameter("{device} must be auto, cpu or cuda, got {value!r}", self.device)
        if self.precision not in PRECISIONS:
            raise BadParameter("{precision} must be auto, fp32, bf16 or fp16, got {value!r}", self.precision)
        if self.clip_mode not in CLIP_MODES:
            raise BadParameter("{clip_mode} must be joint or separate, got {value!r}", self.clip_mode)
        from kadapter_cli.training.tracking import parse_report_to

        parse_report_to(self.report_to)

    @property
    def forward_batch_size(self) -> int:
        """Examples in one forward pass outside training steps (evaluation, building a feature cache):
        the micro-batch, never more than the batch."""
        return min(self.micro_batch_size or self.batch_size, self.batch_size)

    def batch_split(self, processes: int) -> "BatchSplit":
        """How `batch_size` examples per optimizer step split over `processes` and accumulation.

        The effective batch is never changed: one that does not divide over the processes is
        refused. The micro-batch is at most each process's share, and is lowered to the largest
        size that divides the share evenly (every accumulation step then has the same size).
        """
        if self.batch_size % processes:
            lower = self.batch_size - self.batch_size % processes
            raise BadParameter("{batch_size} {value} does not split evenly over {processes} processes; "
                               "use a multiple of {processes} (e.g. {lower} or {higher})", self.batch_size,
                               processes=processes, lower=lower or processes, higher=lower + processes)
        share = self.batch_size // processes
        wanted = min(self.micro_batch_size or share, share)
        micro = next(m for m in range(wanted, 0, -1) if share % m == 0)
        return BatchSplit(self.batch_size, micro, share // micro, processes, requested_micro=self.micro_batch_size)

    def warmup_steps(self, total_steps: int) -> int:
        """`warmup` ≥ 1 is a step count; a value in (0, 1) is a share of `total_steps`."""
        if self.warmup >= 1:
            return int(self.warmup)
        return int(round(self.warmup * total_steps))


@dataclass(frozen=True)
class BatchSplit:
    """batch_size = micro_batch_size × grad_accum × processes, for one run."""

    batch_size: int  # effective: examples per optimizer step
    micro_batch_size: int  # examples per process per forward/backward
    grad_accum: int  # micro-batches per process per optimizer step
    processes: int
    requested_micro: int | None = None  # --micro-batch-size as given (None: the whole share)

    def describe(self) -> str:
        line = (f"batch {self.batch_size} = micro-batch {self.micro_batch_size} × {self.grad_accum} accumulation "
                f"step{'s' if self.grad_accum != 1 else ''} × {self.processes} process{'es' if self.processes != 1 else ''}")
        share = self.batch_size // self.processes
        if self.requested_micro is not None and self.requested_micro < share and self.micro_batch_size != self.requested_micro:
            line += (f" (micro-batch lowered from {self.requested_micro}: it must divide the {share} examples "
                     "each process takes per step)")
        return line

    def as_dict(self) -> dict[str, int]:
        return {"batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                "grad_accum": self.grad_accum, "processes": self.processes}


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
    batch_split: dict[str, int] = field(default_factory=dict)  # BatchSplit.as_dict() of the run

