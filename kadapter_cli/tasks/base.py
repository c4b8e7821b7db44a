"""What a downstream task is: how its data is read, encoded, batched, scored by its head, decoded and
evaluated.

A task is one module in `kadapter_cli/tasks/` holding a `Task` subclass decorated with
`@register_task`; the package finds it by itself (`discover_tasks`). The task owns every step
between its records and its metrics — the model only supplies fused features:

    read → normalize → examples/encode (features) → collate (batch) → head_positions → [model body]
    → run_head (outputs) → loss / decode (predictions) → score, write_predictions

The defaults of `Task` serve a head that reads a few marked positions of one sequence per example;
a task overrides what differs. Candidates (multiple choice) are a first-class dimension: an
example's `input_ids` may be a list of C sequences, `collate` pads them to (B, C, L), the model
flattens them to (B·C, L) for the body and the head, and gives the head's outputs back as (B, C, …).
A task may have no label vocabulary at all (`label_vocab` returns `[]`): extractive QA and multiple
choice predict spans and answer indices. Predictions are plain dicts (`{"pred": [labels], "scores":
…}` at least) and the task decides what a predictions file holds (`prediction_lines`).

The classification families choose a head and a prediction rule and set their name, label
vocabulary and paper hyper-parameters — `TypingTask` (a marked mention, multi-label) or
`RelationTask` (a marked entity pair, one label). Their records are normalised on reading:
- typing: `{"sent", "start", "end", "labels"}` (character offsets, end exclusive);
- relation: `{"id", "tokens", "subj_start", "subj_end", "obj_start", "obj_end", "relation"}`
  (inclusive word spans).
Bad input is `BadInput` naming the file and the record: its line in JSON Lines and CSV (`line 5`,
counted from 1 as editors count), its index in a JSON list (`record 4 (counted from 0)`, the same
number as `index` in predictions files). Records remember where they were read (`Record.where`),
so an error found after reading (an unknown label, a mention the tokenizer cannot encode) names
the record the same way the reader would.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Sequence

from kadapter_cli.artifacts.io import iter_jsonl, iter_text_lines, read_json, write_jsonl
from kadapter_cli.artifacts.layout import data_name
from kadapter_cli.data import encoding
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.tasks import metrics

if TYPE_CHECKING:  # torch is imported inside methods: importing the registry stays cheap
    import torch
    from torch import nn

SPLITS = ("train", "dev", "test")
LABELS_FILE = "labels.json"
# Sequences of up to 256 tokens through roberta-large trained, with two frozen adapters, in fp32
# with AdamW states: about 15 GB at 8 a micro-batch.
DEFAULT_MICRO_BATCH = 8

Where = int | str  # a record index in a JSON list, or "line N" in JSON Lines and CSV
IN_MEMORY = "<records>"  # what errors name as the "file" of records given in memory (`read_records`)
Batch = dict[str, Any]
Prediction = dict[str, Any]  # at least {"pred": [labels as strings]}; plain Python values only


class Record(dict):
    """A normalised record that remembers where it was read (`where`), for errors found later. It
    compares, copies into a plain dict (`{**record}`) and serialises as the dict it is."""

    where: Where | None = None


def located(record: dict, where: Where) -> Record:
    """`record` as a `Record` read at `where`."""
    out = record if isinstance(record, Record) else Record(record)
    out.where = where
    return out


def where_of(record: dict, index: int) -> Where:
    """Where `record` was read; records made in memory (no `where`) are named by their `index`."""
    where = getattr(record, "where", None)
    return index if where is None else where


@dataclass(frozen=True)
class TaskOption:
    """A task-specific option: its default, one line of help, and the values it accepts.

    Set from the command line as `--task-option key=value` (the value read as YAML: `44999`,
    `null`, `true`, `original`), from a `--config` file or a pipeline stage the same way, or in
    Python as `get_task(name, key=value)`.
    """

    default: Any
    help: str
    kind: type | tuple[type, ...] | None = None  # accepted type(s); None is accepted when the default is None
    choices: tuple[Any, ...] | None = None

    def check(self, task: str, key: str, value: Any) -> Any:
        if self.choices is not None and value not in self.choices:
            raise BadInput(f"task option {key} of '{task}' must be one of "
                           f"{', '.join(map(str, self.choices))}, got {value!r}")
        if self.kind is not None and not (value is None and self.default is None):
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join(k.__name__ for k in kinds) + (" or null" if self.default is None else "")
                raise BadInput(f"task option {key} of '{task}' must be {names}, got {value!r}")
        return value


class Task:
    """A downstream task. Instances carry the task's options (`get_task(name, **options)`)."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]  # the dev metric that selects the checkpoint
    headline_metrics: ClassVar[tuple[str, ...]]  # what a results table shows, in the paper's order
    # Paper hyper-parameters: lr, batch_size (effective), epochs, max_length, warmup; micro_batch_size
    # is what fits one 24 GB GPU with roberta-large trained (DEFAULT_MICRO_BATCH when not given).
    defaults: ClassVar[dict[str, Any]]
    adapter_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # paper overrides per adapter set ("fac+lin")
    options: ClassVar[dict[str, TaskOption]] = {}  # task-specific options
    # Encoded positions the head reads, in its argument order; the model then computes only those
    # rows of the fused features (adapters' last layers, fusion). () = the head reads every position.
    position_keys: ClassVar[tuple[str, ...]] = ()
    test_labels_optional: ClassVar[bool] = False  # the test split may come without labels (a leaderboard's)
    # What the model does, as a Hugging Face Hub task id: the model card's `pipeline_tag` and
    # `model-index` task type ("question-answering" for span extraction, "multiple-choice", ...).
    hub_task: ClassVar[str] = "text-classification"
    # One unlabeled record of the task's format, as `predict` (and `KAdapterForTask.predict`) takes
    # it: the model card's snippet shows it, and a test runs that snippet.
    example_records: ClassVar[list[dict]] = []

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise BadInput(f"task '{self.name}' has no option {unknown[0]!r} (options: {known})")
        for key, option in self.options.items():
            setattr(self, key, option.check(self.name, key, options.get(key, option.default)))

    def option_values(self) -> dict[str, Any]:
        """The task's options as set (saved with a finetuned model, so loading restores them)."""
        return {key: getattr(self, key) for key in self.options}

    def defaults_for(self, adapters: Sequence[str] = ()) -> dict[str, Any]:
        """The paper's hyper-parameters for this task with the given adapters (none = the baseline)."""
        key = "+".join(sorted(adapters))
        return {"micro_batch_size": DEFAULT_MICRO_BATCH, **self.defaults, **self.adapter_defaults.get(key, {})}

    # ------------------------------------------------------------ data

    def task_files(self, data_dir: str | Path) -> dict[str, Path]:
        """The split files of a data folder: `train.json`, `dev.json`, `test.json`."""
        return {split: Path(data_dir) / f"{split}.json" for split in SPLITS}

    def input_files(self, path: str | Path) -> list[Path]:
        """Every file `read(path)` reads (hashed into manifests): the split file itself by default."""
        return [Path(path)]

    def read(self, path: str | Path, labeled: bool = True) -> list[dict]:
        """Reads and validates a split file (a JSON list, or JSON Lines); `labeled=False` for `predict`
        inputs, whose records may lack gold labels."""
        records = [located(self.normalize(raw, path, where, labeled), where) for where, raw in iter_raw_records(path)]
        if not records:
            raise BadInput("no records", path)
        return records

    def read_records(self, records: Sequence[Any], labeled: bool = True) -> list[dict]:
        """Records given in memory — what a JSON list file of the task's format holds, as Python
        values — validated as `read` validates a file's; errors name `<records>` and the record's
        index. `kadapter predict` on a file and `KAdapterForTask.predict` on its records agree."""
        normalized = [self.normalize(raw, IN_MEMORY, i, labeled) for i, raw in enumerate(records)]
        if not normalized:
            raise BadInput("no records", IN_MEMORY)
        return normalized

    def normalize(self, raw: Any, path: str | Path, where: Where, labeled: bool) -> dict:
        """One validated record in the task's shape; `BadInput` naming `path` and `where`."""
        raise NotImplementedError

    def read_stats(self) -> dict[str, Any]:
        """What reading the splits counted (e.g. bad records skipped), for the finetuned and evaluation manifests."""
        return {}

    def read_notes(self, path: str | Path, training: bool = False) -> list[str]:
        """Lines for the user about what reading `path` counted (`read_stats`, per file); `training`:
        it is the training split of a fine-tuning run. None by default."""
        return []

    def prepare_train(self, records: list[dict]) -> list[dict]:
        """The training records actually used (a task may sub-sample); the default keeps them all."""
        return records

    def gold(self, record: dict) -> list[str]:
        """The record's gold labels as the list a predictions file holds ([] when it has none)."""
        raise NotImplementedError

    def has_gold(self, record: dict) -> bool:
        """Whether the record carries its gold answer (an unlabeled test record does not)."""
        return True

    # ------------------------------------------------------------ labels

    def label_set(self, train_records: Sequence[dict], data_dir: str | Path | None = None,
                  labels: str | Path | None = None) -> "LabelSet":
        """The label list and where it comes from (`labels`: a labels file); an empty set for a
        task without a label vocabulary, which refuses a labels file."""
        if labels is not None:
            raise BadParameter("task '{task}' has no label set: {labels} does not apply to it", value=labels,
                               task=self.name)
        return LabelSet([], "", benchmark=True)

    def run_data_name(self, data_dir: str | Path, labels: str | Path | None = None) -> str:
        """What a run's default name calls its data (`artifacts.layout.finetuned_run_name`): the
        task's name for the benchmark's data; a task with a label set also tells your own data
        (`ClassificationTask.run_data_name`)."""
        return self.name

    def label_vocab(self, train_records: Sequence[dict], data_dir: str | Path | None = None) -> list[str]:
        """The label list (index = label id); `[]` for a task without a label vocabulary."""
        return list(self.label_set(train_records, data_dir).labels)

    def check_labels(self, records: Sequence[dict], labels: "Sequence[str] | LabelSet", path: str | Path) -> None:
        """`BadInput` naming the file and record of the first gold label outside `labels`."""

    def without_unknown_labels(self, record: dict, label_index: dict[str, int]) -> dict:
        """The record with gold labels the model never saw removed (prediction inputs may carry them)."""
        return record

    # ------------------------------------------------------------ model side

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        """Features of one record: `input_ids` (one id list, or C of them for C candidates), the
        `position_keys`, `labels` (the training target, if any) and `gold` (the label strings, for
        predictions files). `marker_style`: how the model's adapters learned entity markers
        (`kadapter_cli.data.encoding`; tasks without markers ignore it). Run `check_labels` first: an
        unknown label here is a `KeyError`."""
        raise NotImplementedError

    def examples(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
                 marker_style: str = encoding.SPACED_MARKERS) -> list[dict]:
        """The model's examples for one record: by default the one `encode` makes. A task may make
        several (e.g. windows over a long paragraph); the caller tags each with `record`, the
        record's index, so that `score` and `prediction_lines` can group them back."""
        return [self.encode(tokenizer, record, label_index, max_length, marker_style)]

    def length(self, example: dict) -> int:
        """Tokens the model reads for the example (length bucketing, tokens/s): all candidates'."""
        from kadapter_cli.data.padding import is_choices

        ids = example["input_ids"]
        return sum(len(seq) for seq in ids) if is_choices(ids) else len(ids)

    def collate(self, examples: Sequence[dict], pad_id: int, pad_to: int | None = None) -> Batch:
        """A batch padded to its longest sequence (or to `pad_to`, for adapters that attend to
        padding): `input_ids`/`attention_mask` (B, L) or (B, C, L), each of `position_keys` (B,) or
        (B, C), and `labels` when the examples have them."""
        import torch

        from kadapter_cli.data.padding import is_choices, pad_choices, pad_ids

        seqs = [e["input_ids"] for e in examples]
        ids, mask = (pad_choices if is_choices(seqs[0]) else pad_ids)(seqs, pad_id, pad_to)
        batch: Batch = {"input_ids": ids, "attention_mask": mask}
        for key in self.position_keys:
            batch[key] = torch.tensor([e[key] for e in examples])
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples])
        return batch

    def build_head(self, hidden: int, n_labels: int) -> "nn.Module":
        """A new, randomly initialised head on `hidden`-wide features (`n_labels` = 0 without a vocabulary)."""
        raise NotImplementedError

    def head_positions(self, batch: Batch) -> "torch.Tensor | None":
        """The positions the head reads, (B, P) or (B, C, P), or None for every position."""
        import torch

        if not self.position_keys:
            return None
        return torch.stack([batch[k] for k in self.position_keys], dim=-1).long()

    def run_head(self, head: "nn.Module", h: "torch.Tensor", batch: Batch) -> Any:
        """The head's outputs on fused features `h`, candidates flattened: (N, P, H) at the
        `head_positions` (row i holds position i), or (N, L, H) without them. The model gives the
        result back with the candidate dimension restored."""
        import torch

        if not self.position_keys:
            return head(h)
        rows = [torch.full((h.shape[0],), i, dtype=torch.long, device=h.device) for i in range(h.shape[1])]
        return head(h, *rows)

    def loss(self, outputs: Any, batch: Batch) -> "torch.Tensor":
        """The mean training loss of the head's outputs on the batch."""
        raise NotImplementedError

    def decode(self, outputs: Any, batch: Batch, labels: Sequence[str]) -> list[Prediction]:
        """One prediction per example of the batch, as plain Python values."""
        raise NotImplementedError

    # ------------------------------------------------------------ scoring and predictions files

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        """The task's metrics (`kadapter_cli/tasks/metrics.py`) of label lists."""
        raise NotImplementedError

    def score(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> dict[str, float]:
        """Metrics of a split's predictions (input order) against its encoded examples."""
        return self.metrics([e["gold"] for e in examples], [p["pred"] for p in predictions])

    def label_scores(self, prediction: Prediction, labels: Sequence[str]) -> dict[str, float]:
        """Each label's probability from the head's `scores` (one per label): a softmax over them,
        for a task that predicts one label per record."""
        return dict(zip(labels, softmax(prediction["scores"])))

    def prediction_lines(self, predictions: Sequence[Prediction], examples: Sequence[dict]) -> list[dict]:
        """The lines of a predictions file, one per input record, in input order; by default one
        example is one record."""
        return [{"index": i, "gold": list(e.get("gold", [])), "pred": list(p["pred"])}
                for i, (e, p) in enumerate(zip(examples, predictions))]

    def scored_lines(self, lines: list[dict], predictions: Sequence[Prediction], examples: Sequence[dict],
                     labels: Sequence[str], scores: str) -> list[dict]:
        """Predictions lines with `"scores": {label: probability}` (`predict`/`evaluate --scores`): of
        each line's predicted labels (`scores="predicted"`, as Hugging Face pipelines give `score`) or
        of every label (`"all"`); `"none"` leaves the lines as they are. By default one prediction
        is one line; a task whose records make several examples overrides this."""
        if scores == "none":
            return lines
        if len(lines) != len(predictions):
            raise BadParameter("{scores}: task {task} does not give one prediction per record", scores, task=self.name)
        out = []
        for line, prediction in zip(lines, predictions):
            probabilities = self.label_scores(prediction, labels)
            keep = probabilities if scores == "all" else {k: probabilities[k] for k in line["pred"]}
            out.append({**line, "scores": {k: round(v, 6) for k, v in keep.items()}})
        return out

    def write_predictions(self, folder: Path, split: str, predictions: Sequence[Prediction],
                          examples: Sequence[dict]) -> None:
        """`predictions-<split>.jsonl` in `folder` (a task may add files, e.g. a leaderboard's)."""
        write_jsonl(Path(folder) / f"predictions-{split}.jsonl", self.prediction_lines(predictions, examples))


# ---------------------------------------------------------------- classification over a label vocabulary


class ClassificationTask(Task):
    """A head with one logit per label of a closed vocabulary; single- or multi-label."""

    multilabel: ClassVar[bool]
    # The benchmark's closed label set, when it has one. Data is taken for the benchmark's only when it
    # is recognisably so (`benchmark_reason`); otherwise, your own data, its labels are read from the
    # training split (`label_set`, docs/tasks.md).
    benchmark_labels: ClassVar[tuple[str, ...] | None] = None
    # Whether the benchmark's label names are its own, so that training labels all among them
    # identify its data (TACRED's `per:title`, FIGER's `/person/artist`: a sample of the benchmark
    # rarely holds them all). False for plain words (OpenEntity's person, location): data of your
    # own may use a few of them, so the training split must use every one.
    distinctive_labels: ClassVar[bool] = False

    def label_set(self, train_records: Sequence[dict], data_dir: str | Path | None = None,
                  labels: str | Path | None = None) -> "LabelSet":
        """The label list (index = label id), from the first of:

        1. `labels`, a labels file (`finetune --labels FILE`: a JSON list, or one label a line), or
           the word `benchmark` (and no such file): the benchmark's list, the data taken for its;
        2. `labels.json` in `data_dir`;
        3. the benchmark's list (`benchmark_label_set`) when the data is recognisably the
           benchmark's (`benchmark_reason`);
        4. otherwise the labels of the training split, sorted (`own_labels`): your own data.

        With a file the data is the benchmark's when the file's labels are all the benchmark's and
        the data is recognisably its. The set's `note` says why it was chosen and how to choose
        the other, where a user could mean the other.
        """
        if labels is not None and str(labels) == BENCHMARK_KEYWORD and not Path(labels).exists():
            return self.asked_benchmark_label_set(self.training_labels(train_records))
        given = None if labels is None else Path(labels)
        if given is None and data_dir is not None and (Path(data_dir) / LABELS_FILE).is_file():
            given = Path(data_dir) / LABELS_FILE
        if given is not None:
            from_file = read_label_file(given)
            benchmark = self.is_benchmark(from_file) and \
                self.benchmark_reason(self.training_labels(train_records), data_dir) is not None
            return LabelSet(from_file, f"from {given}", benchmark, fix=f"add it to {given}")
        seen = self.training_labels(train_records)
        if not seen:
            raise BadInput(ParamText("the training records carry no labels; list the labels in a file (a JSON list, "
                                     "or one label a line) and pass {labels} FILE, or save it as {file} in the "
                                     "data folder", file=LABELS_FILE), data_dir)
        return self.inferred_label_set(seen, data_dir)

    def inferred_label_set(self, seen: list[str], data_dir: str | Path | None = None) -> "LabelSet":
        """The label set when no labels file is given (`seen`: the training labels, sorted): the
        benchmark's when the data is recognisably the benchmark's, else your own."""
        reason = self.benchmark_reason(seen, data_dir)
        if reason is not None:
            chosen = self.benchmark_label_set(seen)
            note = (f"the data is taken for the {self.name} benchmark's ({_literal(reason)}); for labels of your own, "
                    "list them in a file (a JSON list, or one label a line) and pass {labels} FILE")
            return LabelSet(chosen.labels, chosen.origin, True, chosen.fix, note=note)
        note = ""
        if self.is_benchmark(seen):  # a part of the benchmark's labels: say so, and how to get them all
            assert self.benchmark_labels is not None
            where = "" if data_dir is None else f", in a folder not named {self.name}"
            note = (f"they are all {self.name} benchmark labels, but the data is not taken for the benchmark's "
                    f"(the training split uses {len(set(seen))} of its {len(self.benchmark_labels)} labels{where}); "
                    f"for the benchmark's labels, and a run and card named after it, pass {{labels}} "
                    f"{BENCHMARK_KEYWORD}")
        return LabelSet(self.own_labels(seen), "from the training split", benchmark=False, fix=OWN_LABELS_FIX,
                        note=note)

    def benchmark_reason(self, seen: Sequence[str], data_dir: str | Path | None = None) -> str | None:
        """Why data whose training labels are `seen` is the benchmark's (words a run prints), or None
        when it is not recognisably so. Its labels must all be the benchmark's, and either its folder
        is named after the task (`OpenEntity/` too), or the labels identify the benchmark: they are
        its own names (`distinctive_labels`), or the training split uses every one of them."""
        if not seen or not self.is_benchmark(seen):
            return None
        assert self.benchmark_labels is not None
        if data_dir is not None and data_name(data_dir).lower() == self.name:
            return f"its folder is named {data_name(data_dir)}"
        if self.distinctive_labels:
            return f"every training label is one of its {len(self.benchmark_labels)} own label names"
        if set(seen) == set(self.benchmark_labels):
            return f"the training split uses all {len(self.benchmark_labels)} of its labels"
        return None

    def asked_benchmark_label_set(self, seen: list[str]) -> "LabelSet":
        """`labels` = `benchmark`: the benchmark's label set, asked for (a training label outside it
        is then refused by `check_labels`, with this set's fix)."""
        if self.benchmark_labels is None:
            raise BadParameter("{labels} benchmark: the {task} task has no benchmark label set; pass a labels file "
                               "(a JSON list, or one label a line), or leave {labels} out to read the labels from "
                               "the training split", value=BENCHMARK_KEYWORD, task=self.name)
        chosen = self.benchmark_label_set([label for label in seen if label in self.benchmark_labels])
        return LabelSet(chosen.labels, chosen.origin, True,
                        fix=f"it was asked for with {{labels}} {BENCHMARK_KEYWORD}; leave that out to read your own "
                            "labels from the training split",
                        note=f"the data is taken for the {self.name} benchmark's, as asked ({{labels}} "
                             f"{BENCHMARK_KEYWORD})")

    def run_data_name(self, data_dir: str | Path, labels: str | Path | None = None) -> str:
        """The task's name when the data is the benchmark's (`label_set` decides), else the data
        folder's name (`data_name`): your own data. A folder named after the task is named without
        reading records, and so is one without a training split yet (a pipeline planning ahead):
        the task's name, as before there were own labels."""
        folder = data_name(data_dir)
        if folder == self.name:
            return folder
        train = self.task_files(data_dir)["train"]
        if not train.exists():
            return self.name
        return self.name if self.label_set(self.read(train), data_dir, labels).benchmark else folder

    def training_labels(self, train_records: Sequence[dict]) -> list[str]:
        """The distinct gold labels of the training records, sorted."""
        return sorted({label for record in train_records for label in self.gold(record)})

    def is_benchmark(self, labels: Iterable[str]) -> bool:
        """Whether these labels are all the benchmark's (False for a task without a closed set)."""
        return self.benchmark_labels is not None and set(labels) <= set(self.benchmark_labels)

    def benchmark_label_set(self, seen: list[str]) -> "LabelSet":
        """The labels of the benchmark's data (`seen`: its training labels): its closed set, in its order."""
        return LabelSet(list(self.benchmark_labels or seen), f"of the {self.name} benchmark", benchmark=True,
                        fix=BENCHMARK_FIX)

    def own_labels(self, seen: list[str]) -> list[str]:
        """The label list of your own data, from its training labels `seen` (sorted): those labels."""
        return list(seen)

    def default_labels(self, train_records: Sequence[dict], data_dir: str | Path | None = None) -> list[str]:
        """The label list when no labels file is given; [] when the training records carry no labels."""
        seen = self.training_labels(train_records)
        return list(self.inferred_label_set(seen, data_dir).labels) if seen else []

    def check_labels(self, records: Sequence[dict], labels: "Sequence[str] | LabelSet", path: str | Path) -> None:
        """`BadInput` naming the file and record of the first gold label outside `labels`; with a
        `LabelSet`, the message lists the labels, says where they came from and how to change them."""
        label_set = labels if isinstance(labels, LabelSet) else LabelSet(list(labels), "of the task", self.is_benchmark(labels))
        known = set(label_set.labels)
        for i, record in enumerate(records):
            for label in self.gold(record):
                if label not in known:
                    raise BadInput(label_set.unknown(label), path, where_of(record, i))

    def loss(self, outputs: "torch.Tensor", batch: Batch) -> "torch.Tensor":
        """Binary cross-entropy per label (multi-label) or cross-entropy over classes."""
        import torch.nn.functional as F

        logits, labels = outputs.float(), batch["labels"]
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels, ignore_index=encoding.IGNORE_INDEX)

    def decode(self, outputs: "torch.Tensor", batch: Batch, labels: Sequence[str]) -> list[Prediction]:
        """`{"pred": labels, "scores": the logits in label order}` per example."""
        rows = outputs.float().tolist()
        return [{"pred": pred, "scores": row} for pred, row in zip(self.predict(rows, labels), rows)]

    def label_scores(self, prediction: Prediction, labels: Sequence[str]) -> dict[str, float]:
        """Multi-label: each label's own probability (the sigmoid of its logit); else a softmax."""
        if self.multilabel:
            return {label: 1.0 / (1.0 + math.exp(-logit)) for label, logit in zip(labels, prediction["scores"])}
        return super().label_scores(prediction, labels)

    def predict(self, logits, labels: Sequence[str]) -> list[list[str]]:
        """Label lists from a (batch, n_labels) array of logits (tensor or nested lists)."""
        rows = logits.tolist() if hasattr(logits, "tolist") else logits
        return [[labels[j] for j in self.predicted_ids(row)] for row in rows]

    def predicted_ids(self, row: Sequence[float]) -> list[int]:
        """The label ids predicted from one row of logits, in label order."""
        raise NotImplementedError


class TypingTask(ClassificationTask):
    """Entity typing: a mention marked `@ … @` in a sentence, multi-label (ERNIE JSON format)."""

    multilabel = True
    position_keys = ("mention_pos",)
    example_records = [{"sent": "Paris is the capital of France .", "start": 0, "end": 5}]

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
        cut = cut_word(sent, start, end)
        if cut:
            raise BadInput(f"mention [{start}, {end}) {sent[start:end]!r} {cut}: start and end are character offsets "
                           "into 'sent', end exclusive (the offset just after the mention's last character)",
                           path, where)
        labels = record.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BadInput("'labels' must be a list of strings", path, where)
        return {"sent": sent, "start": start, "end": end, "labels": list(labels)}

    def gold(self, record: dict) -> list[str]:
        return record["labels"]

    def without_unknown_labels(self, record: dict, label_index: dict[str, int]) -> dict:
        return {**record, "labels": [g for g in record["labels"] if g in label_index]}

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

    def build_head(self, hidden: int, n_labels: int) -> "nn.Module":
        from kadapter_cli.modeling.heads import TypingHead

        return TypingHead(hidden, n_labels)

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        return metrics.entity_typing_metrics(gold, pred)


class RelationTask(ClassificationTask):
    """Relation classification: subject `@ … @` and object `# … #` in a sentence, one label."""

    multilabel = False
    position_keys = ("subj_pos", "obj_pos")
    example_records = [{"token": ["Paris", "is", "the", "capital", "of", "France", "."], "subj_start": 5,
                        "subj_end": 5, "obj_start": 0, "obj_end": 0}]
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

    def without_unknown_labels(self, record: dict, label_index: dict[str, int]) -> dict:
        return {**record, "relation": record["relation"] if record["relation"] in label_index else None}

    def own_labels(self, seen: list[str]) -> list[str]:
        """The training relations, with the negative label (if the task has one) added, sorted."""
        return sorted({*seen, self.negative_label} if self.negative_label is not None else seen)

    def encode(self, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
               marker_style: str = encoding.SPACED_MARKERS) -> dict[str, Any]:
        features = encoding.encode_relation(
            tokenizer, record["tokens"], (record["subj_start"], record["subj_end"]),
            (record["obj_start"], record["obj_end"]), max_length, marker_style)
        relation = record["relation"]
        features["labels"] = encoding.IGNORE_INDEX if relation is None else label_index[relation]
        features["gold"] = self.gold(record)
        return features

    def build_head(self, hidden: int, n_labels: int) -> "nn.Module":
        from kadapter_cli.modeling.heads import RelationHead

        return RelationHead(hidden, n_labels)

    def predicted_ids(self, row: Sequence[float]) -> list[int]:
        return [argmax(row)]

    def metrics(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
        if self.negative_label is None:
            return metrics.classification_metrics(gold, pred)
        return metrics.relation_metrics(gold, pred, negative=self.negative_label)


# ---------------------------------------------------------------- task options from text


def parse_task_options(task_class: type[Task], assignments: Iterable[str]) -> dict[str, Any]:
    """`["max_negatives=44999", "layout=original"]` → `{"max_negatives": 44999, "layout": "original"}`.

    Each value is read as YAML (numbers, `null`, `true`/`false`, or a plain string); the names must
    be the task's options. The task checks the values when it is built (`get_task`).
    """
    import yaml

    options: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise BadParameter("{task_option} must be key=value, got {value!r}", item)
        if key not in task_class.options:
            known = ", ".join(sorted(task_class.options)) or "none"
            raise BadInput(f"task '{task_class.name}' has no option {key!r} (options: {known})")
        try:
            options[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            options[key] = text
    return options


# ---------------------------------------------------------------- registry


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: makes a `Task` subclass findable by its `name`."""
    for attribute in ("name", "primary_metric", "headline_metrics", "defaults"):
        if not hasattr(cls, attribute):
            raise TypeError(f"task class {cls.__qualname__} has no '{attribute}'")
    for key, option in cls.options.items():
        if not isinstance(option, TaskOption):
            raise TypeError(f"task '{cls.name}': option {key!r} must be a TaskOption, not {type(option).__name__}")
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
        first = True
        try:
            for lineno, record in iter_jsonl(path):
                first = False
                yield f"line {lineno}", record
        except BadInput:
            # The first record does not parse: perhaps the file is one (indented) JSON object. Only
            # then is the whole file read again, never for a bad line further into a large file.
            if first and isinstance(_whole_json(path), dict):
                raise BadInput("expected a JSON list of records or JSON Lines, got one JSON object", path) from None
            raise
    elif kind == "json":
        yield from enumerate(read_json(path))  # a list: the file's first character is "["
    else:
        raise BadInput("expected a JSON list of records or JSON Lines", path)


def _whole_json(path: str | Path) -> Any:
    """The file parsed as one JSON value, or None when it is not one."""
    try:
        return read_json(path)
    except BadInput:
        return None


# ---------------------------------------------------------------- label sets

OWN_LABELS_FIX = ("if it is right, list every label in a file (a JSON list, or one label a line) and pass "
                  "{labels} FILE")
BENCHMARK_FIX = ("the data is taken for the benchmark's, so its label set is used; for labels of your own, "
                 "list them in a file (a JSON list, or one label a line) and pass {labels} FILE")
# `finetune --labels benchmark`: the benchmark's label set, asked for (a file of that name wins).
BENCHMARK_KEYWORD = "benchmark"


@dataclass(frozen=True)
class LabelSet:
    """A task's label list (index = label id), where it comes from (`origin`, words after "the N
    labels": "from the training split", "of the openentity benchmark", "from labels.txt"), whether
    it is the benchmark's (then the data is taken to be the benchmark's: the run is named after the
    task and its card names the benchmark), and how to give other labels (`fix`, a `ParamText`
    template)."""

    labels: list[str]
    origin: str
    benchmark: bool
    fix: str = ""
    # Why this set was chosen and how to choose the other, where a user could mean the other (a
    # `ParamText` template; "" when there is nothing to say): a run prints it after `describe()`.
    note: str = ""

    def describe(self) -> str:
        """`labels: 3 from the training split (disease, drug, gene)`: what a run says it uses."""
        return f"labels: {len(self.labels)} {self.origin} ({listed(self.labels)})"

    def notice(self) -> ParamText | None:
        """`note` as a message (`labels: …` then this line), or None."""
        return ParamText(self.note) if self.note else None

    def unknown(self, label: str) -> ParamText:
        """The message for a gold label outside the set: the labels, their origin, the fix."""
        return ParamText("label {label!r} is not one of the {count} labels {origin} ({known})"
                         + (f"; {self.fix}" if self.fix else ""),
                         label=label, count=len(self.labels), origin=self.origin, known=listed(self.labels))


def _literal(text: str) -> str:
    """`text` inside a `ParamText` template, as it is (a folder name may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")


def listed(labels: Sequence[str], most: int = 12) -> str:
    """`a, b, c`, or the first `most` and how many more."""
    shown = ", ".join(labels[:most])
    return shown if len(labels) <= most else f"{shown}, … {len(labels) - most} more"


def read_label_file(path: Path) -> list[str]:
    """A labels file: a JSON list of distinct, non-empty label strings (`labels.json`), or text with
    one label a line (blank lines skipped, spaces around a label dropped)."""
    if detect_format(path) == "json":
        labels = read_json(path)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise BadInput("expected a non-empty JSON list of label strings", path)
        located_labels: list[tuple[Where, str]] = list(enumerate(labels))
    elif Path(path).suffix.lower() == ".json":
        raise BadInput("expected a non-empty JSON list of label strings", path)
    else:
        located_labels = [(f"line {n}", line.strip()) for n, line in iter_text_lines(path) if line.strip()]
    seen: set[str] = set()
    for where, label in located_labels:
        if label in seen:
            raise BadInput(f"label {label!r} is listed twice", path, where)
        seen.add(label)
    return [label for _, label in located_labels]


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


# Scripts written without spaces between words: there a mention may end inside a run of letters.
_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _in_word(a: str, b: str) -> bool:
    """Whether the boundary between characters `a` and `b` falls inside a word of a spaced script."""
    import unicodedata

    return a.isalnum() and b.isalnum() and not any(
        unicodedata.name(c, "").startswith(_UNSPACED_SCRIPTS) for c in (a, b))


def cut_word(sent: str, start: int, end: int) -> str | None:
    """How the mention `[start, end)` cuts a word of `sent` ("starts inside the word 'paracetamol'",
    "ends inside ..."), or None when it starts and ends on word boundaries — as spaCy's
    `Doc.char_span` refuses a span that does not align with its tokens. Inclusive end offsets
    (`end - 1`) and word offsets read as character offsets land inside words."""
    for at, side in ((start, "starts"), (end, "ends")):
        if 0 < at < len(sent) and _in_word(sent[at - 1], sent[at]):
            left, right = at, at
            while left > 0 and _in_word(sent[left - 1], sent[left]):
                left -= 1
            while right < len(sent) and _in_word(sent[right - 1], sent[right]):
                right += 1
            return f"{side} inside the word {sent[left:right]!r}"
    return None


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)

