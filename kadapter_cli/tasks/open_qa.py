"""Open-domain extractive QA: SearchQA and Quasar-T (`--task searchqa`, `--task quasart`).

One record is one question with its retrieved paragraphs (`kadapter_cli.qa_formats`); the model
sees one window at a time, `<s> question </s></s> paragraph </s>` (`kadapter_cli.qa_encoding`), and
a Linear(H → 2) head gives start/end logits at every position (`heads.SpanHead`).

- Training: distant supervision labels every occurrence of a gold answer in a window; the loss is
  the marginal likelihood of all of them, −log Σ p_start(s) − log Σ p_end(e), with the softmaxes
  over the window's paragraph positions. A window without an occurrence is left out
  (`no_answer=skip`, default) or points at the first token, `<s>`, which then joins the softmax
  (`no_answer=cls`); the paper does not say which it did.
- Evaluation: every window of every paragraph, in length-sorted batches (the loop's order), the
  best spans of each (`span_decoding.best_spans`, ≤ `max_answer_length` sub-tokens), then one answer
  per question: equal normalised strings combined over its paragraphs by `max` (the paper's "no
  ranking") or `sum` (`span_decoding.combine_answers`). Metrics `em`, `f1` (SQuAD v1.1, × 100).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from kadapter_cli import metrics
from kadapter_cli.qa_encoding import encode_qa_windows
from kadapter_cli.span_decoding import COMBINE_MODES, SPANS_PER_WINDOW, best_spans, combine_answers

NO_ANSWER_MODES = ("skip", "cls")


def encode_question(tokenizer, record: dict, question_index: int, max_length: int, stride: int,
                    training: bool, no_answer: str = "skip") -> list[dict[str, Any]]:
    """The windows of one question over all its paragraphs. Each carries `question` (its index),
    `paragraph` (the text its offsets point into) and, for training, answer positions; with
    `training`, windows without an answer are dropped (`skip`) or labelled at position 0 (`cls`)."""
    if no_answer not in NO_ANSWER_MODES:
        raise ValueError(f"no_answer must be one of {', '.join(NO_ANSWER_MODES)}, got {no_answer!r}")
    answers = record["answers"] if training else ()
    windows = []
    for paragraph in record["paragraphs"]:
        for window in encode_qa_windows(tokenizer, record["question"], paragraph, max_length, stride, answers):
            if training and not window["starts"]:
                if no_answer == "skip":
                    continue
                window["starts"], window["ends"] = [0], [0]
            window["question"] = question_index
            window["paragraph"] = paragraph
            window["cls_slot"] = no_answer == "cls"
            windows.append(window)
    return windows


def collate_windows(windows: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Padded `input_ids`, `attention_mask`, `context_mask` (paragraph positions), `answer_mask`
    (where the loss's softmax runs: the paragraph, plus `<s>` with `no_answer=cls`) and multi-hot
    `start_targets`/`end_targets` (B, L)."""
    length = max(len(w["input_ids"]) for w in windows)
    shape = (len(windows), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    context = torch.zeros(shape, dtype=torch.bool)
    starts = torch.zeros(shape, dtype=torch.bool)
    ends = torch.zeros(shape, dtype=torch.bool)
    for i, w in enumerate(windows):
        n = len(w["input_ids"])
        ids[i, :n] = torch.as_tensor(w["input_ids"])
        attention[i, :n] = 1
        context[i, w["context_start"]: w["context_start"] + len(w["offsets"])] = True
        starts[i, w["starts"]] = True
        ends[i, w["ends"]] = True
    answer_mask = context.clone()
    answer_mask[:, 0] |= torch.tensor([bool(w.get("cls_slot")) for w in windows])
    return {"input_ids": ids, "attention_mask": attention, "context_mask": context, "answer_mask": answer_mask,
            "start_targets": starts, "end_targets": ends}


def span_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over windows of −log Σ_gold p_start − log Σ_gold p_end (softmax over `answer_mask`)."""
    mask = batch["answer_mask"]
    total = logits.new_zeros(())
    for k, key in ((0, "start_targets"), (1, "end_targets")):
        scores = logits[..., k].float().masked_fill(~mask, -torch.inf)
        log_norm = torch.logsumexp(scores, dim=-1)
        log_gold = torch.logsumexp(scores.masked_fill(~batch[key], -torch.inf), dim=-1)
        total = total + (log_norm - log_gold).mean()
    return total


def window_spans(logits: torch.Tensor, batch: dict[str, torch.Tensor], max_answer_length: int,
                 top_k: int = SPANS_PER_WINDOW) -> list[list[tuple[float, int, int]]]:
    """Per window its best `(probability, start, end)` spans, positions in `input_ids`."""
    scores, starts, ends = best_spans(logits[..., 0], logits[..., 1], batch["context_mask"], max_answer_length, top_k)
    out = []
    for row_scores, row_starts, row_ends in zip(scores.exp().tolist(), starts.tolist(), ends.tolist()):
        out.append([(p, s, e) for p, s, e in zip(row_scores, row_starts, row_ends) if p > 0.0])
    return out


def span_text(window: dict, start: int, end: int) -> str:
    """The paragraph text of a span given as positions in the window's `input_ids`."""
    offsets = window["offsets"]
    return window["paragraph"][offsets[start - window["context_start"]][0]: offsets[end - window["context_start"]][1]]


def answers_by_question(windows: Sequence[dict], spans: Sequence[list[tuple[float, int, int]]], n_questions: int,
                        combine: str = "max") -> list[str]:
    """One answer per question from the spans of all its windows."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    candidates: list[list[tuple[str, float]]] = [[] for _ in range(n_questions)]
    for window, window_spans_ in zip(windows, spans):
        for probability, start, end in window_spans_:
            candidates[window["question"]].append((span_text(window, start, end), probability))
    return [combine_answers(c, combine) for c in candidates]


def qa_metrics(gold: Sequence[Sequence[str]], answers: Sequence[str]) -> dict[str, float]:
    return metrics.extractive_qa_metrics(gold, list(answers))
