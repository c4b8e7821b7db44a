"""The pieces a run is built from: the Accelerate `Accelerator` for `--device` / `--precision`,
deterministic kernels (`--deterministic`), the CPU threads (`--threads`), AdamW, the warm-up + linear-decay schedule, gradient clipping (`--clip-mode`),
and the out-of-memory error that names what to lower."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.training.config import BF16_MIN_CAPABILITY, COMPILE_LENGTH_MULTIPLE, TrainConfig

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


class TrainingOutOfMemory(BadInput):
    """Training or evaluation ran out of device or host memory; the message names what to lower."""


def auto_threads() -> int:
    """`OMP_NUM_THREADS` when set; otherwise the cores this process may use that are idle now
    (cores minus the 1-minute load average, at least 1). On a busy machine, threads that compete
    with other processes for the same cores make every matrix product wait for the slowest one."""
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(threads: int | None) -> int:
    """Sets torch's CPU threads to `threads`, or to `auto_threads()`; returns the number."""
    import torch

    if threads is not None and threads < 1:
        raise BadParameter("{threads} must be at least 1, got {value}", threads)
    chosen = threads or auto_threads()
    torch.set_num_threads(chosen)
    return chosen


# cuBLAS needs a fixed workspace to pick the same reduction order on every call (CUDA >= 10.2);
# the variable is read when cuBLAS starts, so it must be set before the first matrix product on CUDA.
CUBLAS_WORKSPACE = ":4096:8"
_DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")  # the two settings NVIDIA documents as deterministic
_determinism_saved: dict | None = None  # what `set_deterministic(True)` changed, to undo it


def set_deterministic(on: bool) -> None:
    """`--deterministic`: only deterministic kernels from here on (`torch.use_deterministic_algorithms`,
    a fixed cuBLAS workspace, cuDNN deterministic and not benchmarking); an operation that has no
    deterministic kernel then stops with torch's error naming it. `False` undoes what an earlier
    `True` in this process changed (a pipeline runs several stages in one process) and touches
    nothing else."""
    global _determinism_saved
    import torch

    if on:
        if _determinism_saved is None:
            _determinism_saved = {"algorithms": torch.are_deterministic_algorithms_enabled(),
                                  "cudnn_deterministic": torch.backends.cudnn.deterministic,
                                  "cudnn_benchmark": torch.backends.cudnn.benchmark,
                                  "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
        if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in _DETERMINISTIC_CUBLAS:
            if torch.cuda.is_initialized():
                from kadapter_cli.progress import info

                info(ParamText("warning: {deterministic:True} came after CUDA started in this process; set "
                               "CUBLAS_WORKSPACE_CONFIG={workspace} in the environment for deterministic cuBLAS",
                               workspace=CUBLAS_WORKSPACE))
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif _determinism_saved is not None:
        saved, _determinism_saved = _determinism_saved, None
        torch.use_deterministic_algorithms(saved["algorithms"])
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]
        if saved["cublas"] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]
def uses_cuda(device: str) -> bool:
    """Whether `--device` `device` (auto | cpu | cuda) runs on a CUDA GPU on this machine."""
    import torch

    return device != "cpu" and torch.cuda.is_available()


def resolve_precision(precision: str, device: str = "auto") -> str:
    """The precision a run computes in: `auto` becomes bf16 on a CUDA GPU that computes bf16 natively
    (compute capability 8.0 or more), fp32 elsewhere (a CPU; a V100 or T4). An explicit bf16 on a
    GPU that only emulates it is refused, suggesting fp16 (`BadParameter`)."""
    import torch

    if precision not in ("auto", "bf16") or not uses_cuda(device):
        return "fp32" if precision == "auto" else precision
    capability = tuple(torch.cuda.get_device_capability())
    native_bf16 = capability >= BF16_MIN_CAPABILITY
    if precision == "auto":
        return "bf16" if native_bf16 else "fp32"
    if not native_bf16:
        raise BadParameter("{precision:{value}} is only emulated on this GPU (compute capability {cc}; bf16 needs "
                           "{need} or more), slower than fp32; use {precision:fp16} there", precision,
                           cc=".".join(map(str, capability)), need=".".join(map(str, BF16_MIN_CAPABILITY)))
    return precision


def compute_dtype(precision: str, device: str = "auto") -> "torch.dtype | None":
    """The dtype a frozen part runs in under `precision` (bf16/fp16), or None for fp32: a frozen
    backbone loaded in it is not re-cast from fp32 at every forward under autocast."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device))


def autocast(precision: str, device: "torch.device"):
    """The autocast context of `precision` (resolved) on `device`; a no-op for fp32. What the loop's
    Accelerate autocast is, for work outside it (building a feature cache, LAMA scoring)."""
    import contextlib

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def enable_tf32(device: str) -> None:
    """On a CUDA GPU, fp32 matrix products may use TF32 tensor cores (`set_float32_matmul_precision("high")`):
    what fp32 work is left under autocast (and an fp32 run) goes several times faster. Never on a CPU."""
    import torch

    if uses_cuda(device):
        torch.set_float32_matmul_precision("high")


def make_accelerator(config: TrainConfig, log_with: list | None = None) -> "Accelerator":
    """An `Accelerator` for `config.device` / `config.precision` (`resolve_precision`); the launcher
    (if any) decides the processes. On a CUDA GPU fp32 matrix products use TF32 (`enable_tf32`).

    `config.deterministic` is applied first (`set_deterministic`): before the first CUDA work of a
    training stage, which every stage starts by making its accelerator.
    `log_with`: Accelerate tracker objects (`tracking.RunTracker` builds them)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    set_deterministic(config.deterministic)

    if config.device == "cuda" and not torch.cuda.is_available():
        raise BadParameter("{device:{value}}: no CUDA device is visible to this process", config.device)
    on_cpu = not uses_cuda(config.device)
    precision = resolve_precision(config.precision, config.device)
    if precision == "fp16" and on_cpu:
        raise BadParameter("{precision:{value}} needs a CUDA device; use bf16 or fp32 on CPU", precision)
    enable_tf32(config.device)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # Gradient accumulation is the loop's own (`batching.step_micro_batches`), not Accelerate's
    # counter: checkpoints then fall on optimizer-step boundaries and an epoch's short last step is
    # averaged over its own examples.
    # cpu=True also on a machine without CUDA: only then does Accelerate join processes started by
    # torchrun / `accelerate launch --multi_gpu` over gloo instead of running each one alone.
    try:
        return Accelerator(cpu=on_cpu, mixed_precision=mixed, log_with=log_with or None)
    except ValueError as e:
        # Accelerate's state is process-wide: a second run in one process (a pipeline, a test) with
        # another precision or device must reset it. Under a multi-process launch it cannot be.
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(cpu=on_cpu, mixed_precision=mixed, log_with=log_with or None)


def compile_trainable(model, objective, backend: str | None = None) -> None:
    """`--compile`: `torch.compile` the parts of `model` that train (`model.compiled_parts()`: an
    adapter and its head), in place (parameter names, checkpoints and artifacts stay as they are),
    and has `objective` pad each batch to a multiple of `COMPILE_LENGTH_MULTIPLE` tokens, so the
    compiled graphs see a few lengths instead of one per batch. `BadParameter` for a model that
    offers no parts to compile. `backend`: torch.compile's (default: inductor)."""
    parts = getattr(model, "compiled_parts", None)
    if parts is None:
        raise BadParameter("{compile:True} compiles an adapter and its head (adapter pretraining); "
                           "this model has no parts to compile")
    for module in parts():
        module.compile(**({} if backend is None else {"backend": backend}))
    if hasattr(objective, "length_multiple"):
        objective.length_multiple = COMPILE_LENGTH_MULTIPLE


def adamw(named_params: list, config: TrainConfig):
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


def warmup_then_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: 0 → 1 over `warmup` steps, then linearly to 0 at `total` (as HF's linear schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))



def clip_groups(model, mode: str) -> list[list]:
    """The trainable parameters in the groups `clip_gradients` clips: one (`joint`), or the backbone's
    and the rest (`separate`, the original code's two `clip_grad_norm_` calls)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mode == "joint":
        return [[p for _, p in named]]
    backbone = [p for n, p in named if "backbone" in n.split(".")]
    rest = [p for n, p in named if "backbone" not in n.split(".")]
    return [g for g in (backbone, rest) if g]


def clip_gradients(accelerator: "Accelerator", groups: list[list], max_norm: float):
    """Clips each group's gradients to `max_norm`; returns the norm over all of them before clipping
    (None when `max_norm` is 0: clipping off)."""
    import torch

    if max_norm <= 0:
        return None
    if len(groups) == 1:
        return accelerator.clip_grad_norm_(groups[0], max_norm)
    accelerator.unscale_gradients()  # once: a grad scaler refuses a second unscale in one step
    norms = [torch.nn.utils.clip_grad_norm_(group, max_norm) for group in groups]
    return torch.stack([n.float() for n in norms]).square().sum().sqrt()


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return "out of memory" in message or "can't allocate memory" in message or "not enough memory" in message


def out_of_memory(where: str, batch_examples: int, longest: int) -> TrainingOutOfMemory:
    return TrainingOutOfMemory(ParamText(
        "out of memory during {where} (batch of {batch_examples} examples, longest {longest} tokens); "
        "lower {micro_batch_size} (the effective {batch_size} stays), {max_length}, "
        "or {cache_budget} ({cache_features:off} turns the feature cache off)",
        where=where, batch_examples=batch_examples, longest=longest,
    ))
