"""Peak memory of `kadapter prepare-trex` on 1× vs 10× copies of the same input.

`prepare-trex` streams its dumps, so its peak RSS must not grow with the number or size of the
files. This runs the command in a fresh subprocess per size and reads that process's own peak RSS
(`os.wait4` rusage: the child and the workers it reaped), so one measurement cannot leak into the next.

    python benchmarks/prepare_trex_rss.py DUMP.json [--copies 1 10] [--json]

Measure from a small process: on Linux a child's peak RSS starts at its parent's size when it is
forked, so calling `measure()` from a process that has loaded torch reports torch's 200+ MiB for
every run. `benchmarks/run.py` therefore runs this script in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence


def _peak_rss_of(argv: list[str]) -> tuple[float, float, int]:
    """Runs argv; returns (peak RSS in MiB, seconds, exit code)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {stderr.strip()}")
    return usage.ru_maxrss / 1024, time.monotonic() - started, proc.returncode  # ru_maxrss is KiB on Linux


def measure(dump: str | Path, copies: Sequence[int] = (1, 10), workdir: str | Path | None = None,
            extra_args: Sequence[str] = ()) -> list[dict]:
    """Peak RSS (MiB) and wall time of `prepare-trex` over `n` copies of `dump`, for each n in `copies`."""
    dump = Path(dump)
    base = Path(tempfile.mkdtemp(prefix="trex-rss-", dir=workdir))
    results = []
    try:
        for n in copies:
            inputs = base / f"inputs-{n}"
            inputs.mkdir()
            for k in range(n):
                shutil.copyfile(dump, inputs / f"copy-{k:04d}-{dump.name}")
            argv = [sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(base / "work"), "prepare-trex",
                    str(inputs), "--out", str(base / f"out-{n}"), "--min-count", "1", *extra_args]
            peak, seconds, _ = _peak_rss_of(argv)
            results.append({"copies": n, "input_mib": round(n * dump.stat().st_size / 2**20, 2),
                            "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 2)})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", type=Path, help="a T-REx dump (.json or .json.gz)")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10], help="input sizes, in copies of DUMP")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = measure(args.dump, args.copies)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'copies':>6} {'input MiB':>10} {'peak RSS MiB':>13} {'seconds':>8}")
    for r in results:
        print(f"{r['copies']:>6} {r['input_mib']:>10} {r['peak_rss_mib']:>13} {r['seconds']:>8}")


if __name__ == "__main__":
    main()
