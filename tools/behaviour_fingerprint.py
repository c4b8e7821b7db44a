"""Fingerprint what kadapter computes, to prove a refactor changed no behaviour.

Runs the demo (one torch thread, fixed seed) and a small fac+lin fine-tuning with the backbone trained,
then prints one JSON object: the sha256 of every weight file, prediction file and data record file
those runs wrote, and the demo's results with their times removed. Run it before and after a change
and compare the two files:

    python tools/behaviour_fingerprint.py --out before.json
    ... change the code ...
    python tools/behaviour_fingerprint.py --out after.json
    diff before.json after.json && echo identical

Every command goes through the `kadapter` CLI as a user types it, so the fingerprint does not depend
on where code lives inside the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HASHED = ("*.safetensors", "predictions*.jsonl", "predictions*.lst", "train.jsonl", "dev.jsonl", "answers-*.json")
TIME_KEYS = {"seconds", "time", "created", "elapsed", "train_seconds", "duration_s"}


def run(*argv: str, cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", KADAPTER_DEBUG="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "kadapter_cli.cli", *argv], cwd=cwd, env=env, text=True,
                          capture_output=True)
    if done.returncode != 0:
        sys.exit(f"kadapter {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(root: Path) -> dict:
    workdir = root / "work"
    demo = json.loads(run("--workdir", str(workdir), "demo", "--json", cwd=root))
    backbone = demo["backbone"]
    typing_data = Path(__file__).resolve().parents[1] / "kadapter_cli" / "demo_data" / "typing"
    run("--workdir", str(workdir), "finetune", "--task", "openentity", "--adapters",
        str(workdir / "compositions" / "fac+lin"), "--data", str(typing_data), "--backbone", backbone,
        "--max-steps", "4", "--batch-size", "8", "--micro-batch-size", "4", "--lr", "1e-4", "--max-length", "48",
        "--limit", "32", "--seed", "7", "--threads", "1", "--name", "trained-backbone", cwd=root)
    predicted = run("--workdir", str(workdir), "predict", str(workdir / "finetuned" / "trained-backbone"),
                    str(typing_data / "test.json"), "--scores", "--threads", "1", cwd=root)
    files = {}
    for pattern in HASHED:
        for path in sorted(workdir.rglob(pattern)):
            if "checkpoints" in path.parts or "feature-cache" in path.parts:
                continue
            files[str(path.relative_to(workdir))] = sha256(path)
    return {"demo": without_times(demo), "predict_stdout_sha256": hashlib.sha256(predicted.encode()).hexdigest(),
            "files": dict(sorted(files.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the fingerprint here (default: stdout)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = fingerprint(args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = fingerprint(Path(tmp))
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
