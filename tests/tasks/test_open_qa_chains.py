"""SearchQA and Quasar-T from the command line: finetune → evaluate → predict with the tiny backbone,
with and without adapters, in all four data formats (docs/tasks.md).

SearchQA runs on the real samples (original JSON, MRQA). The Quasar-T sample has real questions
and answers but no passages (neither the official contexts nor OpenQA's files could be found), so
the OpenQA- and Quasar-T-format files here are written from the real questions with made-up
paragraphs (`tests/helpers/qa_samples.py`). What is asserted is the contract: metrics recomputed from the
saved model, one prediction line per question, the `{id: answer}` file, bad input naming its line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.qa_samples import kadapter_in, quasart_questions, write_openqa, write_quasar

pytestmark = pytest.mark.slow

FAST = ["--batch-size", "4", "--lr", "2e-3", "--max-length", "64", "--max-paragraphs", "4"]


@pytest.fixture(scope="module")
def kadapter(tmp_path_factory, shared_data, tiny_backbone):
    """`kadapter(args...)` in one workdir that holds fac and lin adapters (a few steps on the real
    T-REx and UD samples) and their composition; returns the click result (exit 0 asserted unless
    `code` says otherwise)."""
    run = kadapter_in(tmp_path_factory.mktemp("qa") / "work")
    run.backbone = tiny_backbone
    run("prepare-trex", shared_data / "trex", "--min-count", "1")
    run("parse", "--parser", "conllu", shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu", "--limit", "100")
    for kind in ("fac", "lin"):
        run("train-adapter", "--kind", kind, "--backbone", tiny_backbone, "--max-steps", "2", "--limit", "32",
            "--batch-size", "16", "--max-length", "64")
    run("compose", "fac", "lin")
    return run


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _evaluate_recomputes(kadapter, run_dir: Path, data: Path, split: str) -> dict:
    """`evaluate` from the saved folder gives the metrics finetune wrote, and the same predictions."""
    saved = json.loads((run_dir / "metrics.json").read_text())[split]
    recomputed = json.loads(kadapter("evaluate", run_dir, "--data", data, "--split", split, "--json").stdout)
    assert recomputed == pytest.approx(saved) and set(saved) == {"em", "f1"}
    evaluation = kadapter.workdir / "evaluations" / f"{run_dir.name}-{split}"
    assert _lines(evaluation / f"predictions-{split}.jsonl") == _lines(run_dir / f"predictions-{split}.jsonl")
    assert json.loads((evaluation / f"answers-{split}.json").read_text()) == \
        json.loads((run_dir / f"answers-{split}.json").read_text())
    return saved


@pytest.fixture(scope="module")
def searchqa_json(tmp_path_factory, shared_data) -> Path:
    """SearchQA's own layout, one JSON file per question: train/ = the two raw crawl files (50 and
    31 snippets) + the two train files, val/ = the raw crawl files again (so that a few steps can
    learn them), test/ = the two val files."""
    source = shared_data / "searchqa" / "original-json"
    data = tmp_path_factory.mktemp("searchqa-json")
    for split, folders in (("train", ("raw_jeopardy", "train")), ("val", ("raw_jeopardy",)), ("test", ("val",))):
        (data / split).mkdir()
        for folder in folders:
            for f in (source / folder).glob("*.json"):
                shutil.copyfile(f, data / split / f.name)
    return data


@pytest.mark.parametrize("adapters", ["none", "fac+lin"])
def test_searchqa_original_json_chain(kadapter, searchqa_json, adapters, tmp_path):
    run_name = f"searchqa-json-{adapters}"
    kadapter("finetune", "--backbone", kadapter.backbone, "--task", "searchqa", "--data", searchqa_json, "--adapters", adapters, "--name", run_name,
             "--epochs", "10", *FAST)
    run_dir = kadapter.workdir / "finetuned" / run_name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"dev", "test"}
    if adapters == "none":  # dev repeats two training questions: ten epochs learn them
        assert metrics["dev"]["em"] > 0
    for split in ("dev", "test"):
        assert 0 <= metrics[split]["em"] <= metrics[split]["f1"] <= 100

    # one line per question, in input order (files sorted by name), the answer strings as gold
    lines = _lines(run_dir / "predictions-test.jsonl")
    assert [(x["index"], x["id"], x["gold"]) for x in lines] == [(0, "528", ["tried & treed"]),
                                                                  (1, "1506", ["Joseph Smith"])]
    assert all(len(x["pred"]) == 1 and isinstance(x["pred"][0], str) for x in lines)
    assert json.loads((run_dir / "answers-test.json").read_text()) == {x["id"]: x["pred"][0] for x in lines}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stats"]["skipped_bad_questions"] == 0 and manifest["stats"]["train_examples"] > 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task_options"]["max_paragraphs"] == 4 and config["task_options"]["combine"] == "max"

    _evaluate_recomputes(kadapter, run_dir, searchqa_json, "test")

    # predict: a question folder as it comes, and records without answers
    out = _lines_of(kadapter("predict", run_dir, searchqa_json / "test").stdout)
    assert [x["id"] for x in out] == ["528", "1506"] and [x["pred"] for x in out] == [x["pred"] for x in lines]
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": "q", "question": "Which island?", "paragraphs": ["Pythagoras was born on Samos."]}) + "\n")
    (line,) = _lines_of(kadapter("predict", run_dir, new).stdout)
    assert line["id"] == "q" and line["gold"] == [] and line["pred"][0] in "Pythagoras was born on Samos."


def _lines_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_searchqa_mrqa_chain_with_adapters(kadapter, shared_data, tmp_path):
    # The MRQA sample holds one question: it is both the train and the dev split here.
    sample = shared_data / "searchqa" / "mrqa" / "SearchQA-dev.hf-dummy.jsonl"
    for split in ("train", "dev"):
        shutil.copyfile(sample, tmp_path / f"{split}.jsonl")
    kadapter("finetune", "--backbone", kadapter.backbone, "--task", "searchqa", "--data", tmp_path, "--adapters", "fac,lin", "--name", "searchqa-mrqa",
             "--epochs", "3", *FAST)
    run_dir = kadapter.workdir / "finetuned" / "searchqa-mrqa"
    (line,) = _lines(run_dir / "predictions-dev.jsonl")
    assert line["id"] == "e7528ab96f1a4351bdff5a095bff1b35" and line["gold"] == ["Rocky"]
    _evaluate_recomputes(kadapter, run_dir, tmp_path, "dev")
    (predicted,) = _lines_of(kadapter("predict", run_dir, sample).stdout)
    assert predicted["pred"] == line["pred"]

    # --scores: the predicted answer's combined span probability; --all-scores: every candidate, best first
    (scored,) = _lines_of(kadapter("predict", "--scores", run_dir, sample).stdout)
    assert list(scored["scores"]) == line["pred"] and 0 < scored["scores"][line["pred"][0]] <= 1
    (every,) = _lines_of(kadapter("predict", "--all-scores", run_dir, sample).stdout)
    ranked = list(every["scores"].values())
    assert len(ranked) > 1 and ranked == sorted(ranked, reverse=True)
    assert next(iter(every["scores"])) == line["pred"][0] and every["scores"][line["pred"][0]] == scored["scores"][line["pred"][0]]


def test_quasart_openqa_format_chain(kadapter, shared_data, tmp_path):
    # Real Quasar-T questions and answers; the paragraphs are made up (the sample has none).
    questions = quasart_questions(shared_data, 36)
    write_openqa(tmp_path, "train", questions[:24])
    write_openqa(tmp_path, "dev", questions[24:30])
    write_openqa(tmp_path, "test", questions[30:])
    kadapter("finetune", "--backbone", kadapter.backbone, "--task", "quasart", "--data", tmp_path, "--name", "quasart-openqa", "--epochs", "2", *FAST)
    run_dir = kadapter.workdir / "finetuned" / "quasart-openqa"
    lines = _lines(run_dir / "predictions-test.jsonl")
    assert [x["gold"] for x in lines] == [q["answers"] for q in questions[30:]]
    assert [x["id"] for x in lines] == [str(n) for n in range(1, 7)]  # OpenQA has no ids: the line numbers
    _evaluate_recomputes(kadapter, run_dir, tmp_path, "test")
    assert _hashed_inputs(run_dir) == {tmp_path / f"{split}.{ext}" for split in ("train", "dev", "test")
                                       for ext in ("txt", "json")}
    out = _lines_of(kadapter("predict", run_dir, tmp_path / "test.txt").stdout)
    assert [x["pred"] for x in out] == [x["pred"] for x in lines]

    # decoding options of the saved model can be changed for new data: one-sub-token answers
    assert any(" " in x["pred"][0] for x in lines)  # the 30-sub-token default gives longer ones here
    short = _lines_of(kadapter("predict", run_dir, tmp_path / "test.txt", "--max-answer-length", "1").stdout)
    assert all(" " not in x["pred"][0] for x in short) and [x["id"] for x in short] == [x["id"] for x in lines]
    evaluated = json.loads(kadapter("evaluate", run_dir, "--data", tmp_path, "--split", "test", "--max-answer-length", "1",
                                    "--max-paragraphs", "1", "--out", tmp_path / "short", "--json").stdout)
    assert set(evaluated) == {"em", "f1"}
    assert all(" " not in x["pred"][0] for x in _lines(tmp_path / "short" / "predictions-test.jsonl"))


@pytest.mark.parametrize("flag", [["--max-paragraphs", "3"], ["--no-answer", "cls"], ["--max-answer-length", "5"], ["--skip-bad"]])
def test_qa_flags_are_refused_by_tasks_without_the_option(kadapter, flag, tmp_path):
    result = kadapter("finetune", "--backbone", kadapter.backbone, "--task", "openentity", "--data", tmp_path, *flag, code=2)
    option = flag[0][2:].replace("-", "_")
    assert f"task 'openentity' has no option '{option}'" in result.output


def test_quasart_official_format_chain_with_a_composition(kadapter, shared_data, tmp_path):
    # Real questions, made-up contexts files (the official ones are not available offline).
    questions = quasart_questions(shared_data, 30)
    write_quasar(tmp_path, "train", questions[:24])
    write_quasar(tmp_path, "dev", questions[24:])
    kadapter("finetune", "--backbone", kadapter.backbone, "--task", "quasart", "--data", tmp_path, "--adapters", "fac+lin", "--name", "quasart-official",
             "--epochs", "2", *FAST, "--no-answer", "cls", "--task-option", "combine=sum")
    run_dir = kadapter.workdir / "finetuned" / "quasart-official"
    lines = _lines(run_dir / "predictions-dev.jsonl")
    assert [x["id"] for x in lines] == [q["question_id"] for q in questions[24:]]
    config = json.loads((run_dir / "config.json").read_text())["task_options"]
    assert (config["no_answer"], config["combine"], config["max_paragraphs"]) == ("cls", "sum", 4)
    _evaluate_recomputes(kadapter, run_dir, tmp_path, "dev")
    # every file read is hashed: the questions and the contexts of each split
    def split_files(split: str) -> set[Path]:
        return {tmp_path / "questions" / f"{split}_questions.json.gz", tmp_path / "contexts" / "short" / f"{split}_contexts.json.gz"}

    task_inputs = {p for p in _hashed_inputs(run_dir) if tmp_path in p.parents}  # the rest: the adapters
    assert task_inputs == split_files("train") | split_files("dev")
    assert _hashed_inputs(kadapter.workdir / "evaluations" / f"{run_dir.name}-dev") == split_files("dev")
    card = yaml.safe_load((run_dir / "README.md").read_text().split("---")[1])  # the Hub's front matter
    assert card["pipeline_tag"] == "feature-extraction"  # the standard pipeline that runs it
    assert {r["task"]["type"] for r in card["model-index"][0]["results"]} == {"question-answering"}


def _hashed_inputs(folder: Path) -> set[Path]:
    """The files a manifest lists as inputs, each with a hash of its bytes."""
    inputs = json.loads((folder / "manifest.json").read_text())["inputs"]
    assert all(i["sha256"] == hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() for i in inputs)
    return {Path(i["path"]) for i in inputs}


def test_bad_question_exits_2_naming_file_and_line_or_is_skipped_and_counted(kadapter, shared_data, tmp_path):
    questions = quasart_questions(shared_data, 12)
    write_openqa(tmp_path, "train", questions[:8])
    _, dev_paragraphs = write_openqa(tmp_path, "dev", questions[8:])
    lines = dev_paragraphs.read_text().splitlines()
    lines[2] = "[]"  # the third dev question has no paragraphs
    dev_paragraphs.write_text("\n".join(lines) + "\n")
    result = kadapter("finetune", "--backbone", kadapter.backbone, "--task", "quasart", "--data", tmp_path, "--name", "bad", "--epochs", "1", *FAST,
                      code=2)
    assert "dev.json, line 3: the question has no paragraphs" in result.output
    assert not (kadapter.workdir / "finetuned" / "bad").exists()
    kadapter("finetune", "--backbone", kadapter.backbone, "--task", "quasart", "--data", tmp_path, "--name", "bad", "--epochs", "1", *FAST,
             "--skip-bad")
    run_dir = kadapter.workdir / "finetuned" / "bad"
    stats = json.loads((run_dir / "manifest.json").read_text())["stats"]
    assert (stats["skipped_bad_questions"], stats["questions_without_paragraphs"]) == (0, 1)
    assert len(_lines(run_dir / "predictions-dev.jsonl")) == 4  # the question without paragraphs scores as wrong
