"""Checkpoints with exact resume: trainable weights, optimizer/scheduler/grad-scaler state, every
process's RNG states and the data position, written atomically under `run_dir/checkpoints/step-<N>/`.

Only `step-<N>` folders whose `state.json` exists count as complete: a folder is renamed into place
only after all its files are written and fsynced; the newest `KEEP_CHECKPOINTS` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kadapter_cli.artifacts.output import latest_checkpoint, step_folders
from kadapter_cli.errors import BadInput, ParamText
from kadapter_cli.processes import is_main_process
from kadapter_cli.training.config import TRAJECTORY_OPTIONS, TrainConfig
from kadapter_cli.training.rng import set_rng_state

BEST_WEIGHTS = "best.safetensors"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainState:
    """Where a run is; saved as a checkpoint's state.json."""

    step: int = 0
    epoch: int = 0  # the epoch in progress (== epochs once all are done)
    steps_in_epoch: int = 0  # optimizer steps of `epoch` already done
    best_step: int | None = None
    best_metric: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    examples_seen: int = 0  # over all processes
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps (evaluation and saving excluded)


def write_checkpoint(root: Path, step: int, weights: dict, optim: dict, rng: dict, state: dict) -> Path:
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
    for old in step_folders(root)[:-KEEP_CHECKPOINTS]:
        _discard(old)
    return final


def load_checkpoint(folder: Path, model, optimizer, scheduler, accelerator, config: TrainConfig) -> TrainState:
    import torch
    from safetensors.torch import load_file

    saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    # An option a checkpoint does not record (written before the option existed) ran at its default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | {"precision": "fp32"}
    # A checkpoint records the precision its run computed in (`auto` resolved): compare with this one's.
    from kadapter_cli.training.setup import resolve_precision

    config = dataclasses.replace(config, precision=resolve_precision(config.precision, config.device))
    saved_config = {k: saved.get("config", {}).get(k, defaults[k]) for k in TRAJECTORY_OPTIONS}
    changed = [k for k in TRAJECTORY_OPTIONS if saved_config[k] != getattr(config, k)]
    if changed:
        values = {f"{k}_was": saved_config[k] for k in changed} | {f"{k}_now": getattr(config, k) for k in changed}
        listed = "; ".join("{%s} {%s_was!r} → {%s_now!r}" % (k, k, k) for k in changed)
        raise BadInput(ParamText("cannot resume with different training options (" + listed
                                 + "); use the checkpoint's options or start again without {resume:True}", **values),
                       folder)
    if saved.get("world_size") != accelerator.num_processes:
        raise BadInput(f"checkpoint was written by {saved.get('world_size')} processes, this run has "
                       f"{accelerator.num_processes}; resume with the same number", folder)
    copy_into(model, load_file(folder / "model.safetensors"), folder / "model.safetensors")
    optim = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and optim.get("scaler") is not None:
        scaler.load_state_dict(optim["scaler"])
    rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    set_rng_state(rng["ranks"][accelerator.process_index])
    names = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in saved.items() if k in names})


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


def trainable_state(model) -> dict:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_weights_atomically(weights: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(weights, tmp)
    _fsync(tmp)
    os.replace(tmp, path)


def copy_into(model, weights: dict, source: Path) -> None:
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



def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from: the newest complete one under `run_dir`, seen
    alike by every process of the run. A process that sees another one (a machine whose output
    folder is its own, not the main process's on a shared file system) stops them all with the same
    `BadInput`, rather than start fresh beside processes that resume."""
    checkpoint = latest_checkpoint(run_dir)
    if not _distributed():
        return checkpoint
    import torch.distributed as dist

    seen: list = [None] * dist.get_world_size()
    dist.all_gather_object(seen, checkpoint.name if checkpoint is not None else None)
    if len(set(seen)) > 1:
        differs = next(rank for rank, name in enumerate(seen) if name != seen[0])
        raise BadInput(ParamText(
            "{resume:True}: the main process resumes from {main}, process {rank} finds {other}; on several "
            "machines a run resumes only where they all read the main process's output folder (a shared file "
            "system): start again with {overwrite:True} or put the output folder on one",
            main=seen[0] or "no checkpoint", rank=differs, other=seen[differs] or "no checkpoint"), run_dir)
    return checkpoint


def load_best_weights(model, path: Path, accelerator) -> None:
    """The trainable weights the main process saved at `path` into `model`, in every process. Under
    several processes the main process reads them and sends them to the others, which need no copy
    of the file (a machine whose output folder is its own has none)."""
    from safetensors.torch import load_file

    if accelerator.num_processes == 1 or not _distributed():
        copy_into(model, load_file(path), path)
        return
    import torch.distributed as dist

    weights = load_file(path) if is_main_process() else trainable_state(model)
    for name in sorted(weights):
        tensor = weights[name].to(accelerator.device)
        dist.broadcast(tensor, src=0)
        weights[name] = tensor.cpu()
    copy_into(model, weights, path)
