"""Every message numbers records the same way and says which way: a JSON Lines record by its line,
counted from 1 as editors count (`line 5`), a JSON list record by its index, counted from 0 as the
`index` of predictions files (`record 4 (counted from 0)`) — whether the reader finds the fault or
a later step does (an unknown label, a record the tokenizer cannot encode). docs/tasks.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kadapter_cli.errors import BadInput

BIOMED = Path(__file__).resolve().parent / "biomed"
FAST = ("--max-steps", "1", "--batch-size", "4", "--max-length", "32")


def _mention(sent: str, mention: str, label: str) -> dict:
    start = sent.index(mention)
    return {"sent": sent, "start": start, "end": start + len(mention), "labels": [label]}


def _jsonl_lines(records: list) -> list[str]:
    return [json.dumps(r) if isinstance(r, dict) else r for r in records]


def test_a_json_lines_file_is_numbered_by_line_for_reading_and_label_errors(cli, tmp_path):
    """The issue's file: a missing field at line 3 and an unknown label at line 5, both reported by
    their lines (before, the label was `record 4`, counted from 0 over the records)."""
    data = Path(shutil.copytree(BIOMED, tmp_path / "biomed"))
    lines = _jsonl_lines([
        _mention("Aspirin thins the blood.", "Aspirin", "drug"),
        "",  # a blank line: lines and record indices part ways here
        {"sent": "Asthma is common.", "start": 0, "end": 6},  # line 3: no labels
        _mention("Gout responds to colchicine.", "Gout", "disease"),
        _mention("KRAS is mutated in many tumours.", "KRAS", "Drug"),  # line 5: not one of the labels
    ])
    dev = data / "dev.json"
    dev.write_text("\n".join(lines) + "\n")
    args = ("finetune", "--task", "openentity", "--data", data, "--backbone", tmp_path / "no-backbone", *FAST)
    first = cli(*args)
    assert first.exit_code == 2
    assert first.stderr.strip() == f"error: {dev}, line 3: missing field 'labels'"
    lines[2] = json.dumps(_mention("Asthma is common.", "Asthma", "disease"))
    dev.write_text("\n".join(lines) + "\n")
    second = cli(*args)
    assert second.exit_code == 2
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: {dev}, line 5: label 'Drug' is not one of the 3 labels from the training split (disease, drug, gene)")


def test_a_json_list_is_numbered_by_index_and_says_so(cli, tmp_path):
    data = Path(shutil.copytree(BIOMED, tmp_path / "biomed"))
    dev = json.loads((data / "dev.json").read_text())
    dev[4]["labels"] = ["Drug"]
    (data / "dev.json").write_text(json.dumps(dev))
    result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tmp_path / "no-backbone", *FAST)
    assert result.exit_code == 2
    assert f"{data / 'dev.json'}, record 4 (counted from 0): label 'Drug' is not one of the 3 labels" in result.stderr


def test_an_encoding_error_names_the_line_the_record_was_read_from(tmp_path, monkeypatch):
    """`encode_split` fails on the fourth record, read from line 6 of a JSON Lines file (blank
    lines before it): the error names line 6, not the record's position."""
    from kadapter_cli.stages.finetune import encode_split
    from kadapter_cli.tasks import get_task

    path = tmp_path / "dev.json"
    records = [_mention(f"Drug number {i} works.", f"{i}", "drug") for i in range(5)]
    path.write_text("\n".join(_jsonl_lines([records[0], records[1], "", records[2], "", records[3], records[4]])))
    task = get_task("openentity")
    read = task.read(path)

    def examples(tokenizer, record, *args, **kwargs):
        if record["sent"] == "Drug number 3 works.":
            raise ValueError("cannot encode this one")
        return [{"input_ids": [0]}]

    monkeypatch.setattr(task, "examples", examples)
    with pytest.raises(BadInput) as e:
        encode_split(task, None, read, ["drug"], 32, path, "encoding dev")
    assert str(e.value) == f"{path}, line 6: cannot encode this one"


def test_records_the_reader_drops_keep_the_numbers_of_the_rest(tmp_path):
    """TACRED's `max_negatives` drops training records; a label error in what is left still names
    the record's place in the file."""
    from kadapter_cli.tasks import get_task

    def relation(label):
        return {"token": ["Ann", "works", "for", "Acme", "."], "subj_start": 0, "subj_end": 0, "obj_start": 3,
                "obj_end": 3, "relation": label}

    path = tmp_path / "train.json"
    path.write_text(json.dumps([relation("no_relation"), relation("no_relation"), relation("per:employee_of"),
                                relation("per:employer")]))
    task = get_task("tacred", max_negatives=1)
    kept = task.prepare_train(task.read(path))
    assert len(kept) == 3
    with pytest.raises(BadInput) as e:
        task.check_labels(kept, task.benchmark_label_set(["per:employee_of"]), path)
    assert str(e.value).startswith(f"{path}, record 3 (counted from 0): label 'per:employer' is not one of the 42")


def test_figer_bio_records_are_named_by_the_line_of_their_mention(tmp_path):
    from kadapter_cli.tasks import get_task

    path = tmp_path / "test.label"
    path.write_text("Obama\tB-/person\nspoke\tO\n\t\nIn\tO\nParis\tB-/location/city\n")
    task = get_task("figer")
    records = task.read(path)
    with pytest.raises(BadInput) as e:
        task.check_labels(records, task.benchmark_label_set(["/person"]), path)
    assert str(e.value).startswith(f"{path}, line 5: label '/location/city' is not one of the 1 labels")


def test_a_json_list_error_says_it_counts_from_zero():
    assert str(BadInput("missing field 'sent'", "data/train.json", 7)) == (
        "data/train.json, record 7 (counted from 0): missing field 'sent'")
    assert str(BadInput("missing field 'sent'", "data/train.jsonl", "line 8")) == (
        "data/train.jsonl, line 8: missing field 'sent'")
