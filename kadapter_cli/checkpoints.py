"""Checkpoints with exact resume: trainable weights, optimizer/scheduler/grad-scaler state, every
process's RNG states and the data position, written atomically under `run_dir/checkpoints/step-<N>/`.

Only `step-<N>` folders whose `state.json` exists count as complete: a folder is renamed into place
only after all its files are written and fsynced; the newest `KEEP_CHECKPOINTS` are kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kadapter_cli.errors import BadInput
from kadapter_cli.train_config import TRAJECTORY_OPTIONS, TrainConfig

CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.safetensors"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainState:
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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under `run_dir/checkpoints/`, or None.

    Only `step-<N>` folders count: one is renamed into place only after all its files are written.
    """
    root = Path(run_dir) / CHECKPOINTS
    complete = [p for p in _step_folders(root) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a complete checkpoint folder was written at."""
    return int(json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))["step"])


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
    for old in _step_folders(root)[:-KEEP_CHECKPOINTS]:
        _discard(old)
    return final


def load_checkpoint(folder: Path, model, optimizer, scheduler, accelerator, config: TrainConfig) -> TrainState:
    import torch
    from safetensors.torch import load_file

    saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    # An option a checkpoint does not record (written before the option existed) ran at its default.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved_config = {k: saved.get("config", {}).get(k, defaults[k]) for k in TRAJECTORY_OPTIONS}
    changed = [f"--{k.replace('_', '-')} {saved_config[k]!r} → {getattr(config, k)!r}"
               for k in TRAJECTORY_OPTIONS if saved_config[k] != getattr(config, k)]
    if changed:
        raise BadInput("cannot resume with different training options (" + "; ".join(changed)
                       + "); use the checkpoint's options or start again without --resume", folder)
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


# ---------------------------------------------------------------- RNG states (tensors and lists only)


def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
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

