"""Metric cases found by mutation testing (docs/MUTATION.md): counts above one per label."""

from __future__ import annotations

import pytest

from kadapter_cli.metrics import classification_metrics


def test_classification_macro_f1_counts_every_tp_fp_fn_of_a_label():
    # a: TP 2, FN 2 (gold a predicted b twice); b: TP 1, FP 2; c: FP 0, FN 0, TP 1
    gold = ["a", "a", "a", "a", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "c"]
    m = classification_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN): a 4/6, b 2/4, c 2/2 → mean (2/3 + 1/2 + 1) / 3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
