"""Loose micro precision and recall of entity typing keep their own denominators (issue 16).

P = Σ|p∩g| / Σ|p| and R = Σ|p∩g| / Σ|g| (OpenEntity's scorer). Every case here has Σ|p| ≠ Σ|g|, so a
swap of the two denominators changes P and R (F1 alone would not show it: it is symmetric).
Checked through the metric, each typing task's `predict` + `metrics`, and `kadapter evaluate`.
"""

from __future__ import annotations

import json

import pytest
import torch
from fixed_head import finetune_then_fix_head

from kadapter_cli.tasks import get_task
from kadapter_cli.tasks.metrics import entity_typing_metrics
from kadapter_cli.tasks.openentity import OPENENTITY_LABELS


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_micro_precision_divides_by_predicted_labels_and_recall_by_gold_labels():
    gold = [["a", "b", "c"], ["a"], ["d"]]
    pred = [["a"], ["a"], []]
    m = entity_typing_metrics(gold, pred)
    # Σ|p∩g| = 1 + 1 + 0 = 2; Σ|p| = 1 + 1 + 0 = 2; Σ|g| = 3 + 1 + 1 = 5
    assert (m["precision"], m["recall"]) == (approx(2 / 2), approx(2 / 5))
    assert m["f1"] == m["micro_f1"] == approx(2 * 1 * 0.4 / 1.4)


def test_openentity_task_micro_pr_from_logits():
    task = get_task("openentity")
    labels = ["person", "location", "place"]
    # Row 1 predicts every label, row 2 only `location`, row 3 nothing (no logit > 0).
    pred = task.predict(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, -2.0], [-1.0, -1.0, -1.0]]), labels)
    assert pred == [["person", "location", "place"], ["location"], []]
    m = task.metrics([["person"], ["location"], ["place"]], pred)
    # Σ|p∩g| = 1 + 1 + 0 = 2; Σ|p| = 4; Σ|g| = 3
    assert (m["precision"], m["recall"]) == (approx(2 / 4), approx(2 / 3))


def test_figer_task_micro_pr_from_logits():
    task = get_task("figer")
    labels = ["/location", "/person", "/person/artist"]
    # FIGER adds the argmax to the positive logits: row 2 has none positive and still gets `/person`.
    pred = task.predict(torch.tensor([[-1.0, 2.0, 1.0], [-3.0, -1.0, -2.0]]), labels)
    assert pred == [["/person", "/person/artist"], ["/person"]]
    m = task.metrics([["/person"], ["/location", "/person", "/person/artist"]], pred)
    # Σ|p∩g| = 1 + 1 = 2; Σ|p| = 2 + 1 = 3; Σ|g| = 1 + 3 = 4
    assert (m["precision"], m["recall"]) == (approx(2 / 3), approx(2 / 4))
    assert m["micro_f1"] == approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))


# ---------------------------------------------------------------- through `kadapter evaluate`

SENTENCES = ["Alice Smith painted the old harbour at dawn .", "They drove to Paris in the morning .",
             "The meeting with Bob ended early .", "A storm hit the coast last night ."]


def _typing_records(labels: list[list[str]]) -> list[dict]:
    records = []
    for i, gold in enumerate(labels):
        sent = SENTENCES[i % len(SENTENCES)]
        word = sent.split()[1]
        start = sent.index(word)
        records.append({"sent": sent, "start": start, "end": start + len(word), "labels": gold})
    return records


def _write_splits(data_dir, train: list[list[str]], test: list[list[str]]) -> None:
    data_dir.mkdir(parents=True)
    for split, labels in (("train", train), ("dev", train), ("test", test)):
        (data_dir / f"{split}.json").write_text(json.dumps(_typing_records(labels)))


def test_cli_evaluate_openentity_micro_pr(cli, tiny_backbone, tmp_path):
    data = tmp_path / "openentity"
    test_gold = [["person"], ["location", "place"], []]
    _write_splits(data, [["person"], ["location"]], test_gold)
    # Every logit +5: all nine labels predicted for every mention.
    run = finetune_then_fix_head(cli, tiny_backbone, "openentity", data, [5.0] * len(OPENENTITY_LABELS))
    result = cli("evaluate", run, "--data", data, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    # Σ|p∩g| = 1 + 2 + 0 = 3; Σ|p| = 3 · 9 = 27; Σ|g| = 3
    assert (m["precision"], m["recall"]) == (approx(3 / 27), approx(1.0))
    assert m["f1"] == approx(2 * (1 / 9) / (1 + 1 / 9))
    written = json.loads((cli.workdir / "evaluations" / f"{run.name}-test" / "metrics.json").read_text())
    assert written["test"] == m


def test_cli_evaluate_figer_micro_pr(cli, tiny_backbone, tmp_path):
    data = tmp_path / "figer"
    # Label vocabulary = sorted train labels: /location, /person, /person/artist.
    _write_splits(data, [["/person", "/person/artist"], ["/location"]],
                  [["/person", "/person/artist"], ["/location"], ["/person"]])
    # Only /person's logit is positive (and the argmax): every mention is predicted [/person].
    run = finetune_then_fix_head(cli, tiny_backbone, "figer", data, [-5.0, 5.0, -5.0])
    result = cli("evaluate", run, "--data", data, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    # Σ|p∩g| = 1 + 0 + 1 = 2; Σ|p| = 3; Σ|g| = 2 + 1 + 1 = 4
    assert (m["precision"], m["recall"]) == (approx(2 / 3), approx(2 / 4))
    assert m["micro_f1"] == approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert m["strict_acc"] == approx(1 / 3)
