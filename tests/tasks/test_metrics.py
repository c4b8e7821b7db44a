"""The task metrics against hand-computed cases (the arithmetic is written next to each number)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.fixed_head import finetune_then_fix_head

from kadapter_cli.tasks import get_task, metrics
from kadapter_cli.tasks.metrics import (
    classification_metrics,
    entity_typing_metrics,
    extractive_qa_metrics,
    relation_metrics,
    squad_exact_match,
    squad_f1,
    squad_normalize,
    uas,
)
from kadapter_cli.tasks.openentity import OPENENTITY_LABELS


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


# ---------------------------------------------------------------- Metric cases found by mutation testing (docs/MUTATION.md): counts above one per label.

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


# ---------------------------------------------------------------- Loose micro precision and recall of entity typing keep their own denominators (docs/mutation.md).
#
# P = Σ|p∩g| / Σ|p| and R = Σ|p∩g| / Σ|g| (OpenEntity's scorer). Every case here has Σ|p| ≠ Σ|g|, so a
# swap of the two denominators changes P and R (F1 alone would not show it: it is symmetric).
# Checked through the metric, each typing task's `predict` + `metrics`, and `kadapter evaluate`.

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


# ---------------------------------------------------------------- SearchQA / Quasar-T EM and F1: the SQuAD v1.1 script's definitions on hand cases and the real
# samples' quirks (the arithmetic is written next to each number).

def test_normalisation_steps_of_the_squad_script():
    # lower-case, ASCII punctuation dropped (not replaced by a space), a/an/the dropped, whitespace collapsed
    assert squad_normalize("  The  Quick,\tBrown-Fox! ") == "quick brownfox"
    assert squad_normalize("An apple a day") == "apple day"
    assert squad_normalize("theatre Anatomy") == "theatre anatomy"  # articles only as whole words
    assert squad_normalize("the") == ""


def test_sample_quirks_searchqa():
    # The original SearchQA JSON sample's answers (../shared/data/searchqa/README.md)
    assert squad_exact_match("Lou Gehrig", "(Lou) Gehrig")
    assert squad_exact_match("Mystery Train", 'the "Mystery Train"')
    assert squad_exact_match("tried and treed", "tried & treed") is False
    # 'tried & treed' → "tried treed"; "tried and treed" → 3 tokens, 2 shared: P 2/3, R 2/2 → F1 0.8
    assert squad_f1("tried and treed", "tried & treed") == pytest.approx(0.8)
    assert squad_f1("Gehrig", "(Lou) Gehrig") == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 1, R 1/2


def test_literal_backslash_escapes_in_quasart_answers(shared_data):
    records = json.loads((shared_data / "quasar-t" / "quasarT-dev.first300.json").read_text())
    escaped = [r["answers"][0] for r in records if "\\u20" in r["answers"][0]]
    assert len(escaped) == 4  # as the sample's README counts them
    audi = next(a for a in escaped if a.startswith("audi"))
    assert audi == "audi \\u2013 vorsprung durch technik"  # a real backslash, not an en dash
    # The backslash is punctuation and goes; "u2013" stays a word.
    assert squad_normalize(audi) == "audi u2013 vorsprung durch technik"
    assert squad_exact_match("Audi \\u2013 Vorsprung durch Technik", audi)
    # A real en dash is not ASCII punctuation: 5 words vs 5, 4 shared → P = R = 4/5, F1 = 0.8
    assert not squad_exact_match("audi \u2013 vorsprung durch technik", audi)
    assert squad_f1("audi \u2013 vorsprung durch technik", audi) == pytest.approx(0.8)


def test_em_f1_are_max_over_gold_then_mean_times_100():
    gold = [["Lou Gehrig", "Gehrig"], ["Samos"], ["the monkey puzzle tree"], ["x"]]
    pred = [["gehrig"], [""], ["monkey puzzle"], []]
    m = extractive_qa_metrics(gold, pred)
    # EM: 1 (second gold), 0, 0, 0 → 25.0
    assert m["em"] == pytest.approx(25.0)
    # F1: max(2·1·½/1.5, 1) = 1; 0; "monkey puzzle" vs "monkey puzzle tree": P 1, R 2/3 → 0.8; 0 → 1.8/4
    assert m["f1"] == pytest.approx(100 * 1.8 / 4)


def test_questions_without_gold_are_not_scored_and_lengths_must_agree():
    assert extractive_qa_metrics([["a b"], []], ["a b", "anything"]) == {"em": 100.0, "f1": 100.0}
    assert extractive_qa_metrics([[]], [""]) == {"em": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        extractive_qa_metrics([["a"]], [])
