"""Distant supervision, question + paragraph windows, and span decoding for SearchQA / Quasar-T."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kadapter_cli.data.encoding import pair_template
from kadapter_cli.modeling.backbone import load_tokenizer
from kadapter_cli.tasks.metrics import squad_normalize
from kadapter_cli.tasks.open_qa.decoding import best_spans, combine_answers
from kadapter_cli.tasks.open_qa.encoding import (
    answer_char_spans,
    encode_qa_paragraphs,
    encode_qa_windows,
    normalized_words,
)
from kadapter_cli.tasks.open_qa.formats import detect_input, read_qa

# ---------------------------------------------------------------- distant supervision


def test_normalized_words_join_to_the_squad_normalisation():
    text = 'The "Mystery Train" (1954) -- an Elvis song; a\nhit & THE end.'
    assert " ".join(w for w, _, _ in normalized_words(text)) == squad_normalize(text)
    words = normalized_words(text)
    assert [text[s:e] for _, s, e in words[:3]] == ["Mystery", "Train", "1954"]  # quotes/brackets trimmed


def test_every_normalised_occurrence_is_a_span():
    paragraph = "Lou Gehrig (the Iron Horse). Later, LOU GEHRIG's disease; lou-gehrig."
    spans = answer_char_spans(paragraph, ["(Lou) Gehrig"])
    # "lou gehrig" twice; "gehrig's" → "gehrigs" and "lou-gehrig" → "lougehrig" do not match
    assert [paragraph[s:e] for s, e in spans] == ["Lou Gehrig"]
    # the answer's words, articles kept: "the mystery train", not "mystery train" alone
    assert answer_char_spans("Elvis rode the mystery train.", ['the "Mystery Train"']) == [(11, 28)]
    assert answer_char_spans("Elvis rode a mystery train.", ['the "Mystery Train"']) == []
    assert answer_char_spans("the end", ["the"]) == []  # an answer that normalises to nothing


def test_distant_supervision_on_the_real_searchqa_sample(shared_data):
    records = read_qa(detect_input(shared_data / "searchqa" / "original-json" / "train")).records
    gehrig, mystery = records
    found = [[p[s:e] for s, e in answer_char_spans(p, gehrig["answers"])] for p in gehrig["paragraphs"]]
    assert all(found) and all(squad_normalize(t) == "lou gehrig" for spans in found for t in spans)
    # as the sample's README says: 'the "Mystery Train"' occurs in none of its 3 snippets
    assert not any(answer_char_spans(p, mystery["answers"]) for p in mystery["paragraphs"])


# ---------------------------------------------------------------- windows


@pytest.fixture(scope="module")
def tokenizers(tiny_backbone, minilm):
    return {"roberta": load_tokenizer(tiny_backbone), "bert": load_tokenizer(minilm)}


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_windows_overlap_by_stride_and_carry_every_answer_occurrence(tokenizers, kind):
    tokenizer = tokenizers[kind]
    paragraph = " ".join(f"filler{i} words here ." if i % 7 else "Samos is the island ." for i in range(40))
    windows = encode_qa_windows(tokenizer, "Which island?", paragraph, max_length=48, stride=8, answers=["Samos"])
    assert len(windows) > 3 and all(len(w["input_ids"]) <= 48 for w in windows)
    prefix, middle, suffix = pair_template(tokenizer)
    question = tokenizer("Which island?", add_special_tokens=False)["input_ids"]
    if kind == "roberta":  # <s> question </s></s> paragraph </s>
        assert (prefix, middle, suffix) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id] * 2, [tokenizer.sep_token_id])
    for w in windows:
        assert w["input_ids"][: w["context_start"]] == [*prefix, *question, *middle]
        assert w["input_ids"][-len(suffix):] == suffix
    # consecutive windows share exactly `stride` paragraph sub-tokens
    for a, b in zip(windows, windows[1:]):
        assert a["offsets"][-8:] == b["offsets"][:8]
    # every occurrence lies in some window, and each label decodes to the answer through the offsets
    seen = set()
    for w in windows:
        for s, e in zip(w["starts"], w["ends"]):
            lo, hi = w["offsets"][s - w["context_start"]][0], w["offsets"][e - w["context_start"]][1]
            assert paragraph[lo:hi] == "Samos"
            seen.add(lo)
    assert seen == {s for s, _ in answer_char_spans(paragraph, ["Samos"])} and len(seen) == 6


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_a_questions_paragraphs_encoded_in_one_call_give_the_windows_of_one_call_each(tokenizers, kind):
    # The batched tokenizer call (one per question) must cut exactly the windows, offsets and labels
    # that tokenising each paragraph on its own gave.
    tokenizer = tokenizers[kind]
    paragraphs = ["Samos is an island.", " ".join(f"w{i} Samos, near Turkey;" for i in range(30)), "x", "Lou Gehrig (Samos)"]
    batched = encode_qa_paragraphs(tokenizer, "Which island?", paragraphs, max_length=40, stride=6, answers=["samos"])
    single = [encode_qa_windows(tokenizer, "Which island?", p, max_length=40, stride=6, answers=["samos"])
              for p in paragraphs]
    assert batched == single and [len(w) for w in batched][1] > 2 and sum(len(w["starts"]) for ws in batched for w in ws) > 30
    assert encode_qa_paragraphs(tokenizer, "Which island?", [], max_length=40, stride=6) == []


def test_long_questions_keep_at_most_half_the_window(tokenizers):
    tokenizer = tokenizers["roberta"]
    (window,) = encode_qa_windows(tokenizer, "why " * 100, "a short paragraph", max_length=40, stride=4)
    assert len(window["input_ids"]) <= 40 and window["context_start"] <= 1 + 18 + 2


# ---------------------------------------------------------------- decoding


def _brute_force(start, end, mask, max_len):
    ls = torch.log_softmax(start.masked_fill(~mask, -1e30), -1)
    le = torch.log_softmax(end.masked_fill(~mask, -1e30), -1)
    best = []
    for b in range(start.shape[0]):
        spans = [(float(ls[b, s] + le[b, e]), s, e) for s in range(start.shape[1]) for e in range(s, min(s + max_len, start.shape[1]))
                 if mask[b, s] and mask[b, e]]
        best.append(sorted(spans, reverse=True))
    return best


def test_best_spans_equal_the_brute_force_over_the_band():
    torch.manual_seed(0)
    start, end = torch.randn(3, 20), torch.randn(3, 20)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 5:18] = True
    mask[1, 3:20] = True
    mask[2, 10:12] = True  # 2 positions: only 3 spans exist
    scores, starts, ends = best_spans(start, end, mask, max_answer_length=4, top_k=5)
    expected = _brute_force(start, end, mask, 4)
    for b in range(3):
        for k in range(5):
            if k < len(expected[b]):
                score, s, e = expected[b][k]
                assert (starts[b, k].item(), ends[b, k].item()) == (s, e)
                assert scores[b, k].item() == pytest.approx(score, abs=1e-5)
                assert 0 <= e - s < 4
            else:
                assert scores[b, k].item() == float("-inf")


def test_combine_answers_max_or_sum_of_equal_normalised_strings():
    candidates = [("Samos", 0.4), ("the island of Samos", 0.3), ("samos.", 0.3), ("Davos", 0.5), ("the", 0.9)]
    assert combine_answers(candidates, "max") == "Davos"  # 0.5 beats max(0.4, 0.3); "the" normalises to nothing
    assert combine_answers(candidates, "sum") == "Samos"  # 0.4 + 0.3, spelled as its best candidate
    assert combine_answers([("the", 0.9)]) == "the"
    assert combine_answers([]) == ""
    with pytest.raises(ValueError):
        combine_answers(candidates, "mean")


# ---------------------------------------------------------------- training windows and loss


def test_no_answer_skip_or_cls_on_the_real_sample(shared_data, tokenizers):
    from kadapter_cli.tasks.open_qa.task import collate_windows, encode_question

    tokenizer = tokenizers["roberta"]
    gehrig, mystery = read_qa(detect_input(shared_data / "searchqa" / "original-json" / "train")).records
    # 'the "Mystery Train"' occurs in none of its 3 snippets: skip leaves no training window ...
    assert encode_question(tokenizer, mystery, 64, 16, training=True, no_answer="skip") == []
    # ... cls trains each window to point at <s>, which joins the loss's softmax
    cls = encode_question(tokenizer, mystery, 64, 16, training=True, no_answer="cls")
    assert cls and all(w["starts"] == [0] and w["ends"] == [0] for w in cls)
    assert collate_windows(cls, tokenizer.pad_token_id)["answer_mask"][:, 0].all()
    every = encode_question(tokenizer, mystery, 64, 16, training=False)
    assert len(every) == len(cls) and all(w["starts"] == [] for w in every)  # evaluation: no labels, all windows
    skip = encode_question(tokenizer, gehrig, 64, 16, training=True, no_answer="skip")
    assert skip and all(w["starts"] for w in skip)
    assert not collate_windows(skip, tokenizer.pad_token_id)["answer_mask"][:, 0].any()


def test_span_loss_is_the_likelihood_of_all_occurrences():
    from kadapter_cli.tasks.open_qa.task import span_loss

    logits = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 0.5], [9.0, 9.0]]])  # (B=1, L=4, 2); position 3 is padding
    mask = torch.tensor([[False, True, True, False]])
    starts = torch.tensor([[False, True, True, False]])  # two occurrences start at 1 and 2
    ends = torch.tensor([[False, False, True, False]])
    loss = span_loss(logits, {"answer_mask": mask, "start_targets": starts, "end_targets": ends})
    # start: both allowed positions are gold → −log 1 = 0; end: −log softmax([2, 0.5])[1]
    assert loss.item() == pytest.approx(-torch.log_softmax(torch.tensor([2.0, 0.5]), 0)[1].item())


def test_evaluation_batches_cut_on_padding_give_the_answers_of_fixed_size_batches(tiny_backbone, monkeypatch):
    # On a CPU `training.evaluate` cuts its length-sorted batches where padding would cost more than
    # a batch; the spans and answers must be those of the fixed-size batches it used before.
    from kadapter_cli.modeling.backbone import load_backbone
    from kadapter_cli.stages.finetune import build_task_model, encode_split
    from kadapter_cli.tasks import get_task
    from kadapter_cli.training import loop as training
    from kadapter_cli.training.batching import sequential_batches
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.objectives import TaskObjective

    tokenizer, task = load_tokenizer(tiny_backbone), get_task("searchqa")
    records = [{"id": str(i), "question": f"which {'word ' * i}comes?", "answers": ["Samos"],
                "paragraphs": [" ".join(["Samos is an island"] * (1 + (i * j) % 7)) for j in range(4)]}
               for i in range(6)]
    examples = encode_split(task, tokenizer, records, [], 64, Path("records"), "encoding")
    torch.manual_seed(0)
    model = build_task_model(task, [], {}, "concat", load_backbone(tiny_backbone)).eval()
    objective = TaskObjective(tokenizer.pad_token_id, task, [])
    lengths = [len(e["input_ids"]) for e in examples]
    batch_size = len(examples)  # fixed-size batching: all the windows, of spread-out lengths, in one
    assert sequential_batches(lengths, batch_size, training.CPU_BATCH_OVERHEAD_TOKENS) != sequential_batches(lengths, batch_size)

    def outputs() -> list:
        return training.evaluate(model, objective, examples, TrainConfig(batch_size=batch_size, device="cpu"))[1]

    cut = outputs()
    monkeypatch.setattr(training, "CPU_BATCH_OVERHEAD_TOKENS", None)
    fixed = outputs()
    assert task.answers(cut, examples) == task.answers(fixed, examples)
    for a, b in zip(cut, fixed):
        assert [s[1:] for s in a["spans"]] == [s[1:] for s in b["spans"]]
        assert [s[0] for s in a["spans"]] == pytest.approx([s[0] for s in b["spans"]], rel=1e-4)
