"""Metric cases found by mutation testing (docs/MUTATION.md): counts above one per label."""

from __future__ import annotations

import pytest

from kadapter_cli.tasks.metrics import classification_metrics


def test_classification_macro_f1_counts_every_tp_fp_fn_of_a_label():
    # a: TP 2, FN 2 (gold a predicted b twice); b: TP 1, FP 2; c: FP 0, FN 0, TP 1
    gold = ["a", "a", "a", "a", "b", "c"]
    pred = ["a", "a", "b", "b", "b", "c"]
    m = classification_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN): a 4/6, b 2/4, c 2/2 → mean (2/3 + 1/2 + 1) / 3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


# ---------------------------------------------------------------- LAMA and extractive QA


def test_lama_p_at_10_counts_rank_10_and_relations_after_an_empty_one_are_scored():
    from kadapter_cli.tasks.metrics import lama_metrics

    m = lama_metrics({"P36": [], "P19": [10, 11], "P17": [1]})  # the empty relation first
    assert m["per_relation"]["P19"] == {"p_at_1": 0.0, "p_at_10": 0.5, "mrr": (1 / 10 + 1 / 11) / 2, "facts": 2}
    assert list(m["per_relation"]) == ["P19", "P17"] and (m["facts"], m["relations"]) == (3, 2)
    assert m["p_at_10"] == (0.5 + 1.0) / 2 and m["p_at_1_micro"] == 1 / 3
    with pytest.raises(ValueError, match=r"^relation P17: ranks start at 1$"):
        lama_metrics({"P19": [1], "P17": [2, 0]})


def test_extractive_qa_skips_unanswerable_questions_anywhere_and_an_empty_list_is_the_empty_answer():
    from kadapter_cli.tasks.metrics import extractive_qa_metrics

    # A question without gold answers is skipped wherever it stands; the others are still scored.
    assert extractive_qa_metrics([["Paris"], [], ["the Seine river"]], ["paris", "x", "Seine"]) == {
        "em": 50.0, "f1": 100.0 * (1.0 + 2 * 1.0 * 0.5 / 1.5) / 2}
    # `[]` (a predictions file's empty answer) is "", which the official script matches to a gold
    # answer that normalises to nothing ("The"), and to no other.
    assert extractive_qa_metrics([["The"]], [[]]) == {"em": 100.0, "f1": 0.0}
    assert extractive_qa_metrics([["xxxx"]], [[]]) == {"em": 0.0, "f1": 0.0}
