"""CosmosQA (Huang et al. 2019): 4-way multiple-choice reading comprehension over blog snippets.

The worked example of a task that is not classification over a label vocabulary: every record has
four candidates, each encoded with the context and question as its own sequence, and the head
scores each candidate from its first token (`heads.ChoiceHead`, Linear H → 1); the four scores
are a softmax over the answers, trained with cross-entropy. There is no label vocabulary: gold and
predictions are the answer index as a string ("0".."3").

Reads the authors' CSV (`train.csv`, `valid.csv`: header `id,context,question,answer0..answer3,
label`, CRLF, quoted fields, int labels) and K-Adapter's JSON Lines (`train.jsonl`, `valid.jsonl`,
`test.jsonl`, labels as strings); `valid` is the dev split, and the test split has no labels. For
an unlabeled split the leaderboard file `predictions-<split>.lst` (one predicted label per line,
input order) is written beside the predictions.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from kadapter_cli.artifacts.io import iter_text_lines
from kadapter_cli.data import encoding
from kadapter_cli.errors import BadInput
from kadapter_cli.tasks.base import (
    SPLITS,
    Batch,
    Prediction,
    Task,
    TaskOption,
    Where,
    _fields,
    _json_type,
    argmax,
    iter_raw_records,
    located,
    register_task,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

CHOICES = 4
ANSWER_FIELDS = tuple(f"answer{i}" for i in range(CHOICES))
CSV_HEADER = ("id", "context", "question", *ANSWER_FIELDS, "label")
# The file names a data folder may use for each split, in the order they are looked for: the
# contract's names, K-Adapter's JSON Lines, the authors' CSV.
SPLIT_FILES = {
    "train": ("train.json", "train.jsonl", "train.csv"),
    "dev": ("dev.json", "dev.jsonl", "valid.jsonl", "valid.csv", "dev.csv"),
    "test": ("test.json", "test.jsonl", "test.csv"),
}
# paper: `<s> context </s></s> question </s></s> answer </s>`; original: `<s> context </s> question </s> answer </s>`.
LAYOUT_SEPARATORS = {"paper": "pair", "original": "single"}


@register_task
class CosmosQA(Task):
    """Four candidates per record, one score each, softmax over the four; metric accuracy."""

    name = "cosmosqa"
    primary_metric = "accuracy"
    headline_metrics = ("accuracy",)
    hub_task = "multiple-choice"
    example_records = [{"context": "Paris is the capital of France.", "question": "Which country is Paris in?",
                        "answer0": "France", "answer1": "Spain", "answer2": "Italy", "answer3": "None of the above"}]
    # Paper appendix C: 3 epochs, batch 64, lr 1e-5, warm-up 0, max length 256 (README: batch 64
    # via gradient accumulation; the released script: effective batch 16, 20,000 steps).
    defaults = {"lr": 1e-5, "batch_size": 64, "epochs": 3, "max_length": 256, "warmup": 0}
    options = {"layout": TaskOption(
        "paper", "paper: <s> context </s></s> question </s></s> answer </s>; original: single </s> separators "
        "(K-Adapter's script)", str, tuple(LAYOUT_SEPARATORS))}
    test_labels_optional = True

    # ------------------------------------------------------------ data

    def task_files(self, data_dir: str | Path) -> dict[str, Path]:
        """Each split under the first of its accepted names that exists (`SPLIT_FILES`; `valid` is
        dev), else the contract's `<split>.json`. Two files for one split are refused."""
        data_dir = Path(data_dir)
        files = {}
        for split in SPLITS:
            present = [data_dir / name for name in SPLIT_FILES[split] if (data_dir / name).is_file()]
            if len(present) > 1:
                raise BadInput(f"the {split} split is given twice ({', '.join(p.name for p in present)}); keep one",
                               data_dir)
            files[split] = present[0] if present else data_dir / f"{split}.json"
        return files

    def read(self, path: str | Path, labeled: bool = True) -> list[dict]:
        raw_records = iter_csv_records(path) if Path(path).suffix.lower() == ".csv" else iter_raw_records(path)
        records = [located(self.normalize(raw, path, where, labeled), where) for where, raw in raw_records]
        if not records:
            raise BadInput("no records", path)
        return records

    def normalize(self, raw: Any, path: str | Path, where: Where, labeled: bool) -> dict:
        required = ("context", "question", *ANSWER_FIELDS)
        record = _fields(raw, path, where, (*required, "label") if labeled else required)
        for key in required:
            if not isinstance(record[key], str):
                raise BadInput(f"'{key}' must be a string, got {_json_type(record[key])}", path, where)
        for key in ("context", "question"):
            if not record[key].strip():
                raise BadInput(f"'{key}' is empty", path, where)
        label = record.get("label")
        if label is not None and label != "":
            label = _answer_index(label, path, where)
        elif labeled:
            raise BadInput("'label' is empty", path, where)
        else:
            label = None
        return {"id": record.get("id"), "context": record["context"], "question": record["question"],
                "answers": [record[key] for key in ANSWER_FIELDS], "label": label}

    def gold(self, record: dict) -> list[str]:
        return [] if record["label"] is None else [str(record["label"])]

    def has_gold(self, record: dict) -> bool:
        return record["label"] is not None

    # ------------------------------------------------------------ model side

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        """`input_ids`: one sequence per candidate (context, question, answer; longest-first
        truncation); `labels`: the gold answer index (ignored in the loss when there is none).
        There are no entity markers: `marker_style` does not apply."""
        separator = LAYOUT_SEPARATORS[self.layout]
        context = encoding.text_pieces(tokenizer, record["context"])
        question = encoding.text_pieces(tokenizer, record["question"])
        template = encoding.pair_template(tokenizer)  # one tokenizer call per record, not per candidate
        candidates = [encoding.encode_segments(tokenizer, [context, question, encoding.text_pieces(tokenizer, answer)],
                                               max_length, separator, template)["input_ids"]
                      for answer in record["answers"]]
        label = record["label"]
        return {"input_ids": candidates, "labels": encoding.IGNORE_INDEX if label is None else label,
                "gold": self.gold(record)}

    def build_head(self, hidden: int, n_labels: int) -> "nn.Module":
        from kadapter_cli.modeling.heads import ChoiceHead

        return ChoiceHead(hidden)

    def head_positions(self, batch: Batch) -> "torch.Tensor":
        """Only the first token (`<s>` / `[CLS]`) of each candidate."""
        import torch

        ids = batch["input_ids"]
        return torch.zeros((*ids.shape[:-1], 1), dtype=torch.long, device=ids.device)

    def run_head(self, head: "nn.Module", h: "torch.Tensor", batch: Batch) -> "torch.Tensor":
        return head(h[:, 0])  # (B·C, H) → (B·C,); the model restores (B, C)

    def loss(self, outputs: "torch.Tensor", batch: Batch) -> "torch.Tensor":
        """Cross-entropy of the softmax over each record's candidates."""
        import torch.nn.functional as F

        return F.cross_entropy(outputs.float(), batch["labels"], ignore_index=encoding.IGNORE_INDEX)

    def label_scores(self, prediction: Prediction, labels: Sequence[str]) -> dict[str, float]:
        """The answers' probabilities (a softmax over the candidates), by answer index."""
        return super().label_scores(prediction, [str(i) for i in range(len(prediction["scores"]))])

    def decode(self, outputs: "torch.Tensor", batch: Batch, labels: Sequence[str]) -> list[Prediction]:
        """`{"pred": [best answer index], "scores": the candidates' scores}` per record."""
        rows = outputs.float().tolist()
        return [{"pred": [str(argmax(row))], "scores": row} for row in rows]

    # ------------------------------------------------------------ scoring and predictions files

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        """`accuracy`: the share of records whose predicted answer is the gold one."""
        if len(gold) != len(pred):
            raise ValueError(f"{len(gold)} gold answers but {len(pred)} predictions")
        return {"accuracy": sum(list(g) == list(p) for g, p in zip(gold, pred)) / len(gold) if gold else 0.0}

    def score(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> dict[str, float]:
        labeled = [(e["gold"], p["pred"]) for e, p in zip(examples, predictions) if e["gold"]]
        return self.metrics([g for g, _ in labeled], [p for _, p in labeled]) if labeled else {}

    def write_predictions(self, folder: Path, split: str, predictions: Sequence[Prediction],
                          examples: Sequence[dict]) -> None:
        super().write_predictions(folder, split, predictions, examples)
        if not any(e["gold"] for e in examples):  # the leaderboard file: one label per line, input order
            text = "".join(f"{p['pred'][0]}\n" for p in predictions)
            (Path(folder) / f"predictions-{split}.lst").write_text(text, encoding="utf-8")


def _answer_index(label: Any, path: str | Path, where: Where) -> int:
    """A label "0".."3" or 0..3 as an int; `BadInput` otherwise."""
    if isinstance(label, bool) or not isinstance(label, (int, str)) or str(label).strip() not in map(str, range(CHOICES)):
        raise BadInput(f"'label' must be an answer index 0..{CHOICES - 1}, got {label!r}", path, where)
    return int(str(label).strip())


def iter_csv_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """`("line N", record)` of the authors' CSV; the header must be theirs (`label` may be absent,
    as in an unlabeled test file). N is the line the record starts on."""
    reader = csv.reader(line for _, line in iter_text_lines(path))
    try:
        header = next(reader)
    except StopIteration:
        raise BadInput("empty file", path) from None
    except csv.Error as e:
        raise BadInput(f"not valid CSV: {e}", path, "line 1") from None
    if tuple(header) not in (CSV_HEADER, CSV_HEADER[:-1]):
        raise BadInput(f"expected the CSV header {','.join(CSV_HEADER)}, got {','.join(header)}", path, "line 1")
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise BadInput(f"not valid CSV: {e}", path, f"line {start}") from None
        if row:
            if len(row) != len(header):
                raise BadInput(f"expected {len(header)} fields, got {len(row)}", path, f"line {start}")
            yield f"line {start}", dict(zip(header, row))
        start = reader.line_num + 1
