"""The training log (`train_log.jsonl`): windows of step numbers (loss, gradient norm, throughput,
model TFLOP/s and MFU), appending and truncating log lines on resume, and the progress-bar columns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

LOG_FILE = "train_log.jsonl"

class StepWindow:
    """Training numbers since the last log line.

    Losses and gradient norms stay on the device until the log line, and time is the wall time from
    the window's first step to the log line (evaluation and saving fall outside windows), so no
    step waits for the device just to be measured.
    """

    def __init__(self, count_skips: bool = False) -> None:
        self.count_skips = count_skips  # log `skipped_steps` (fp16's grad scaler can skip steps)
        self._reset()
        self.status = ""

    def _reset(self) -> None:
        self.loss_sum = None
        self.grad_norm_sum = None
        self.steps = 0
        self.normed = 0  # steps with a gradient norm
        self.skipped = 0  # steps the fp16 grad scaler skipped (inf/nan gradients)
        self.examples = 0
        self.tokens = 0
        self.flops = 0.0  # model FLOPs of the window's steps (`training/flops.py`)
        self.started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def add(self, loss, grad_norm, examples: int, tokens: int, skipped: bool = False, flops: float = 0.0) -> None:
        """One optimizer step; `grad_norm` None for a step without one (clipping off, or skipped);
        `tokens`: real tokens (padding not counted); `flops`: the step's model FLOPs."""
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        if grad_norm is not None:
            grad_norm = grad_norm.detach().float()
            self.grad_norm_sum = grad_norm if self.grad_norm_sum is None else self.grad_norm_sum + grad_norm
            self.normed += 1
        self.steps += 1
        self.skipped += int(skipped)
        self.examples += examples
        self.tokens += tokens
        self.flops += flops

    def summary(self, accelerator, peak_flops: float | None) -> dict[str, Any]:
        """Log fields averaged over the window and summed over processes (a collective: every process calls it).

        `model_tflops` and `mfu` count the model FLOPs of the steps (`training/flops.py`) over the
        window's wall time; `mfu` against `peak_flops` per process (None: no MFU)."""
        import torch

        loss_sum = float(self.loss_sum)  # waits for the device: the window's work is done after this
        seconds = time.perf_counter() - self.started
        totals = torch.tensor([loss_sum, float(self.steps), float(self.examples), float(self.tokens), seconds,
                               self.flops], dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(totals, reduction="sum")
        loss_sum, steps, examples, tokens, seconds, flops = totals.tolist()
        world = accelerator.num_processes
        wall = max(seconds / world, 1e-9)  # processes run side by side: their mean time is the wall time
        record: dict[str, Any] = {
            "loss": loss_sum / steps,
            "examples_per_s": round(examples / wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "ms_per_step": round(1000 * wall / (steps / world), 2),
            "model_tflops": float(f"{flops / wall / 1e12:.4g}"),
        }
        if self.grad_norm_sum is not None:
            record["grad_norm"] = float(self.grad_norm_sum) / self.normed
        if self.count_skips:
            record["skipped_steps"] = self.skipped
        if peak_flops:
            record["mfu"] = round(flops / wall / (peak_flops * world), 4)
        record.update(_examples=int(examples), _tokens=int(tokens), _seconds=wall)
        self.status = f"loss {record['loss']:.4f} · {record['examples_per_s']:.0f} ex/s · {record['ms_per_step']:.0f} ms/step"
        self._reset()
        return record



def append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drops log lines written after the checkpoint we resume from: they will be written again."""
    if not path.is_file():
        return
    kept = [line for line, record in log_lines(path)
            if record.get("step", 0) <= step and "best_dev" not in record]  # the end-of-run summary is rewritten
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def log_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """`(line, record)` for each complete log line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        yield line, record


def progress_columns() -> list:
    from rich.progress import TextColumn

    return [TextColumn("{task.fields[status]}")]
