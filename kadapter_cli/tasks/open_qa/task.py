"""Open-domain extractive QA: SearchQA and Quasar-T (`--task searchqa`, `--task quasart`).

One record is one question with its retrieved paragraphs (`kadapter_cli.tasks.open_qa.formats`); the model
sees one window at a time, `<s> question </s></s> paragraph </s>` (`kadapter_cli.tasks.open_qa.encoding`), and
a Linear(H → 2) head gives start/end logits at every position (`heads.SpanHead`).

- Training: distant supervision labels every occurrence of a gold answer in a window; the loss is
  the marginal likelihood of all of them, −log Σ p_start(s) − log Σ p_end(e), with the softmaxes
  over the window's paragraph positions. A window without an occurrence is left out
  (`no_answer=skip`, default) or points at the first token, `<s>`, which then joins the softmax
  (`no_answer=cls`); the paper does not say which it did.
- Evaluation: every window of every paragraph, in length-sorted batches (the loop's order), the
  best spans of each (`decoding.best_spans`, ≤ `max_answer_length` sub-tokens), their
  probabilities under the training loss's softmax (with `<s>` for `no_answer=cls`, so a window's
  no-answer mass lowers its spans), then one answer per question: one candidate per (paragraph,
  character span), equal normalised strings combined over its paragraphs by `max` (the paper's "no
  ranking") or `sum` (`decoding.ranked_answers`). Metrics `em`, `f1` (SQuAD v1.1, × 100); OpenQA
  files' gold answers are tokenised like their paragraphs (`formats`, `ptb`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kadapter_cli.artifacts.io import write_json, write_jsonl
from kadapter_cli.data.encoding import SPACED_MARKERS, pair_template
from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import metrics
from kadapter_cli.tasks.base import IN_MEMORY, SPLITS, Batch, Prediction, Task, TaskOption, register_task
from kadapter_cli.tasks.open_qa.decoding import COMBINE_MODES, SPANS_PER_WINDOW, best_spans, ranked_answers
from kadapter_cli.tasks.open_qa.encoding import encode_qa_paragraphs
from kadapter_cli.tasks.open_qa.formats import (
    FORMATS,
    QUASAR_CONTEXTS,
    QAReadOptions,
    detect_input,
    find_split,
    read_qa,
    read_qa_records,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

NO_ANSWER_MODES = ("skip", "cls")


def encode_question(tokenizer, record: dict, max_length: int, stride: int, training: bool,
                    no_answer: str = "skip") -> list[dict[str, Any]]:
    """The windows of one question over all its paragraphs. Each carries `paragraph` (the text its
    offsets point into), `paragraph_index` and, for training, answer positions; with
    `training`, windows without an answer are dropped (`skip`) or labelled at position 0 (`cls`).
    A question without paragraphs (kept by `skip_bad`) gets no training window, and for evaluation
    one window with an empty paragraph: it has no span, so its answer is empty and scores as wrong."""
    if no_answer not in NO_ANSWER_MODES:
        raise ValueError(f"no_answer must be one of {', '.join(NO_ANSWER_MODES)}, got {no_answer!r}")
    answers = record["answers"] if training else ()
    paragraphs = record["paragraphs"] or ([] if training else [""])
    windows = []
    per_paragraph = encode_qa_paragraphs(tokenizer, record["question"], paragraphs, max_length, stride,
                                         answers, pair_template(tokenizer))
    for index, (paragraph, paragraph_windows) in enumerate(zip(paragraphs, per_paragraph)):
        for window in paragraph_windows:
            if training and not window["starts"]:
                if no_answer == "skip":
                    continue
                window["starts"], window["ends"] = [0], [0]
            window["paragraph"] = paragraph
            window["paragraph_index"] = index
            window["cls_slot"] = no_answer == "cls"
            windows.append(window)
    return windows


def collate_windows(windows: Sequence[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Padded `input_ids`, `attention_mask`, `context_mask` (paragraph positions), `answer_mask`
    (where the loss's softmax runs: the paragraph, plus `<s>` with `no_answer=cls`) and multi-hot
    `start_targets`/`end_targets` (B, L)."""
    import torch

    from kadapter_cli.data.padding import pad_ids

    ids, attention = pad_ids([w["input_ids"] for w in windows], pad_id, pad_to)
    context = torch.zeros(ids.shape, dtype=torch.bool)
    starts = torch.zeros(ids.shape, dtype=torch.bool)
    ends = torch.zeros(ids.shape, dtype=torch.bool)
    for i, w in enumerate(windows):
        context[i, w["context_start"]: w["context_start"] + len(w["offsets"])] = True
        starts[i, w["starts"]] = True
        ends[i, w["ends"]] = True
    answer_mask = context.clone()
    answer_mask[:, 0] |= torch.tensor([bool(w.get("cls_slot")) for w in windows])
    return {"input_ids": ids, "attention_mask": attention, "context_mask": context, "answer_mask": answer_mask,
            "start_targets": starts, "end_targets": ends}


def span_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over windows of −log Σ_gold p_start − log Σ_gold p_end (softmax over `answer_mask`)."""
    import torch

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
    """Per window its best `(probability, start, end)` spans, positions in `input_ids`, the
    probabilities under the training loss's softmax (`answer_mask`: with `no_answer=cls` it holds
    `<s>`, whose mass then lowers the window's spans)."""
    scores, starts, ends = best_spans(logits[..., 0], logits[..., 1], batch["context_mask"], max_answer_length, top_k,
                                      batch.get("answer_mask"))
    out = []
    for row_scores, row_starts, row_ends in zip(scores.exp().tolist(), starts.tolist(), ends.tolist()):
        out.append([(p, s, e) for p, s, e in zip(row_scores, row_starts, row_ends) if p > 0.0])
    return out


def span_chars(window: dict, start: int, end: int) -> tuple[int, int]:
    """The character span (end exclusive) in the window's paragraph of a span given as positions in
    its `input_ids`."""
    offsets = window["offsets"]
    return offsets[start - window["context_start"]][0], offsets[end - window["context_start"]][1]


def span_text(window: dict, start: int, end: int) -> str:
    """The paragraph text of a span given as positions in the window's `input_ids`."""
    lo, hi = span_chars(window, start, end)
    return window["paragraph"][lo:hi].strip()


def answers_by_question(windows: Sequence[dict], spans: Sequence[list[tuple[float, int, int]]],
                        questions: Sequence[int], n_questions: int, combine: str = "max") -> list[str]:
    """One answer per question from the spans of all its windows; `questions[i]` is the index
    (0 ≤ · < n_questions) of window i's question."""
    return [ranked[0][0] if ranked else ""
            for ranked in ranked_answers_by_question(windows, spans, questions, n_questions, combine)]


def ranked_answers_by_question(windows: Sequence[dict], spans: Sequence[list[tuple[float, int, int]]],
                               questions: Sequence[int], n_questions: int,
                               combine: str = "max") -> list[list[tuple[str, float]]]:
    """Per question, `(answer, score)` over all its windows' spans, best first (`ranked_answers`).

    A span of a paragraph is one candidate however many windows hold it: consecutive windows of a
    long paragraph overlap, and a span in the overlap is decoded in both. It counts once, with the
    probability of the window that scores it highest, so `sum` adds up distinct occurrences only."""
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    candidates: list[dict[tuple, tuple[str, float]]] = [{} for _ in range(n_questions)]
    for window, window_spans_, question in zip(windows, spans, questions):
        paragraph = window.get("paragraph_index", window["paragraph"])
        for probability, start, end in window_spans_:
            key = (paragraph, *span_chars(window, start, end))
            if key not in candidates[question] or probability > candidates[question][key][1]:
                candidates[question][key] = (span_text(window, start, end), probability)
    return [ranked_answers(c.values(), combine) for c in candidates]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------- the tasks


class OpenQATask(Task):
    """One record per question; one example per window (`examples`), so training batches and
    the loop's length-sorted evaluation batches count windows. Predictions go back to one line
    per question (`prediction_lines`), in input order."""

    primary_metric = "f1"
    headline_metrics = ("em", "f1")
    hub_task = "question-answering"  # extractive: a span of the paragraph
    example_records = [{"id": "q1", "question": "What is the capital of France?",
                        "paragraphs": ["Paris is the capital of France."]}]
    options = {
        "format": TaskOption("auto", "data format: auto (detected from the files), " + ", ".join(FORMATS), str,
                             ("auto", *FORMATS)),
        "contexts": TaskOption("short", "Quasar-T contexts: short or long", str, QUASAR_CONTEXTS),
        "titles": TaskOption(False, "SearchQA/MRQA: put each result's title before its snippet", bool),
        "max_paragraphs": TaskOption(50, "paragraphs kept per question (OpenQA: 50)", int),
        "skip_bad": TaskOption(False, "skip bad questions (counted in the manifest) instead of stopping", bool),
        "no_answer": TaskOption("skip", "training windows without the answer: skip them, or cls (point at <s>)",
                                str, NO_ANSWER_MODES),
        "stride": TaskOption(32, "sub-tokens shared by consecutive windows of a long paragraph", int),
        "max_answer_length": TaskOption(30, "longest answer span, in sub-tokens", int),
        "combine": TaskOption("max", "scores of equal answers across paragraphs: max (no ranking) or sum", str,
                              COMBINE_MODES),
    }

    def __init__(self, **options: Any):
        super().__init__(**options)
        for key in ("max_paragraphs", "stride", "max_answer_length"):
            if getattr(self, key) < (0 if key == "stride" else 1):
                raise BadInput(f"task option {key} of '{self.name}' must be positive, got {getattr(self, key)}")
        self.skipped: dict[str, int] = {}  # bad questions skipped per file read (with skip_bad)
        self.without_paragraphs: dict[str, int] = {}  # questions kept without paragraphs per file (skip_bad)

    # ------------------------------------------------------------ data

    def task_files(self, data_dir: str | Path) -> dict[str, Path]:
        """Each split where `qa_formats.find_split` finds it (OpenQA `.txt`, SearchQA folder or zip,
        MRQA `.jsonl(.gz)`, Quasar-T questions file, records), else the contract's `<split>.json`."""
        files = {}
        for split in SPLITS:
            source = find_split(data_dir, split, self.format, self.contexts)
            files[split] = source.main if source is not None else Path(data_dir) / f"{split}.json"
        return files

    def input_files(self, path: str | Path) -> list[Path]:
        """All the files of the split `path` names: OpenQA `.txt` + `.json`, Quasar-T questions +
        contexts, ..."""
        return detect_input(path, self.contexts, self.format).paths

    def read(self, path: str | Path, labeled: bool = True) -> list[dict]:
        source = detect_input(path, self.contexts, self.format)
        data = read_qa(source, QAReadOptions(self.max_paragraphs, self.titles, self.skip_bad), labeled)
        self.skipped[str(path)] = data.skipped
        self.without_paragraphs[str(path)] = data.without_paragraphs
        return data.records

    def read_records(self, records: Sequence[Any], labeled: bool = True) -> list[dict]:
        data = read_qa_records(records, QAReadOptions(self.max_paragraphs, self.titles, self.skip_bad), labeled,
                               IN_MEMORY)
        self.skipped[IN_MEMORY] = data.skipped
        return data.records

    def read_stats(self) -> dict[str, Any]:
        """Bad questions skipped (`skip_bad`), and questions kept without paragraphs: left out of
        training, scored as wrong on dev and test."""
        return {"skipped_bad_questions": sum(self.skipped.values()),
                "questions_without_paragraphs": sum(self.without_paragraphs.values())}

    def read_notes(self, path: str | Path, training: bool = False) -> list[str]:
        """`dev.txt: 2 bad questions skipped`, `dev.txt: 1 question without paragraphs: scored as
        wrong` (`left out of training` for the training split): the counts `read_stats` saves in the
        manifests, per file read, for `finetune` and `evaluate` to print (nothing when zero)."""
        name = Path(path).name
        skipped, without = self.skipped.get(str(path), 0), self.without_paragraphs.get(str(path), 0)
        notes = []
        if skipped:
            notes.append(f"{name}: {_count(skipped, 'bad question')} skipped")
        if without:
            fate = "left out of training" if training else "scored as wrong"
            notes.append(f"{name}: {_count(without, 'question')} without paragraphs: {fate}")
        return notes

    def prepare_train(self, records: list[dict]) -> list[dict]:
        """Training records get answer labels and the `no_answer` rule (dev and test keep every
        window); a question without paragraphs has nothing to train on and is left out."""
        return [{**record, "train": True} for record in records if record["paragraphs"]]

    def gold(self, record: dict) -> list[str]:
        return list(record["answers"])

    def has_gold(self, record: dict) -> bool:
        return bool(record["answers"])

    # ------------------------------------------------------------ model side

    def examples(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
                 marker_style: str = SPACED_MARKERS) -> list[dict]:
        """The record's windows (the caller tags each with `record`, the question's index); QA marks
        no entities, so `marker_style` does not apply."""
        windows = encode_question(tokenizer, record, max_length, self.stride, training=record.get("train", False),
                                  no_answer=self.no_answer)
        for window in windows:
            window["id"] = record["id"]
            window["gold"] = self.gold(record)
        return windows

    def length(self, example: dict) -> int:
        return len(example["input_ids"])

    def collate(self, examples: Sequence[dict], pad_id: int, pad_to: int | None = None) -> Batch:
        return collate_windows(examples, pad_id, pad_to)

    def build_head(self, hidden: int, n_labels: int) -> "nn.Module":
        from kadapter_cli.modeling.heads import SpanHead

        return SpanHead(hidden)

    def loss(self, outputs: "torch.Tensor", batch: Batch) -> "torch.Tensor":
        return span_loss(outputs, batch)

    def decode(self, outputs: "torch.Tensor", batch: Batch, labels: Sequence[str]) -> list[Prediction]:
        """Per window its best spans as `{"pred": [], "spans": [[probability, start, end]]}` (positions
        in the window); the answer is chosen per question, over all its windows, in `answers`."""
        return [{"pred": [], "spans": [list(span) for span in spans]}
                for spans in window_spans(outputs, batch, self.max_answer_length)]

    # ------------------------------------------------------------ scoring and predictions files

    def answers(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> list[tuple[dict, str]]:
        """`(first window, answer)` per question, in input order."""
        return [(first, ranked[0][0] if ranked else "") for first, ranked in self.ranked_answers(predictions, examples)]

    def ranked_answers(self, predictions: Sequence[Prediction],
                       examples: Sequence[dict]) -> list[tuple[dict, list[tuple[str, float]]]]:
        """`(first window, [(answer, score), ...] best first)` per question, in input order."""
        firsts: dict[int, dict] = {}
        for example in examples:
            firsts.setdefault(example["record"], example)
        order = sorted(firsts)
        position = {record: i for i, record in enumerate(order)}
        ranked = ranked_answers_by_question(examples, [p["spans"] for p in predictions],
                                            [position[e["record"]] for e in examples], len(order), self.combine)
        return [(firsts[record], answers) for record, answers in zip(order, ranked)]

    def scored_lines(self, lines: list[dict], predictions: Sequence[Prediction], examples: Sequence[dict],
                     labels: Sequence[str], scores: str) -> list[dict]:
        """`"scores": {answer: score}`: the predicted answer's combined span probability (`max` or
        `sum` over the question's windows, as chosen), or with `all` every candidate answer's, best
        first (at most `SPANS_PER_WINDOW` per window)."""
        if scores == "none":
            return lines
        out = []
        for line, (_, ranked) in zip(lines, self.ranked_answers(predictions, examples)):
            keep = ranked if scores == "all" else ranked[:1]
            out.append({**line, "scores": {answer: round(score, 6) for answer, score in keep}})
        return out

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        """`em`, `f1` as the SQuAD v1.1 script (× 100)."""
        return metrics.extractive_qa_metrics(gold, pred)

    def score(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> dict[str, float]:
        answered = [(first["gold"], [answer]) for first, answer in self.answers(predictions, examples) if first["gold"]]
        return self.metrics([g for g, _ in answered], [p for _, p in answered]) if answered else {}

    def prediction_lines(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> list[dict]:
        """One line per question: `{"index", "id", "gold": answers, "pred": [answer]}`."""
        return [{"index": i, "id": first["id"], "gold": list(first["gold"]), "pred": [answer]}
                for i, (first, answer) in enumerate(self.answers(predictions, examples))]

    def write_predictions(self, folder: Path, split: str, predictions: Sequence[Prediction],
                          examples: Sequence[dict]) -> None:
        """`predictions-<split>.jsonl`, plus `answers-<split>.json` = `{id: answer}` (what MRQA- and
        SQuAD-style scorers read)."""
        lines = self.prediction_lines(predictions, examples)
        write_jsonl(Path(folder) / f"predictions-{split}.jsonl", lines)
        write_json(Path(folder) / f"answers-{split}.json", {line["id"]: line["pred"][0] for line in lines})


@register_task
class SearchQA(OpenQATask):
    """SearchQA (Dunn et al. 2017): Jeopardy! clues with Google snippets as paragraphs."""

    name = "searchqa"
    # Paper appendix C: 2 epochs, max length 128, batch 8, lr 5e-6, warm-up 0.
    defaults = {"lr": 5e-6, "batch_size": 8, "epochs": 2, "max_length": 128, "warmup": 0}


@register_task
class QuasarT(OpenQATask):
    """Quasar-T (Dhingra et al. 2017): trivia questions with ClueWeb09 sentences as paragraphs."""

    name = "quasart"
    # Paper appendix C: 5 epochs, max length 256, batch 16, lr 1e-5, warm-up 0.
    defaults = {"lr": 1e-5, "batch_size": 16, "epochs": 5, "max_length": 256, "warmup": 0}
