"""The task metrics against hand-computed cases (the arithmetic is written next to each number)."""

from __future__ import annotations

import pytest

from kadapter_cli.tasks import metrics
from kadapter_cli.tasks.metrics import classification_metrics, entity_typing_metrics, relation_metrics, uas


def approx(x):
    return pytest.approx(x, abs=1e-12)


# ---------------------------------------------------------------- entity typing


def test_entity_typing_hand_computed():
    gold = [["a", "b"], ["a"], [], ["c"], ["b"], []]
    pred = [["a"], ["a", "b"], ["a"], [], ["b"], []]
    m = entity_typing_metrics(gold, pred)
    # overlaps 1,1,0,0,1,0 = 3; Σ|p| = 1+2+1+0+1+0 = 5; Σ|g| = 2+1+0+1+1+0 = 5
    assert m["precision"] == approx(3 / 5)
    assert m["recall"] == approx(3 / 5)
    assert m["f1"] == approx(3 / 5)
    assert m["micro_f1"] == m["f1"]
    # exact matches: example 5 ({b}) and example 6 (both empty) → 2 of 6
    assert m["strict_acc"] == approx(2 / 6)
    # macro P over all 6 examples, empty prediction counts 0: (1 + 1/2 + 0 + 0 + 1 + 0) / 6
    assert m["macro_precision"] == approx(2.5 / 6)
    # macro R over the 4 examples with gold: (1/2 + 1 + 0 + 1) / 4
    assert m["macro_recall"] == approx(2.5 / 4)
    # 2 · (5/12) · (5/8) / (5/12 + 5/8) = (25/48) / (25/24)
    assert m["macro_f1"] == approx(0.5)


def test_entity_typing_counts_each_label_and_example_once():
    # Duplicated labels are one label; the original FIGER code re-counted earlier batches.
    m = entity_typing_metrics([["/person", "/person"], ["/location"]], [["/person"], ["/person"]])
    assert m["precision"] == approx(1 / 2)  # Σ|p∩g| = 1, Σ|p| = 2
    assert m["recall"] == approx(1 / 2)
    assert m["strict_acc"] == approx(1 / 2)
    assert m["macro_precision"] == approx((1 + 0) / 2)


def test_entity_typing_empty_predictions_score_zero_not_nan():
    m = entity_typing_metrics([["a"], ["b"]], [[], []])
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "micro_f1": 0.0, "strict_acc": 0.0,
                 "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0}


def test_entity_typing_empty_gold():
    m = entity_typing_metrics([[], []], [["a"], []])
    assert m["precision"] == 0.0  # 0 / 1
    assert m["recall"] == 0.0  # 0 / 0 → 0
    assert m["strict_acc"] == approx(1 / 2)  # the second example: both empty
    assert m["macro_recall"] == 0.0  # no example has gold


def test_entity_typing_perfect_and_no_examples():
    assert entity_typing_metrics([["a", "b"]], [["b", "a"]])["macro_f1"] == 1.0
    assert set(entity_typing_metrics([], []).values()) == {0.0}


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="2 gold examples but 1 predictions"):
        entity_typing_metrics([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError):
        relation_metrics(["a"], [])
    with pytest.raises(ValueError):
        classification_metrics(["a"], ["a", "b"])


# ---------------------------------------------------------------- relations (official TACRED scorer)


def test_relation_metrics_hand_computed():
    gold = ["A", "A", "B", "no_relation", "no_relation", "B", "C"]
    pred = ["A", "no_relation", "A", "A", "no_relation", "B", "no_relation"]
    m = relation_metrics(gold, pred)
    # guessed (pred ≠ NA): 0,2,3,5 = 4; relevant (gold ≠ NA): 0,1,2,5,6 = 5; correct: 0,5 = 2
    assert m["precision"] == approx(2 / 4)
    assert m["recall"] == approx(2 / 5)
    assert m["f1"] == approx(2 * 0.5 * 0.4 / 0.9)
    assert m["accuracy"] == approx(3 / 7)  # 0, 4 (NA = NA), 5


def test_relation_metrics_all_no_relation_predicted():
    # The official scorer's convention: precision 1.0 when nothing but no_relation is guessed.
    m = relation_metrics(["per:title", "no_relation"], ["no_relation", "no_relation"])
    assert m == {"precision": 1.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5}
    m = relation_metrics(["no_relation"] * 3, ["no_relation"] * 3)
    assert (m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 1.0)


def test_relation_metrics_other_negative_label_and_singleton_lists():
    m = relation_metrics([["P17"], ["NA"]], [["P17"], ["P31"]], negative="NA")
    assert (m["precision"], m["recall"]) == (approx(1 / 2), 1.0)
    with pytest.raises(ValueError, match="exactly one label"):
        relation_metrics([["P17", "P31"]], [["P17"]])


# ---------------------------------------------------------------- fac pretraining, lin pretraining


def test_classification_metrics_hand_computed():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "d"])
    assert m["accuracy"] == approx(2 / 4)
    # per label 2TP/(2TP+FP+FN): a 2/3, b 2/3, c 0 (only gold), d 0 (only predicted) → mean 1/3
    assert m["macro_f1"] == approx(1 / 3)
    assert classification_metrics([], []) == {"accuracy": 0.0, "macro_f1": 0.0}


def test_uas_per_word_with_ignored_positions():
    assert uas([[2, 0, 2], [0, 1]], [[2, 0, 1], [0, 0]]) == approx(3 / 5)
    # -100 marks positions that are not words (encode_dependency's head_targets)
    assert uas([[-100, 2, -100, 0]], [[5, 2, 7, 1]]) == approx(1 / 2)
    assert uas([[-100]], [[3]]) == 0.0
    with pytest.raises(ValueError, match="sentence 0"):
        uas([[1, 0]], [[1]])


# ---------------------------------------------------------------- LAMA probing


def test_lama_metrics_are_macro_over_relations_with_micro_beside():
    m = metrics.lama_metrics({"P19": [1, 1, 2, 11], "P17": [1], "P36": []})
    assert m["per_relation"]["P19"] == {"p_at_1": 0.5, "p_at_10": 0.75, "mrr": (1 + 1 + 0.5 + 1 / 11) / 4, "facts": 4}
    assert m["p_at_1"] == (0.5 + 1.0) / 2  # P36 kept no fact: not averaged
    assert m["p_at_1_micro"] == 3 / 5
    assert m["p_at_10"] == (0.75 + 1.0) / 2
    assert m["mrr"] == ((1 + 1 + 0.5 + 1 / 11) / 4 + 1.0) / 2
    assert (m["facts"], m["relations"]) == (5, 2)
    assert metrics.lama_metrics({})["p_at_1"] == 0.0
    with pytest.raises(ValueError):
        metrics.lama_metrics({"P19": [0]})
