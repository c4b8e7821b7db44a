"""`train-probe` under `accelerate launch --num_processes 2` (CPU processes over gloo): the main
process owns the output, as for `train-adapter` and `finetune`. Every process used to open the
output itself: the first one's `.partial` folder looked like an interrupted run to the second, which
refused to start, and the launch died."""

from __future__ import annotations

import json

import pytest
from helpers.launching import assert_one_owner_wrote, one_machine, run
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CORPUS = ["The capital of France is Paris and it is a large city.", "Dante was born in Florence in Italy.",
          "The Eiffel Tower stands in Paris, on the left bank of the Seine."]


def test_train_probe_under_two_processes_writes_one_artifact(tmp_path, tiny_backbone):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 8) + "\n")
    workdir = tmp_path / "work"
    done = run(one_machine("--workdir", str(workdir), "train-probe", "--backbone", str(tiny_backbone),
                           "--corpus", str(corpus), "--name", "base", "--batch-size", "4", "--max-steps", "3",
                           "--max-length", "32", "--log-every", "1", "--seed", "3"))
    assert "batch 4 = micro-batch 2 × 1 accumulation step × 2 processes" in done.stderr
    assert done.stdout.count("probe base (3 steps on ") == 1  # one process reports
    folder = workdir / "probes" / "base"
    manifest = assert_one_owner_wrote(folder)
    assert manifest["stats"]["steps"] == 3
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 3
    assert "mlm.weight" in load_file(folder / "probe.safetensors")
