"""Timing primitives: interleaved repeats with warm-up, medians, and the machine's matmul rate.

Every member of a ratio is timed in the same loop, alternating (A, B, A, B, ...), so a burst of
load from another process on a shared machine hits both members instead of one.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Mapping, Sequence


def interleaved(members: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each member: `warmup` untimed rounds, then `repeats` timed rounds,
    each round calling every member once in turn."""
    for _ in range(warmup):
        for fn in members.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in members}
    for _ in range(repeats):
        for name, fn in members.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def interleaved_steps(members: Mapping[str, Sequence[Callable[[], object]]], repeats: int) -> dict[str, list[float]]:
    """Like `interleaved` for members made of steps (an epoch's batches): each round runs step i of
    every member before step i + 1 of any, and a member's time for the round is the sum of its
    steps. Pairs run a fraction of a second apart instead of a whole epoch, so a slower spell of a
    shared machine falls on both members of a ratio."""
    lengths = {len(steps) for steps in members.values()}
    if len(lengths) != 1:
        raise ValueError(f"members have different numbers of steps: {sorted(lengths)}")
    times: dict[str, list[float]] = {name: [] for name in members}
    for _ in range(repeats):
        totals = dict.fromkeys(members, 0.0)
        for i in range(next(iter(lengths))):
            for name, steps in members.items():
                started = time.perf_counter()
                steps[i]()
                totals[name] += time.perf_counter() - started
        for name, total in totals.items():
            times[name].append(total)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]: each pair ran back to back, so a load
    burst that slows one round slows both members, and the ratio of the round survives it."""
    return median([n / d for n, d in zip(numerator, denominator, strict=True)])


def summary(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of seconds, rounded for the report."""
    return {"median_s": round(median(times), 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4),
            "repeats": len(times)}


def matmul_call(n: int) -> tuple[Callable[[], object], float]:
    """A dense fp32 `n × n @ n × n` matmul as a callable, and its FLOPs (2·n³)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)

    def call() -> None:
        torch.matmul(a, b, out=out)

    return call, 2.0 * n**3


def cpu_model_name() -> str:
    """`lscpu`'s model name (or /proc/cpuinfo's, or platform's)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, object]:
    import os

    import torch

    return {
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
