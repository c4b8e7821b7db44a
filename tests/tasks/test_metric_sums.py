"""Metrics are the same to the last digit in every process: no sum runs in a set's order, which
changes with Python's string hashing (PYTHONHASHSEED)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import random
from kadapter_cli.tasks.metrics import classification_metrics
draw = random.Random(3)
gold = [f"P{draw.randrange(60)}" for _ in range(3000)]
pred = [g if draw.random() < 0.6 else f"P{draw.randrange(60)}" for g in gold]
print(repr(classification_metrics(gold, pred)))
"""


def test_fac_macro_f1_does_not_depend_on_string_hashing():
    outputs = set()
    for seed in map(str, range(8)):  # three different sums before the fix
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outputs.add(subprocess.run([sys.executable, "-c", SCRIPT], env=env, text=True, capture_output=True,
                                   check=True).stdout)
    assert len(outputs) == 1, outputs
