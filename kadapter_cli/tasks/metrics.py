"""Every metric the paper reports, exactly as its scorers compute it, in plain Python.

Inputs are per-example gold and predicted labels in the same order. Each function checks that the
two lists have the same length, counts every example exactly once (the original FIGER evaluation
re-counted earlier batches; docs/differences.md), and returns plain floats in [0, 1] (QA: see below).

Division by zero is defined, never an exception: a ratio with an empty denominator is 0.0, with
one documented exception, `relation_metrics`'s precision, which follows the official TACRED scorer.
The extractive QA metrics (`extractive_qa_metrics`) are percentages, as the SQuAD script prints them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Hashable, Mapping, Sequence

Label = Hashable


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def _same_length(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold examples but {len(pred)} predictions")


def entity_typing_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity typing (OpenEntity, FIGER): gold and predicted label sets per mention.

    - `precision`, `recall`, `f1` (= `micro_f1`): loose micro, P = Σ|p∩g| / Σ|p|, R = Σ|p∩g| / Σ|g|.
    - `macro_precision`: mean over all examples of |p∩g| / |p|; an empty prediction counts 0
      (abstaining is not free; this is also the original code's choice).
    - `macro_recall`: mean of |p∩g| / |g| over the examples that have gold labels (an example
      with no gold labels has nothing to recall).
    - `macro_f1`: F1 of the two macro means (Ling & Weld's loose macro).
    - `strict_acc`: share of examples whose predicted set equals the gold set exactly (two empty
      sets are equal).

    Labels are compared as sets (duplicates in one list count once). With no examples, or an empty
    denominator, a value is 0.0.
    """
    _same_length(gold, pred)
    n = len(gold)
    overlap_sum = pred_sum = gold_sum = 0
    exact = 0
    macro_p = macro_r = 0.0
    with_gold = 0
    for g_labels, p_labels in zip(gold, pred):
        g, p = set(g_labels), set(p_labels)
        overlap = len(g & p)
        overlap_sum += overlap
        pred_sum += len(p)
        gold_sum += len(g)
        exact += g == p
        if p:
            macro_p += overlap / len(p)
        if g:
            macro_r += overlap / len(g)
            with_gold += 1
    precision, recall = _ratio(overlap_sum, pred_sum), _ratio(overlap_sum, gold_sum)
    macro_precision, macro_recall = _ratio(macro_p, n), _ratio(macro_r, with_gold)
    f1 = _f1(precision, recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "micro_f1": f1,
        "strict_acc": _ratio(exact, n),
        "macro_precision": macro_precision,
        "macro_recall": macro_recall,
        "macro_f1": _f1(macro_precision, macro_recall),
    }


def _single(label: Label | Sequence[Label]) -> Label:
    """A relation/class label, also accepted as the one-element list a predictions file holds."""
    if isinstance(label, (list, tuple)):
        if len(label) != 1:
            raise ValueError(f"expected exactly one label, got {list(label)}")
        return label[0]
    return label


def relation_metrics(
    gold: Sequence[Label | Sequence[Label]],
    pred: Sequence[Label | Sequence[Label]],
    negative: Label = "no_relation",
) -> dict[str, float]:
    """Relation classification (TACRED), micro-averaged as the official TACRED scorer does.

    A prediction other than `negative` counts in the precision denominator, a gold other than
    `negative` in the recall denominator, and a prediction is correct when it equals a gold that is
    not `negative`. As in the official scorer, precision is 1.0 when nothing but `negative` was
    predicted (recall, and so F1, is then 0 whenever there was something to find). `accuracy` is
    plain agreement over all examples, `negative` included.
    """
    _same_length(gold, pred)
    correct = guessed = relevant = agree = 0
    for g, p in zip(gold, pred):
        g, p = _single(g), _single(p)
        agree += g == p
        guessed += p != negative
        relevant += g != negative
        correct += p == g and g != negative
    precision = correct / guessed if guessed else 1.0
    recall = _ratio(correct, relevant)
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "accuracy": _ratio(agree, len(gold))}


def classification_metrics(
    gold: Sequence[Label | Sequence[Label]], pred: Sequence[Label | Sequence[Label]]
) -> dict[str, float]:
    """Single-label classification (fac pretraining): `accuracy` and `macro_f1`.

    `macro_f1` is the unweighted mean of per-label F1 = 2·TP / (2·TP + FP + FN) over the labels
    that occur in gold or predictions (a label absent from both has no F1 to average; one only
    predicted, or only gold, scores 0).
    """
    _same_length(gold, pred)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for g, p in zip(gold, pred):
        g, p = _single(g), _single(p)
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    # In order of first appearance, not a set's: a set of strings iterates in an order that changes with
    # PYTHONHASHSEED, and so would the last digit of the sum below.
    labels = dict.fromkeys([*tp, *fp, *fn])
    per_label = [_ratio(2 * tp[label], 2 * tp[label] + fp[label] + fn[label]) for label in labels]
    return {"accuracy": _ratio(sum(tp.values()), len(gold)), "macro_f1": _ratio(sum(per_label), len(per_label))}


def uas(gold_heads: Sequence[Sequence[int]], pred_heads: Sequence[Sequence[int]], ignore: int = -100) -> float:
    """Unlabelled attachment score: the share of words whose predicted head is the gold head.

    Both arguments hold one list of heads per sentence (word indices or sub-token positions, as
    long as both use the same). Entries whose gold is `ignore` are not words (padding, non-first
    sub-tokens, truncated heads: the `head_targets` of `encoding.encode_dependency`) and are not
    counted. No words: 0.0.
    """
    _same_length(gold_heads, pred_heads)
    words = correct = 0
    for i, (g_sent, p_sent) in enumerate(zip(gold_heads, pred_heads)):
        if len(g_sent) != len(p_sent):
            raise ValueError(f"sentence {i}: {len(g_sent)} gold heads but {len(p_sent)} predicted")
        for g, p in zip(g_sent, p_sent):
            if g != ignore:
                words += 1
                correct += g == p
    return _ratio(correct, words)


def lama_metrics(ranks: Mapping[str, Sequence[int]]) -> dict:
    """LAMA probing from the gold object's rank per fact (1 = predicted first), grouped by relation.

    Per relation: `p_at_1` (share of facts ranked 1), `p_at_10` (ranked ≤ 10), `mrr` (mean of
    1 / rank) and `facts`. Overall: `p_at_1`, `p_at_10` and `mrr` are macro averages over the
    relations that kept at least one fact (the headline, as in LAMA and the paper); `p_at_1_micro`
    is the share over all facts; `facts` and `relations` count what was scored. No facts: 0.0.
    """
    per_relation = {}
    for relation, rel_ranks in ranks.items():
        if any(r < 1 for r in rel_ranks):
            raise ValueError(f"relation {relation}: ranks start at 1")
        n = len(rel_ranks)
        if not n:
            continue
        per_relation[relation] = {
            "p_at_1": sum(r == 1 for r in rel_ranks) / n,
            "p_at_10": sum(r <= 10 for r in rel_ranks) / n,
            "mrr": sum(1 / r for r in rel_ranks) / n,
            "facts": n,
        }
    total = sum(m["facts"] for m in per_relation.values())
    macro = {key: _ratio(sum(m[key] for m in per_relation.values()), len(per_relation))
             for key in ("p_at_1", "p_at_10", "mrr")}
    micro = _ratio(sum(sum(r == 1 for r in rel_ranks) for rel_ranks in ranks.values()), total)
    return {**macro, "p_at_1_micro": micro, "facts": total, "relations": len(per_relation),
            "per_relation": per_relation}


# ---------------------------------------------------------------- extractive QA (SQuAD v1.1)

SQUAD_PUNCTUATION = frozenset(string.punctuation)
SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")


def squad_normalize(text: str) -> str:
    """The SQuAD v1.1 script's `normalize_answer`, step for step: lower-case, drop ASCII
    punctuation, drop the articles a/an/the, collapse whitespace. (OpenQA and the MRQA evaluator
    use the same function.)"""
    text = "".join(ch for ch in text.lower() if ch not in SQUAD_PUNCTUATION)
    return " ".join(SQUAD_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, gold: str) -> bool:
    return squad_normalize(prediction) == squad_normalize(gold)


def squad_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised token multisets (0 when they share no token, or either is empty)."""
    pred_tokens, gold_tokens = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def extractive_qa_metrics(gold: Sequence[Sequence[str]], pred: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """SearchQA / Quasar-T: `em` and `f1` as the SQuAD v1.1 script computes them — per question the
    max over its gold answers, then the mean over questions, × 100 (the scale the paper and the
    script report, unlike this module's other metrics).

    `pred` holds one answer string per question (or the one-element list a predictions file holds;
    an empty list is the empty answer). Questions without gold answers are not scored (the script
    skips them too); none scored: both 0.0.
    """
    _same_length(gold, pred)
    em_sum = f1_sum = 0.0
    scored = 0
    for answers, prediction in zip(gold, pred):
        if not isinstance(prediction, str):
            prediction = _single(prediction) if prediction else ""
        if not answers:
            continue
        scored += 1
        em_sum += max(float(squad_exact_match(prediction, a)) for a in answers)
        f1_sum += max(squad_f1(prediction, a) for a in answers)
    return {"em": 100.0 * _ratio(em_sum, scored), "f1": 100.0 * _ratio(f1_sum, scored)}
