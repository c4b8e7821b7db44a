"""CosmosQA beyond its happy path, written for the survivors of the mutation run of
`tasks/cosmosqa.py` (docs/MUTATION.md): the authors' CSV read record by record with the line each
record starts on, the messages of bad files and data folders, accuracy and its edge cases, the
answers' probabilities, unlabeled records, and the leaderboard file."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from kadapter_cli.data import encoding
from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import get_task

HEADER = "id,context,question,answer0,answer1,answer2,answer3,label"


def _row(i: int, context: str = "We went out .", label: str = "1") -> str:
    return f'q{i},"{context}",Why ?,a,b,c,d,{label}'


def _csv(tmp_path, *lines: str, bom: bool = False, name: str = "train.csv"):
    path = tmp_path / name
    path.write_bytes((("\ufeff" if bom else "") + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def _read_error(path, labeled: bool = True) -> str:
    with pytest.raises(BadInput) as e:
        get_task("cosmosqa").read(path, labeled)
    return str(e.value)


# ---------------------------------------------------------------- the authors' CSV


def test_csv_records_keep_their_text_and_errors_name_the_line_a_record_starts_on(tmp_path):
    # record 1 spans lines 2-3 (a quoted newline; the continuation starts with a byte-order mark)
    lines = [HEADER, _row(1, "First line\n\ufeffsecond line"), _row(2), "q3,too,few"]
    path = _csv(tmp_path, *lines, bom=True)
    assert _read_error(path) == f"{path}, line 5: expected 8 fields, got 3"
    first = _csv(tmp_path, HEADER, "q1,too,few", name="first.csv")
    assert _read_error(first) == f"{first}, line 2: expected 8 fields, got 3"
    good = _csv(tmp_path, *lines[:3], bom=True, name="good.csv")
    records = get_task("cosmosqa").read(good)
    assert [r["context"] for r in records] == ["First line\n\ufeffsecond line", "We went out ."]
    assert records[1] == {"id": "q2", "context": "We went out .", "question": "Why ?", "answers": list("abcd"),
                          "label": 1}


def test_an_unlabeled_csv_may_leave_out_the_label_column(tmp_path):
    path = _csv(tmp_path, HEADER.removesuffix(",label"), _row(1).removesuffix(",1"))
    assert [r["label"] for r in get_task("cosmosqa").read(path, labeled=False)] == [None]
    short = _csv(tmp_path, HEADER.removesuffix(",answer3,label"), "q1,c,q,a,b,c", name="short.csv")
    assert _read_error(short, labeled=False) == (
        f"{short}, line 1: expected the CSV header {HEADER}, got id,context,question,answer0,answer1,answer2")


@pytest.mark.parametrize("lines, message", [
    ([], "empty file"),
    ([HEADER], "no records"),
])
def test_a_csv_without_records_is_refused(tmp_path, lines, message):
    path = tmp_path / "train.csv"
    path.write_bytes("\r\n".join(lines).encode())
    assert _read_error(path) == f"{path}: {message}"


def test_a_field_over_the_csv_limit_names_its_line(tmp_path):
    huge = "x" * (csv.field_size_limit() + 1)
    path = _csv(tmp_path, HEADER, _row(1), _row(2, huge))
    assert _read_error(path).startswith(f"{path}, line 3: not valid CSV: field larger than field limit")
    header = _csv(tmp_path, HEADER + huge, _row(1), name="header.csv")
    assert _read_error(header).startswith(f"{header}, line 1: not valid CSV: field larger than field limit")


def test_a_field_of_the_wrong_type_names_file_and_line(tmp_path):
    record = {"id": "q", "context": "c", "question": "q", "answer0": "a", "answer1": "b", "answer2": "c",
              "answer3": 3, "label": "0"}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({**record, "answer3": "d"}) + "\n" + json.dumps(record) + "\n")
    assert _read_error(path) == f"{path}, line 2: 'answer3' must be a string, got an integer"


def test_an_empty_label_of_a_labeled_split_is_refused(tmp_path):
    path = tmp_path / "train.jsonl"
    record = {"id": "q", "context": "c", "question": "q", "answer0": "a", "answer1": "b", "answer2": "c",
              "answer3": "d", "label": ""}
    path.write_text(json.dumps(record) + "\n")
    assert _read_error(path) == f"{path}, line 1: 'label' is empty"
    assert get_task("cosmosqa").read(path, labeled=False)[0]["label"] is None  # unlabeled: no answer yet


def test_a_split_given_twice_names_both_files_and_the_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(BadInput) as e:
        get_task("cosmosqa").task_files(tmp_path)
    assert str(e.value) == f"{tmp_path}: the train split is given twice (train.jsonl, train.csv); keep one"


# ---------------------------------------------------------------- scoring, probabilities, predictions files


def test_accuracy_counts_the_labeled_records_only():
    task = get_task("cosmosqa")
    assert task.metrics([["0"], ["1"], ["2"], ["3"]], [["0"], ["2"], ["2"], ["0"]]) == {"accuracy": 0.5}
    assert task.metrics([], []) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="^2 gold answers but 1 predictions$"):
        task.metrics([["0"], ["1"]], [["0"]])
    examples = [{"gold": ["1"]}, {"gold": []}, {"gold": ["3"]}, {"gold": ["0"]}]
    predictions = [{"pred": ["1"]}, {"pred": ["1"]}, {"pred": ["2"]}, {"pred": ["0"]}]
    assert task.score(predictions, examples) == {"accuracy": pytest.approx(2 / 3)}
    assert task.score(predictions[1:2], examples[1:2]) == {}  # nothing to score


def test_the_best_answer_and_its_probabilities_by_answer_index():
    task = get_task("cosmosqa")
    predictions = task.decode(torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 0.0]]), {}, [])
    assert [p["pred"] for p in predictions] == [["1"], ["0"]]
    assert predictions[0]["scores"] == [0.0, 2.0, 1.0, -1.0]
    total = sum(math.exp(x) for x in (0.0, 2.0, 1.0, -1.0))
    assert task.label_scores(predictions[0], []) == {str(i): pytest.approx(math.exp(x) / total)
                                                     for i, x in enumerate([0.0, 2.0, 1.0, -1.0])}
    lines = task.scored_lines(task.prediction_lines(predictions, [{"gold": []}] * 2), predictions, [], [], "predicted")
    assert lines[0] == {"index": 0, "gold": [], "pred": ["1"], "scores": {"1": round(math.exp(2.0) / total, 6)}}


def test_an_unlabeled_split_gets_the_leaderboard_file_and_a_labeled_one_does_not(tmp_path):
    task = get_task("cosmosqa")
    predictions = [{"pred": ["2"], "scores": [0, 0, 1, 0]}, {"pred": ["0"], "scores": [1, 0, 0, 0]}]
    task.write_predictions(tmp_path, "test", predictions, [{"gold": []}, {"gold": []}])
    assert (tmp_path / "predictions-test.lst").read_bytes() == b"2\n0\n"
    assert [json.loads(x) for x in (tmp_path / "predictions-test.jsonl").read_text().splitlines()] == [
        {"index": 0, "gold": [], "pred": ["2"]}, {"index": 1, "gold": [], "pred": ["0"]}]
    task.write_predictions(tmp_path, "dev", predictions, [{"gold": ["2"]}, {"gold": ["1"]}])
    assert (tmp_path / "predictions-dev.jsonl").is_file() and not (tmp_path / "predictions-dev.lst").exists()


def test_an_unlabeled_record_is_encoded_and_batched_without_a_target(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    task = get_task("cosmosqa")
    tokenizer = load_tokenizer(tiny_backbone)
    record = {"id": None, "context": "We went out .", "question": "Why ?", "answers": list("abcd"), "label": None}
    example = task.encode(tokenizer, record, {}, 32)
    assert example["labels"] == encoding.IGNORE_INDEX and example["gold"] == []
    batch = task.collate([example, task.encode(tokenizer, {**record, "label": 2}, {}, 32)], tokenizer.pad_token_id)
    assert batch["labels"].tolist() == [encoding.IGNORE_INDEX, 2]
    assert task.head_positions(batch).tolist() == [[[0]] * 4] * 2  # each candidate's first token
