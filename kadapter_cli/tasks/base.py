"""What a downstream task is: how its data is read, labelled, encoded, predicted and scored.

A task is one module in `kadapter_cli/tasks/` holding a `Task` subclass decorated with
`@register_task`; the package finds it by itself (`discover_tasks`). Most tasks only choose a
family — `TypingTask` (a marked mention, multi-label) or `RelationTask` (a marked entity pair,
one label) — and set their name, label vocabulary, prediction rule and paper hyper-parameters.

Records are normalised on reading, so the rest of the pipeline sees one shape per family:
- typing: `{"sent", "start", "end", "labels"}` (character offsets, end exclusive);
- relation: `{"id", "tokens", "subj_start", "subj_end", "obj_start", "obj_end", "relation"}`
  (inclusive word spans).
Bad input is `BadInput` naming the file and the record (its 0-based index in a JSON list, the
same number as `index` in predictions files) or the line (JSON Lines).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from kadapter_cli import encoding, metrics
from kadapter_cli.artifacts import iter_jsonl, read_json
from kadapter_cli.errors import BadInput

SPLITS = ("train", "dev", "test")
LABELS_FILE = "labels.json"

Where = int | str  # a record index in a JSON list, or "line N" in JSON Lines


class Task:
    """A downstream task. Instances carry the task's options (`get_task(name, **options)`)."""

    name: ClassVar[str]
    head: ClassVar[str]  # "typing" | "relation": which head of `kadapter_cli.heads` it uses
    multilabel: ClassVar[bool]
    position_keys: ClassVar[tuple[str, ...]]  # encoded positions the head reads, in its argument order
    primary_metric: ClassVar[str]  # the dev metric that selects the checkpoint
    headline_metrics: ClassVar[tuple[str, ...]]  # what a results table shows, in the paper's order
    defaults: ClassVar[dict[str, Any]]  # paper hyper-parameters: lr, batch_size, epochs, max_length, warmup
    adapter_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # paper overrides per adapter set ("fac+lin")
    options: ClassVar[dict[str, Any]] = {}  # task-specific options and their defaults

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise BadInput(f"task '{self.name}' has no option {unknown[0]!r} (options: {known})")
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))

    # ------------------------------------------------------------ data

    def task_files(self, data_dir: str | Path) -> dict[str, Path]:
        """The split files of a data folder: `train.json`, `dev.json`, `test.json` (CONTRACT §1)."""
        return {split: Path(data_dir) / f"{split}.json" for split in SPLITS}

    def read(self, path: str | Path, labeled: bool = True) -> list[dict]:
        """Reads and validates a split file (a JSON list, or JSON Lines); `labeled=False` for `predict`
        inputs, whose records may lack gold labels."""
        records = [self.normalize(raw, path, where, labeled) for where, raw in iter_raw_records(path)]
        if not records:
            raise BadInput("no records", path)
        return records

    def normalize(self, raw: Any, path: str | Path, where: Where, labeled: bool) -> dict:
        """One validated record in the task family's shape; `BadInput` naming `path` and `where`."""
        raise NotImplementedError

    def prepare_train(self, records: list[dict]) -> list[dict]:
        """The training records actually used (a task may sub-sample); the default keeps them all."""
        return records

    def gold(self, record: dict) -> list[str]:
        """The record's gold labels as the list a predictions file holds."""
        raise NotImplementedError

    # ------------------------------------------------------------ labels

    def label_vocab(self, train_records: Sequence[dict], data_dir: str | Path | None = None) -> list[str]:
        """The label list (index = label id): `labels.json` in `data_dir` if present, else the task's rule."""
        if data_dir is not None and (Path(data_dir) / LABELS_FILE).is_file():
            return read_label_file(Path(data_dir) / LABELS_FILE)
        labels = self.default_labels(train_records)
        if not labels:
            raise BadInput(f"the training records carry no labels; give the label list in {LABELS_FILE}", data_dir)
        return labels

    def default_labels(self, train_records: Sequence[dict]) -> list[str]:
        """The label list when no `labels.json` is given."""
        raise NotImplementedError

    def check_labels(self, records: Sequence[dict], labels: Sequence[str], path: str | Path) -> None:
        """`BadInput` naming the file and record of the first gold label outside `labels`."""
        known = set(labels)
        for i, record in enumerate(records):
            for label in self.gold(record):
                if label not in known:
                    raise BadInput(f"label {label!r} is not one of the task's {len(known)} labels", path, i)

    # ------------------------------------------------------------ model side

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        """Features of one record: `input_ids`, the `position_keys`, `labels` (multi-hot list or class
        id) and `gold` (the label strings, for predictions files). `marker_style`: the model's
        adapters' (`kadapter_cli.encoding`). Run `check_labels` first: an unknown label here is a
        `KeyError`."""
        raise NotImplementedError

    def build_head(self, hidden: int, n_labels: int):
        """A new, randomly initialised head for `n_labels` labels on `hidden`-wide features."""
        from kadapter_cli import heads

        head_class = {"typing": heads.TypingHead, "relation": heads.RelationHead}[self.head]
        return head_class(hidden, n_labels)

    def loss(self, logits, labels):
        """Binary cross-entropy per label (multi-label) or cross-entropy over classes."""
        import torch.nn.functional as F

        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels, ignore_index=encoding.IGNORE_INDEX)

    def predict(self, logits, labels: Sequence[str]) -> list[list[str]]:
        """Label lists from a (batch, n_labels) array of logits (tensor or nested lists)."""
        rows = logits.tolist() if hasattr(logits, "tolist") else logits
        return [[labels[j] for j in self.predicted_ids(row)] for row in rows]

    def predicted_ids(self, row: Sequence[float]) -> list[int]:
        """The label ids predicted from one row of logits, in label order."""
        raise NotImplementedError

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        """CONTRACT §4 metrics of label lists."""
        raise NotImplementedError

    def defaults_for(self, adapters: Sequence[str] = ()) -> dict[str, Any]:
        """The paper's hyper-parameters for this task with the given adapters (none = the baseline)."""
        key = "+".join(sorted(adapters))
        return {**self.defaults, **self.adapter_defaults.get(key, {})}


# ---------------------------------------------------------------- families


class TypingTask(Task):
    """Entity typing: a mention marked `@ … @` in a sentence, multi-label (ERNIE JSON format)."""

    head = "typing"
    multilabel = True
    position_keys = ("mention_pos",)

    def normalize(self, raw: Any, path: str | Path, where: Where, labeled: bool) -> dict:
        record = _fields(raw, path, where, ("sent", "start", "end", "labels") if labeled else ("sent", "start", "end"))
        sent = _typed(record, "sent", str, path, where)
        start = _typed(record, "start", int, path, where)
        end = _typed(record, "end", int, path, where)
        if not 0 <= start < end <= len(sent):
            raise BadInput(
                f"mention offsets start={start}, end={end} are reversed or outside the sentence "
                f"({len(sent)} characters; end is exclusive)", path, where)
        if not sent[start:end].strip():
            raise BadInput(f"mention [{start}, {end}) is blank", path, where)
        labels = record.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BadInput("'labels' must be a list of strings", path, where)
        return {"sent": sent, "start": start, "end": end, "labels": list(labels)}

    def gold(self, record: dict) -> list[str]:
        return record["labels"]

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        features = encoding.encode_typing(tokenizer, record["sent"], record["start"], record["end"], max_length,
                                          marker_style)
        multi_hot = [0] * len(label_index)
        for label in record["labels"]:
            multi_hot[label_index[label]] = 1
        features["labels"] = multi_hot
        features["gold"] = list(record["labels"])
        return features

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        return metrics.entity_typing_metrics(gold, pred)


class RelationTask(Task):
    """Relation classification: subject `@ … @` and object `# … #` in a sentence, one label."""

    head = "relation"
    multilabel = False
    position_keys = ("subj_pos", "obj_pos")
    negative_label: ClassVar[str | None] = None  # the "no relation" label, if the task has one

    def normalize(self, raw: Any, path: str | Path, where: Where, labeled: bool) -> dict:
        if isinstance(raw, dict) and "token" not in raw and "tokens" in raw:
            raw = {**raw, "token": raw["tokens"]}  # the trex-rc spelling (and early TACRED samples)
        spans = ("subj_start", "subj_end", "obj_start", "obj_end")
        record = _fields(raw, path, where, ("token", *spans, "relation") if labeled else ("token", *spans))
        tokens = record["token"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise BadInput("'token' must be a non-empty list of strings", path, where)
        s0, s1, o0, o1 = (_typed(record, key, int, path, where) for key in spans)
        for name, (a, b) in (("subject", (s0, s1)), ("object", (o0, o1))):
            if not 0 <= a <= b < len(tokens):
                raise BadInput(
                    f"{name} span [{a}, {b}] is reversed or outside the {len(tokens)} tokens (inclusive indices)",
                    path, where)
        if s0 <= o1 and o0 <= s1:
            raise BadInput(f"subject span [{s0}, {s1}] and object span [{o0}, {o1}] overlap", path, where)
        relation = record.get("relation")
        if relation is not None and not isinstance(relation, str):
            raise BadInput(f"'relation' must be a string, got {type(relation).__name__}", path, where)
        return {"id": record.get("id"), "tokens": list(tokens), "subj_start": s0, "subj_end": s1,
                "obj_start": o0, "obj_end": o1, "relation": relation}

    def gold(self, record: dict) -> list[str]:
        return [] if record["relation"] is None else [record["relation"]]

    def default_labels(self, train_records: Sequence[dict]) -> list[str]:
        labels = {r["relation"] for r in train_records if r["relation"] is not None}
        if labels and self.negative_label is not None:
            labels.add(self.negative_label)
        return sorted(labels)

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        features = encoding.encode_relation(
            tokenizer, record["tokens"], (record["subj_start"], record["subj_end"]),
            (record["obj_start"], record["obj_end"]), max_length, marker_style)
        relation = record["relation"]
        features["labels"] = encoding.IGNORE_INDEX if relation is None else label_index[relation]
        features["gold"] = self.gold(record)
        return features

    def predicted_ids(self, row: Sequence[float]) -> list[int]:
        return [argmax(row)]

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        if self.negative_label is None:
            return metrics.classification_metrics(gold, pred)
        return metrics.relation_metrics(gold, pred, negative=self.negative_label)


# ---------------------------------------------------------------- registry


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: makes a `Task` subclass findable by its `name`."""
    for attribute in ("name", "head", "primary_metric", "defaults"):
        if not hasattr(cls, attribute):
            raise TypeError(f"task class {cls.__qualname__} has no '{attribute}'")
    if cls.head not in ("typing", "relation"):
        raise TypeError(f"task '{cls.name}': head must be 'typing' or 'relation', not {cls.head!r}")
    other = _REGISTRY.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"task name '{cls.name}' is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def discover_tasks(package: str) -> dict[str, type[Task]]:
    """Imports every module of `package` and returns the tasks they registered, by name."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{package}.{info.name}")
    prefix = package + "."
    return {name: cls for name, cls in sorted(_REGISTRY.items()) if cls.__module__.startswith(prefix)}


# ---------------------------------------------------------------- reading helpers


def detect_format(path: str | Path) -> str:
    """`"json"` (a JSON list), `"jsonl"`, or `"text"` from the first non-blank character; `BadInput`
    for a missing, unreadable or empty file."""
    path = Path(path)
    try:
        # Undecodable bytes only matter to the reader, which names their line; the format is in
        # the first character.
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            while chunk := f.read(4096):
                stripped = chunk.lstrip()
                if stripped:
                    return {"[": "json", "{": "jsonl"}.get(stripped[0], "text")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, expected a file", path) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None
    raise BadInput("empty file", path)


def iter_raw_records(path: str | Path) -> Iterator[tuple[Where, Any]]:
    """`(where, record)` from a JSON list (where = index) or JSON Lines (where = "line N")."""
    kind = detect_format(path)
    if kind == "jsonl":
        try:
            for lineno, record in iter_jsonl(path):
                yield f"line {lineno}", record
        except BadInput as e:
            if e.record == "line 1" and isinstance(_whole_json(path), dict):
                raise BadInput("expected a JSON list of records or JSON Lines, got one JSON object", path) from None
            raise
    elif kind == "json":
        data = read_json(path)
        if not isinstance(data, list):
            raise BadInput(f"expected a JSON list of records, got {type(data).__name__}", path)
        yield from enumerate(data)
    else:
        raise BadInput("expected a JSON list of records or JSON Lines", path)


def _whole_json(path: str | Path) -> Any:
    """The file parsed as one JSON value, or None when it is not one."""
    try:
        return read_json(path)
    except BadInput:
        return None


def read_label_file(path: Path) -> list[str]:
    """A `labels.json`: a JSON list of distinct, non-empty label strings."""
    labels = read_json(path)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise BadInput("expected a non-empty JSON list of label strings", path)
    seen = set()
    for i, label in enumerate(labels):
        if label in seen:
            raise BadInput(f"label {label!r} is listed twice", path, i)
        seen.add(label)
    return labels


def _fields(raw: Any, path: str | Path, where: Where, required: Sequence[str]) -> dict:
    if not isinstance(raw, dict):
        raise BadInput(f"expected a JSON object, got {_json_type(raw)}", path, where)
    for key in required:
        if key not in raw:
            raise BadInput(f"missing field '{key}'", path, where)
    return raw


def _typed(record: dict, key: str, kind: type, path: str | Path, where: Where) -> Any:
    value = record[key]
    # bool is an int subclass in Python, but `true` is never a valid offset.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(f"'{key}' must be {'an integer' if kind is int else 'a string'}, got {_json_type(value)}",
                       path, where)
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)

