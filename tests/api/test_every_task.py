"""Every task from Python and through Hugging Face (docs/python-api.md), not entity typing alone: one tiny model
per task (a few steps on the tiny backbone with a fac adapter, on the real samples), then
`KAdapterForTask.predict` equals `kadapter predict` at two batch sizes, `AutoModel` gives the
model's logits, and the finetuned card's snippet (the task's `example_records`) runs.

The tasks differ in what goes through `predict`: one sequence with a marked entity (openentity,
figer), two marked entities (tacred), four candidates per record, input_ids (B, C, L) (cosmosqa),
and windows over several paragraphs per question, several examples per record (searchqa, quasart).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.qa_samples import kadapter_in, quasart_questions, write_quasar
from helpers.snippets import python_blocks, run_blocks

import kadapter  # noqa: F401  registers the `kadapter` model type
from kadapter import KAdapterForTask
from kadapter_cli.stages.finetune import load_finetuned
from kadapter_cli.tasks import TASKS, get_task

FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "48", "--device", "cpu", "--lr", "1e-3")
TASK_NAMES = sorted(TASKS)
N_RECORDS = 5  # records predicted per task: batch sizes 2 and 5 split them differently


def _typing_data(shared_data: Path, root: Path) -> Path:
    return shared_data / "openentity" / "ernie-format"


def _figer_data(shared_data: Path, root: Path) -> Path:
    """The raw FIGER sample converted (as `kadapter convert figer-raw` does), cut by position."""
    from kadapter_cli.tasks.figer import read_figer_raw

    records, _ = read_figer_raw(shared_data / "figer" / "exp.label")
    folder = root / "figer"
    folder.mkdir()
    for split, part in (("train", records[:16]), ("dev", records[16:24]), ("test", records[24:32])):
        (folder / f"{split}.json").write_text(json.dumps(part))
    # The label vocabulary: FIGER's 113 types (types.map), as the full data set's labels.json gives it.
    types = sorted({line.split("\t")[1].strip() for line in (shared_data / "figer" / "types.map").read_text().splitlines()
                    if "\t" in line})
    (folder / "labels.json").write_text(json.dumps(types))
    return folder


def _tacred_data(shared_data: Path, root: Path) -> Path:
    return shared_data / "tacred" / "gcn-over-pruned-trees-sample"


def _cosmosqa_data(shared_data: Path, root: Path) -> Path:
    """The real CosmosQA JSON Lines sample cut by position: train, dev (`valid.jsonl`), test."""
    lines = (shared_data / "cosmosqa" / "valid.first300.jsonl").read_text().splitlines()
    folder = root / "cosmosqa"
    folder.mkdir()
    for name, part in (("train.jsonl", lines[:16]), ("valid.jsonl", lines[16:24]), ("test.jsonl", lines[24:32])):
        (folder / name).write_text("\n".join(part) + "\n")
    return folder


def _searchqa_data(shared_data: Path, root: Path) -> Path:
    """SearchQA's own layout: train/ and test/ = the sample's two val files, val/ = its two train files."""
    source = shared_data / "searchqa" / "original-json"
    folder = root / "searchqa"
    for split, part in (("train", "val"), ("val", "train"), ("test", "val")):
        (folder / split).mkdir(parents=True)
        for f in (source / part).glob("*.json"):
            shutil.copyfile(f, folder / split / f.name)
    return folder


def _quasart_data(shared_data: Path, root: Path) -> Path:
    """Real Quasar-T questions and answers in the official layout; the paragraphs are made up (the
    sample has none, `helpers/qa_samples.py`)."""
    questions = quasart_questions(shared_data, 16)
    folder = root / "quasart"
    for split, part in (("train", questions[:8]), ("dev", questions[8:12]), ("test", questions[10:16])):
        write_quasar(folder, split, part)
    return folder


DATA = {"openentity": _typing_data, "figer": _figer_data, "tacred": _tacred_data, "cosmosqa": _cosmosqa_data,
        "searchqa": _searchqa_data, "quasart": _quasart_data}


GOLD_FIELDS = ("labels", "relation", "label", "answers")


def _prediction_records(task_name: str, data: Path) -> list[dict]:
    """The first test records in the task's own format, as a user hands them to `predict`: the file's
    records as they are; open QA's in the `records` format (`example_records`' keys), 4 paragraphs
    per question (several windows each, a few seconds). The second record comes without its gold."""
    task = get_task(task_name)
    test = task.task_files(data)["test"]
    if task_name in ("searchqa", "quasart"):
        records = [{"id": r["id"], "question": r["question"], "paragraphs": r["paragraphs"][:4], "answers": r["answers"]}
                   for r in task.read(test, labeled=False)[:N_RECORDS]]
    else:
        from kadapter_cli.tasks.base import iter_raw_records

        records = [raw for _, raw in iter_raw_records(test)][:N_RECORDS]
    records[1] = {k: v for k, v in records[1].items() if k not in GOLD_FIELDS}
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, tiny_backbone, make_trex_rc) -> dict:
    """A fac adapter on the tiny backbone and one finetuned model per task, built once for the module:
    `{"kadapter": run(args...), task: (folder, records)}`."""
    root = tmp_path_factory.mktemp("every-task")
    run = kadapter_in(root / "work")
    run("train-adapter", "--kind", "fac", "--data", make_trex_rc(root / "trex-rc", 16, 4), "--backbone", tiny_backbone,
        *FAST, "--cache-features", "off")
    made = {"kadapter": run}
    for name in TASK_NAMES:
        data = DATA[name](shared_data, root)
        run("finetune", "--task", name, "--data", data, "--adapters", "fac", *FAST, "--limit", "16")
        made[name] = (run.workdir / "finetuned" / f"{name}-fac", _prediction_records(name, data))
    return made


def test_every_task_is_covered():
    assert set(DATA) == set(TASKS), "a new task: add its data here"


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_predict_equals_the_command_at_two_batch_sizes(runs, task_name, tmp_path):
    folder, records = runs[task_name]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    model = KAdapterForTask.from_pretrained(folder)
    printed = {}
    for batch_size in (2, 5):
        out = runs["kadapter"]("predict", folder, path, "--scores", "--batch-size", batch_size).stdout
        printed[batch_size] = [json.loads(line) for line in out.splitlines()]
        assert [line["index"] for line in printed[batch_size]] == list(range(len(records)))
        assert model.predict(records, scores=True, batch_size=batch_size) == printed[batch_size]
    assert printed[2][1]["gold"] == [] and all(line["gold"] for line in printed[2][:1] + printed[2][2:])
    # Across batch sizes (each padded as the model's rule says): the same predictions, the same
    # probabilities up to float rounding.
    for line, other in zip(printed[2], printed[5]):
        assert line["pred"] == other["pred"] and line["scores"].keys() == other["scores"].keys()
        assert all(abs(p - other["scores"][k]) <= 1e-5 for k, p in line["scores"].items())


def _batch(loaded, records: list[dict]) -> dict:
    """Records encoded and collated as `kadapter predict` does (one batch; the task's examples)."""
    labels = {label: i for i, label in enumerate(loaded.labels)}
    normalized = loaded.task.read_records(records, labeled=False)
    examples = [ex for record in normalized
                for ex in loaded.task.examples(loaded.tokenizer, loaded.task.without_unknown_labels(record, labels),
                                               labels, loaded.config["max_length"], loaded.config["marker_style"])]
    return loaded.task.collate(examples, loaded.tokenizer.pad_token_id)


def _max_difference(a, b) -> float:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape
        return float((a - b).abs().max())
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max(_max_difference(a[k], b[k]) for k in a)
    assert len(a) == len(b)
    return max(_max_difference(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_automodel_gives_the_models_logits(runs, task_name):
    from transformers import AutoModel

    folder, records = runs[task_name]
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, KAdapterForTask) and model.task.name == task_name
    loaded = load_finetuned(folder)  # what `kadapter predict` runs
    batch = _batch(loaded, records)
    with torch.no_grad():
        theirs = model(**batch)
        ours = loaded.model(batch)
        ids = batch["input_ids"]
        fused = loaded.model.body(ids.reshape(-1, ids.shape[-1]), batch["attention_mask"].reshape(-1, ids.shape[-1]))
    assert theirs.logits is not None, "the head did not run"
    assert _max_difference(theirs.logits, ours) <= 1e-5
    assert theirs.last_hidden_state.shape == (*ids.shape, fused.shape[-1])
    assert (theirs.last_hidden_state.reshape(fused.shape) - fused).abs().max() <= 1e-5


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_the_finetuned_cards_snippet_runs(runs, task_name, tmp_path, monkeypatch):
    """The card's snippet predicts the task's `example_records`, as `kadapter predict` does."""
    folder, _ = runs[task_name]
    card = (folder / "README.md").read_text(encoding="utf-8")
    blocks = [b.replace(f"path/to/{folder.name}", str(folder)) for b in python_blocks(card)]
    assert all("path/to/" not in b for b in blocks)
    ns = run_blocks(blocks, tmp_path, monkeypatch)
    example = get_task(task_name).example_records
    path = tmp_path / "example.json"
    path.write_text(json.dumps(example))
    printed = runs["kadapter"]("predict", folder, path, "--scores").stdout
    assert ns["predictions"] == [json.loads(line) for line in printed.splitlines()]
    assert len(ns["predictions"]) == len(example) and {"index", "gold", "pred", "scores"} <= set(ns["predictions"][0])
    assert ns["features"].shape == (1, KAdapterForTask.from_pretrained(folder).body.hidden)
    assert ns["hidden"].shape[0] == 1
