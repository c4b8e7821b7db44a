"""SearchQA / Quasar-T EM and F1: the SQuAD v1.1 script's definitions on hand cases and the real
samples' quirks (the arithmetic is written next to each number)."""

from __future__ import annotations

import json

import pytest

from kadapter_cli.tasks.metrics import extractive_qa_metrics, squad_exact_match, squad_f1, squad_normalize


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
