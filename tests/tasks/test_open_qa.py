"""SearchQA and Quasar-T, fast: one tiny searchqa model (a few steps on the real SearchQA sample,
no adapters) reused by every chain test, plus the task's options, files and answer choice checked
directly (`tasks/open_qa/`'s mutation score, docs/mutation.md; `test_open_qa_chains.py` is `slow`).

What is asserted is what a user sees: the prediction lines (ids, gold, order), `answers-<split>.json`,
the scores lines, metrics recomputed from the predictions file, the files the manifest hashes, and
the exit-2 messages of bad options and bad input.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers.qa_samples import kadapter_in, quasart_questions, write_openqa, write_quasar

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import get_task, metrics
from kadapter_cli.tasks.open_qa.task import (
    answers_by_question,
    collate_windows,
    encode_question,
    ranked_answers_by_question,
    span_loss,
)

FAST = ["--batch-size", "4", "--lr", "2e-3", "--max-length", "64", "--max-paragraphs", "4"]
TEST_IDS = [(0, "528", ["tried & treed"]), (1, "1506", ["Joseph Smith"])]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stdout_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _hashed_inputs(folder: Path) -> set[Path]:
    inputs = json.loads((folder / "manifest.json").read_text())["inputs"]
    assert all(i["sha256"] == hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() for i in inputs)
    return {Path(i["path"]) for i in inputs}


@pytest.fixture(scope="module")
def searchqa_data(tmp_path_factory, shared_data) -> Path:
    """SearchQA's own layout: train/ and test/ = the two val files, val/ = the two train files."""
    source = shared_data / "searchqa" / "original-json"
    data = tmp_path_factory.mktemp("searchqa-json")
    for split, folder in (("train", "val"), ("val", "train"), ("test", "val")):
        (data / split).mkdir()
        for f in (source / folder).glob("*.json"):
            shutil.copyfile(f, data / split / f.name)
    return data


@pytest.fixture(scope="module")
def kadapter(tmp_path_factory, tiny_backbone, searchqa_data):
    """`kadapter(args..., code=0)` in one workdir holding one tiny searchqa run, `kadapter.run_dir`."""
    run = kadapter_in(tmp_path_factory.mktemp("oq") / "work")
    run.backbone = tiny_backbone
    run("finetune", "--backbone", tiny_backbone, "--task", "searchqa", "--data", searchqa_data, "--name", "sq",
        "--epochs", "1", "--max-steps", "2", *FAST)
    run.run_dir = run.workdir / "finetuned" / "sq"
    return run


def test_finetune_writes_one_line_per_question_and_metrics_recomputable_from_them(kadapter, searchqa_data):
    run_dir = kadapter.run_dir
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) == {"dev", "test"} and all(set(saved[s]) == {"em", "f1"} for s in saved)
    test_lines = _lines(run_dir / "predictions-test.jsonl")
    assert [(x["index"], x["id"], x["gold"]) for x in test_lines] == TEST_IDS
    assert set(test_lines[0]) == {"index", "id", "gold", "pred"}
    assert all(len(x["pred"]) == 1 and isinstance(x["pred"][0], str) for x in test_lines)
    for split in ("dev", "test"):
        lines = _lines(run_dir / f"predictions-{split}.jsonl")
        assert json.loads((run_dir / f"answers-{split}.json").read_text()) == {x["id"]: x["pred"][0] for x in lines}
        recomputed = metrics.extractive_qa_metrics([x["gold"] for x in lines], [x["pred"] for x in lines])
        assert recomputed == pytest.approx(saved[split])
    dev_ids = [x["id"] for x in _lines(run_dir / "predictions-dev.jsonl")]
    assert len(dev_ids) == 2 and set(dev_ids).isdisjoint({"528", "1506"})

    config = json.loads((run_dir / "config.json").read_text())["task_options"]
    assert config == {"format": "auto", "contexts": "short", "titles": False, "max_paragraphs": 4, "skip_bad": False,
                      "no_answer": "skip", "stride": 32, "max_answer_length": 30, "combine": "max"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stats"]["skipped_bad_questions"] == 0
    assert _hashed_inputs(run_dir) == {f for split in ("train", "val", "test") for f in (searchqa_data / split).glob("*.json")}


def test_evaluate_gives_the_saved_metrics_and_predictions(kadapter, searchqa_data):
    run_dir = kadapter.run_dir
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    printed = json.loads(kadapter("evaluate", run_dir, "--data", searchqa_data, "--split", "test", "--json").stdout)
    assert printed == pytest.approx(saved)
    evaluation = kadapter.workdir / "evaluations" / "sq-test"
    lines = _lines(evaluation / "predictions-test.jsonl")
    assert lines == _lines(run_dir / "predictions-test.jsonl")
    assert json.loads((evaluation / "answers-test.json").read_text()) == {x["id"]: x["pred"][0] for x in lines}
    assert _hashed_inputs(evaluation) == set((searchqa_data / "test").glob("*.json"))


def test_predict_lines_and_scores(kadapter, searchqa_data):
    run_dir = kadapter.run_dir
    saved = _lines(run_dir / "predictions-test.jsonl")
    plain = _stdout_lines(kadapter("predict", run_dir, searchqa_data / "test").stdout)
    assert [(x["index"], x["id"], x["gold"], x["pred"]) for x in plain] == [(x["index"], x["id"], x["gold"], x["pred"]) for x in saved]
    assert all("scores" not in x for x in plain)

    scored = _stdout_lines(kadapter("predict", "--scores", run_dir, searchqa_data / "test").stdout)
    every = _stdout_lines(kadapter("predict", "--all-scores", run_dir, searchqa_data / "test").stdout)
    assert [x["id"] for x in scored] == [x["id"] for x in every] == ["528", "1506"]
    for one, full, line in zip(scored, every, saved):
        assert list(one["scores"]) == line["pred"] and 0 < one["scores"][line["pred"][0]] <= 1
        ranked = list(full["scores"].values())
        # best first; answers that normalise to nothing ("...", "the") after all the others
        empty = [metrics.squad_normalize(a) == "" for a in full["scores"]]
        assert empty == sorted(empty)
        named = [v for v, e in zip(ranked, empty) if not e]
        assert len(named) > 1 and named == sorted(named, reverse=True)
        assert next(iter(full["scores"].items())) == next(iter(one["scores"].items()))
        assert all(v == round(v, 6) for v in ranked)
        assert one["pred"] == line["pred"] == full["pred"]


def test_predict_max_answer_length_one_gives_one_subtoken_answers(kadapter, searchqa_data, tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_backbone)
    out = _stdout_lines(kadapter("predict", kadapter.run_dir, searchqa_data / "test", "--max-answer-length", "1").stdout)
    assert [x["id"] for x in out] == ["528", "1506"]
    assert all(len(tokenizer(" " + x["pred"][0], add_special_tokens=False)["input_ids"]) <= 2 for x in out)
    assert all(" " not in x["pred"][0].strip() for x in out)


def test_predict_unlabeled_records_and_bad_input(kadapter, tmp_path):
    new = tmp_path / "new.jsonl"
    records = [{"id": "q1", "question": "Which island?", "paragraphs": ["Pythagoras was born on Samos."]},
               {"id": "q2", "question": "Who?", "paragraphs": ["Joseph Smith founded it.", "Brigham Young led it."]}]
    new.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = _stdout_lines(kadapter("predict", kadapter.run_dir, new).stdout)
    assert [(x["index"], x["id"], x["gold"]) for x in out] == [(0, "q1", []), (1, "q2", [])]
    assert out[0]["pred"][0] in records[0]["paragraphs"][0]
    assert any(out[1]["pred"][0] in p for p in records[1]["paragraphs"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"id": "q3", "question": "No text?", "paragraphs": []}) + "\n")
    result = kadapter("predict", kadapter.run_dir, bad, code=2)
    assert "bad.jsonl" in result.output and "2" in result.output and "no paragraphs" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--max-paragraphs", "0"], "task option max_paragraphs of 'searchqa' must be positive, got 0"),
    (["--max-answer-length", "0"], "task option max_answer_length of 'searchqa' must be positive, got 0"),
    (["--task-option", "stride=-1"], "task option stride of 'searchqa' must be positive, got -1"),
    (["--no-answer", "maybe"], "task option no_answer of 'searchqa' must be one of skip, cls, got 'maybe'"),
    (["--task-option", "format=csv"], "task option format of 'searchqa' must be one of auto, "),
    (["--task-option", "contexts=medium"], "task option contexts of 'searchqa' must be one of short, long, got 'medium'"),
    (["--task-option", "combine=mean"], "task option combine of 'searchqa' must be one of max, sum, got 'mean'"),
    (["--task-option", "titles=3"], "task option titles of 'searchqa' must be bool, got 3"),
])
def test_bad_task_options_exit_2_and_write_nothing(kadapter, searchqa_data, args, message):
    name = "refused-" + "-".join(args).strip("-").replace("=", "-")
    result = kadapter("finetune", "--backbone", kadapter.backbone, "--task", "searchqa", "--data", searchqa_data,
                      "--name", name, "--max-steps", "1", *args, code=2)
    assert message in result.output
    assert not (kadapter.workdir / "finetuned" / name).exists()


def test_stride_zero_is_accepted():
    assert get_task("searchqa", stride=0).stride == 0
    assert get_task("quasart", max_paragraphs=1, max_answer_length=1).max_paragraphs == 1


# ---------------------------------------------------------------- files each format reads


def test_task_files_and_input_files_of_openqa_layout(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 6)
    write_openqa(tmp_path, "train", questions[:3])
    write_openqa(tmp_path, "dev", questions[3:])
    task = get_task("quasart")
    assert task.task_files(tmp_path) == {"train": tmp_path / "train.txt", "dev": tmp_path / "dev.txt",
                                         "test": tmp_path / "test.json"}
    assert task.input_files(tmp_path / "dev.txt") == [tmp_path / "dev.txt", tmp_path / "dev.json"]
    records = task.read(tmp_path / "dev.txt")
    assert [r["answers"] for r in records] == [q["answers"] for q in questions[3:]]
    assert [r["id"] for r in records] == ["1", "2", "3"]
    assert all(len(r["paragraphs"]) == 2 for r in records)  # the 5-token paragraph is dropped
    assert task.read_stats() == {"skipped_bad_questions": 0, "questions_without_paragraphs": 0}
    assert [len(r["paragraphs"]) for r in get_task("quasart", max_paragraphs=1).read(tmp_path / "dev.txt")] == [1, 1, 1]
    assert [r["answers"] for r in task.read(tmp_path / "dev.txt", labeled=False)] == [q["answers"] for q in questions[3:]]


def test_quasar_official_layout_short_and_long_contexts(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 2)
    write_quasar(tmp_path, "dev", questions[:2])
    write_quasar(tmp_path, "dev", questions[:2], kind="long")
    short, long = get_task("quasart"), get_task("quasart", contexts="long")
    q = tmp_path / "questions" / "dev_questions.json.gz"
    assert short.task_files(tmp_path)["dev"] == q == long.task_files(tmp_path)["dev"]
    assert short.input_files(q) == [q, tmp_path / "contexts" / "short" / "dev_contexts.json.gz"]
    assert long.input_files(q) == [q, tmp_path / "contexts" / "long" / "dev_contexts.json.gz"]
    assert [r["id"] for r in long.read(q)] == [r["id"] for r in short.read(q)] == [x["question_id"] for x in questions[:2]]


def test_searchqa_titles_and_max_paragraphs(searchqa_data):
    folder = searchqa_data / "test"
    plain = get_task("searchqa").read(folder)
    titled = get_task("searchqa", titles=True).read(folder)
    assert [r["id"] for r in plain] == ["528", "1506"] and [r["answers"] for r in plain] == [g for _, _, g in TEST_IDS]
    assert [len(r["paragraphs"]) for r in plain] == [len(r["paragraphs"]) for r in titled]
    assert all(t.endswith(p) and t != p for r, s in zip(plain, titled) for p, t in zip(r["paragraphs"], s["paragraphs"]))
    assert get_task("searchqa", format="searchqa").task_files(searchqa_data)["dev"] == searchqa_data / "val"
    one = get_task("searchqa", max_paragraphs=1).read(folder)
    assert all(len(r["paragraphs"]) == 1 for r in one)
    assert get_task("searchqa").input_files(folder) == [folder]


def test_skip_bad_counts_skipped_questions_per_read(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 4)
    _, paragraphs = write_openqa(tmp_path, "dev", questions)
    lines = paragraphs.read_text().splitlines()
    lines[1] = "[]"
    paragraphs.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput, match="dev.json, line 2: the question has no paragraphs"):
        get_task("quasart").read(tmp_path / "dev.txt")
    task = get_task("quasart", skip_bad=True)
    assert len(task.read(tmp_path / "dev.txt")) == 4  # kept without paragraphs: scored as wrong
    task.read(tmp_path / "dev.txt")  # the same file read again counts once
    assert task.read_stats() == {"skipped_bad_questions": 0, "questions_without_paragraphs": 1}


# ---------------------------------------------------------------- windows, loss and answer choice


def _window(paragraph: str, offsets: list[tuple[int, int]], context_start: int = 3) -> dict:
    return {"paragraph": paragraph, "offsets": offsets, "context_start": context_start}


def test_answers_by_question_combines_equal_answers_by_max_or_sum():
    a = _window("Samos is an island", [(0, 5), (6, 8), (9, 11), (12, 18)])
    b = _window("the island Samos", [(0, 3), (4, 10), (11, 16)])
    c = _window("Davos or Samos", [(0, 5), (6, 8), (9, 14)])
    spans = [[(0.4, 3, 3), (0.1, 6, 6)], [(0.3, 5, 5)], [(0.5, 3, 3), (0.2, 5, 5)]]
    questions = [0, 0, 0]
    assert answers_by_question([a, b, c], spans, questions, 1) == ["Davos"]
    assert answers_by_question([a, b, c], spans, questions, 1, "sum") == ["Samos"]
    (ranked,) = ranked_answers_by_question([a, b, c], spans, questions, 1, "sum")
    assert [text for text, _ in ranked] == ["Samos", "Davos", "island"]
    assert [score for _, score in ranked] == pytest.approx([0.9, 0.5, 0.1])
    assert ranked_answers_by_question([a, b, c], spans, questions, 1)[0] == [("Davos", 0.5), ("Samos", 0.4), ("island", 0.1)]
    # windows of two questions, one question without spans
    assert answers_by_question([a, c, b], [[(0.4, 3, 3)], [(0.9, 3, 4)], []], [1, 0, 2], 3) == ["Davos or", "Samos", ""]
    with pytest.raises(ValueError, match="combine must be one of max, sum, got 'mean'"):
        ranked_answers_by_question([a], [[]], [0], 1, "mean")


def test_collate_windows_masks_and_targets():
    windows = [{"input_ids": [0, 5, 2, 7, 8, 9, 2], "context_start": 3, "offsets": [(0, 1)] * 3,
                "starts": [4], "ends": [5], "cls_slot": False},
               {"input_ids": [0, 5, 2, 7, 2], "context_start": 3, "offsets": [(0, 1)],
                "starts": [0], "ends": [0], "cls_slot": True}]
    batch = collate_windows(windows, pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 5, 2, 7, 8, 9, 2], [0, 5, 2, 7, 2, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    assert batch["context_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 0, 0, 0]]
    assert batch["answer_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 0], [1, 0, 0, 1, 0, 0, 0]]
    assert batch["start_targets"].tolist() == [[0, 0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert batch["end_targets"].tolist() == [[0, 0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert collate_windows(windows, pad_id=1, pad_to=8)["input_ids"].shape[1] == 8

    import torch

    logits = torch.zeros(2, 7, 2)
    # uniform over 3 paragraph positions, one gold: 2·log 3; the cls window: 2 positions → 2·log 2
    assert span_loss(logits, batch).item() == pytest.approx((2 * torch.log(torch.tensor(3.0)) + 2 * torch.log(torch.tensor(2.0))).item() / 2)


def test_encode_question_training_windows_skip_or_point_at_cls(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_backbone)
    record = {"question": "Where was Pythagoras born?", "answers": ["Samos"],
              "paragraphs": ["Pythagoras was born on Samos.", "Nothing relevant is said here at all."]}
    skipped = encode_question(tokenizer, record, 64, 8, training=True)
    assert [w["paragraph"] for w in skipped] == [record["paragraphs"][0]]
    (window,) = skipped
    start, end = window["starts"][0], window["ends"][0]
    offsets = window["offsets"]
    assert window["paragraph"][offsets[start - window["context_start"]][0]: offsets[end - window["context_start"]][1]].strip() == "Samos"
    assert window["cls_slot"] is False
    cls = encode_question(tokenizer, record, 64, 8, training=True, no_answer="cls")
    assert [w["paragraph"] for w in cls] == record["paragraphs"]
    assert (cls[1]["starts"], cls[1]["ends"]) == ([0], [0]) and all(w["cls_slot"] for w in cls)
    evaluation = encode_question(tokenizer, record, 64, 8, training=False)
    assert [w["paragraph"] for w in evaluation] == record["paragraphs"] and all(not w["starts"] for w in evaluation)
    with pytest.raises(ValueError, match="no_answer must be one of skip, cls, got 'drop'"):
        encode_question(tokenizer, record, 64, 8, training=True, no_answer="drop")


def test_examples_tag_windows_with_id_and_gold(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_backbone)
    task = get_task("searchqa", stride=8)
    record = {"id": "x", "question": "Where?", "answers": ["Samos", "Samos island"],
              "paragraphs": ["Born on Samos. " * 20, "Elsewhere entirely."]}
    windows = task.examples(tokenizer, record, {}, 32)
    assert len(windows) > 2 and all(w["id"] == "x" and w["gold"] == ["Samos", "Samos island"] for w in windows)
    assert all(task.length(w) == len(w["input_ids"]) <= 32 for w in windows)
    trained = task.examples(tokenizer, task.prepare_train([record])[0], {}, 32)
    assert trained and all(w["starts"] for w in trained) and len(trained) < len(windows)
    assert task.has_gold(record) and not task.has_gold({**record, "answers": []})


def test_window_spans_respect_max_answer_length_top_k_and_drop_impossible_spans():
    import torch

    from kadapter_cli.tasks.open_qa.task import window_spans

    # positions 3..5 are the paragraph; the best start is 3 and the best end 4 (a 2-sub-token span)
    start = torch.tensor([[0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 1.0, 5.0, 0.0, 0.0]])
    logits = torch.stack([start, end], dim=-1)
    batch = {"context_mask": torch.tensor([[0, 0, 0, 1, 1, 1, 0]], dtype=torch.bool)}
    (spans,) = window_spans(logits, batch, max_answer_length=30)
    assert (spans[0][1], spans[0][2]) == (3, 4) and len(spans) == 5  # 6 possible spans, 5 kept
    assert [p for p, _, _ in spans] == sorted((p for p, _, _ in spans), reverse=True)
    (short,) = window_spans(logits, batch, max_answer_length=1)
    assert all(s == e for _, s, e in short) and len(short) == 3  # only 3 one-sub-token spans exist
    (one,) = window_spans(logits, batch, max_answer_length=30, top_k=1)
    assert [(s, e) for _, s, e in one] == [(3, 4)]
    swapped = torch.stack([end, start], dim=-1)  # start and end channels are not interchangeable
    assert [(s, e) for _, s, e in window_spans(swapped, batch, 30)[0][:1]] == [(3, 3)]


def test_span_loss_reads_start_and_end_channels_separately():
    import torch

    batch = {"answer_mask": torch.tensor([[False, True, True]]),
             "start_targets": torch.tensor([[False, True, False]]), "end_targets": torch.tensor([[False, False, True]])}
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
    expected = 2 * torch.log1p(torch.exp(torch.tensor(-2.0)))  # each channel puts e² on its gold of e² + 1
    assert span_loss(logits, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def _hand_examples() -> tuple[list[dict], list[dict]]:
    """Three windows of two questions (records 4 and 9) and their decoded spans."""
    a = {**_window("Samos is an island", [(0, 5), (6, 8), (9, 11), (12, 18)]), "record": 4, "id": "a", "gold": ["Samos"]}
    b = {**_window("Davos or Samos", [(0, 5), (6, 8), (9, 14)]), "record": 4, "id": "a", "gold": ["Samos"]}
    c = {**_window("Junior is small", [(0, 6), (7, 9), (10, 15)]), "record": 9, "id": "b", "gold": []}
    predictions = [{"pred": [], "spans": [[0.4, 3, 3]]}, {"pred": [], "spans": [[0.3, 5, 5], [0.5, 3, 3]]},
                   {"pred": [], "spans": []}]
    return [a, b, c], predictions


def test_task_answers_scores_and_lines_on_hand_made_spans(tmp_path):
    examples, predictions = _hand_examples()
    maximum, total = get_task("searchqa"), get_task("searchqa", combine="sum")
    assert [(first["id"], answer) for first, answer in maximum.answers(predictions, examples)] == [("a", "Davos"), ("b", "")]
    assert [answer for _, answer in total.answers(predictions, examples)] == ["Samos", ""]
    assert total.ranked_answers(predictions, examples)[0][1] == [("Samos", pytest.approx(0.7)), ("Davos", 0.5)]
    # only questions with gold answers are scored; none: no metrics
    assert maximum.score(predictions, examples) == {"em": 0.0, "f1": 0.0}
    assert total.score(predictions, examples) == {"em": 100.0, "f1": 100.0}
    assert maximum.score(predictions, [{**e, "gold": []} for e in examples]) == {}
    lines = total.prediction_lines(predictions, examples)
    assert lines == [{"index": 0, "id": "a", "gold": ["Samos"], "pred": ["Samos"]},
                     {"index": 1, "id": "b", "gold": [], "pred": [""]}]
    assert total.scored_lines(lines, predictions, examples, [], "none") == lines
    assert [x["scores"] for x in total.scored_lines(lines, predictions, examples, [], "top")] == [{"Samos": 0.7}, {}]
    assert [x["scores"] for x in total.scored_lines(lines, predictions, examples, [], "all")] == [{"Samos": 0.7, "Davos": 0.5}, {}]
    total.write_predictions(tmp_path, "dev", predictions, examples)
    assert _lines(tmp_path / "predictions-dev.jsonl") == lines
    assert json.loads((tmp_path / "answers-dev.json").read_text()) == {"a": "Samos", "b": ""}


def test_task_decode_collate_and_no_answer_option(tiny_backbone):
    import torch

    from kadapter_cli.modeling.backbone import load_tokenizer

    task = get_task("searchqa", no_answer="cls")
    tokenizer = load_tokenizer(tiny_backbone)
    record = {"id": "x", "question": "Where?", "answers": ["Samos"], "train": True,
              "paragraphs": ["Born on Samos.", "Elsewhere entirely."]}
    windows = task.examples(tokenizer, record, {}, 64)
    assert len(windows) == 2 and windows[1]["starts"] == [0]  # with skip the second is left out
    assert len(get_task("searchqa").examples(tokenizer, record, {}, 64)) == 1
    batch = task.collate(windows, 1, 40)
    assert batch["input_ids"].shape == (2, 40) and batch["answer_mask"][:, 0].tolist() == [True, True]
    decoded = task.decode(torch.zeros(2, 40, 2), batch, [])
    assert all(set(d) == {"pred", "spans"} and d["pred"] == [] and 0 < len(d["spans"]) <= 5 for d in decoded)


def test_labeled_read_refuses_questions_without_answers_and_counts_skips_per_file(shared_data, tmp_path):
    records = tmp_path / "new.jsonl"
    records.write_text(json.dumps({"id": "q", "question": "Which island?", "paragraphs": ["Born on Samos."]}) + "\n")
    task = get_task("searchqa")
    with pytest.raises(BadInput):
        task.read(records)
    assert task.read(records, labeled=False)[0]["answers"] == []
    questions = quasart_questions(shared_data, 4)
    skipping = get_task("quasart", skip_bad=True)
    for split in ("dev", "test"):
        _, paragraphs = write_openqa(tmp_path / "oq", split, questions)
        lines = paragraphs.read_text().splitlines()
        lines[0] = "[]"
        paragraphs.write_text("\n".join(lines) + "\n")
        assert len(skipping.read(tmp_path / "oq" / f"{split}.txt")) == 4
    assert skipping.read_stats() == {"skipped_bad_questions": 0, "questions_without_paragraphs": 2}


def test_contexts_and_format_options_choose_the_files(shared_data, tmp_path, searchqa_data):
    questions = quasart_questions(shared_data, 2)
    write_quasar(tmp_path, "dev", questions, kind="long")  # long contexts only
    q = tmp_path / "questions" / "dev_questions.json.gz"
    assert get_task("quasart", contexts="long").task_files(tmp_path)["dev"] == q
    with pytest.raises(BadInput, match="Quasar-T questions without contexts: expected .*contexts/short/dev_contexts"):
        get_task("quasart").task_files(tmp_path)
    # a named format reads only that format
    with pytest.raises(BadInput):
        get_task("searchqa", format="mrqa").read(searchqa_data / "test")
    with pytest.raises(BadInput):
        get_task("searchqa", format="mrqa").input_files(searchqa_data / "test")
