"""SearchQA / Quasar-T readers: the four formats users hold → `{id, question, answers, paragraphs}`,
format detection, OpenQA's paragraph rules, and bad input naming the file and line."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from helpers.qa_samples import made_up_paragraphs, quasart_questions, write_openqa, write_quasar

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks.open_qa.formats import QAReadOptions, detect_input, find_split, read_qa


@pytest.fixture(scope="module")
def searchqa(shared_data) -> Path:
    return shared_data / "searchqa"


def test_original_searchqa_folder_one_record_per_question_file(searchqa):
    data = read_qa(detect_input(searchqa / "original-json" / "raw_jeopardy"))
    assert data.source.format == "searchqa" and data.skipped == 0
    first, second = data.records
    raw = json.loads(next((searchqa / "original-json" / "raw_jeopardy").glob("030000-*.json")).read_text())
    assert first["id"] == "30000" and first["question"] == raw["question"] and first["answers"] == ["Samos"]
    assert first["paragraphs"] == [r["snippet"].strip() for r in raw["search_results"] if r["snippet"].strip()]
    assert len(first["paragraphs"]) == 50 and len(second["paragraphs"]) == 31


def test_searchqa_titles_and_max_paragraphs(searchqa):
    folder = searchqa / "original-json" / "raw_jeopardy"
    raw = json.loads(next(folder.glob("030000-*.json")).read_text())
    titled = read_qa(detect_input(folder), QAReadOptions(titles=True, max_paragraphs=3)).records[0]
    assert len(titled["paragraphs"]) == 3
    result = raw["search_results"][0]
    assert titled["paragraphs"][0] == f"{result['title'].strip()}\n{result['snippet'].strip()}"


def test_searchqa_zip_per_split_reads_like_the_folder(searchqa, tmp_path):
    with zipfile.ZipFile(tmp_path / "val.zip", "w") as z:  # the layout of the SearchQA release: val/*.json
        for f in sorted((searchqa / "original-json" / "val").glob("*.json")):
            z.write(f, f"val/{f.name}")
    source = find_split(tmp_path, "dev")  # SearchQA calls its dev split "val"
    assert source.format == "searchqa" and source.main.name == "val.zip"
    assert read_qa(source).records == read_qa(detect_input(searchqa / "original-json" / "val")).records
    assert [r["answers"] for r in read_qa(source).records] == [["tried & treed"], ["Joseph Smith"]]


def test_mrqa_jsonl_and_gzip(searchqa, tmp_path):
    path = searchqa / "mrqa" / "SearchQA-dev.hf-dummy.jsonl"
    (record,) = read_qa(detect_input(path)).records
    assert record["id"] == "e7528ab96f1a4351bdff5a095bff1b35"
    assert record["question"] == '1976: "A Single Colorado Mountain"' and record["answers"] == ["Rocky"]
    # 4 [DOC]s, each "[TLE] title [PAR] snippet": the snippets are the paragraphs
    assert len(record["paragraphs"]) == 4
    assert record["paragraphs"][0].startswith("May 30, 2007 ...")
    assert "Rocky" in record["paragraphs"][1] and not any("[PAR]" in p or "[TLE]" in p for p in record["paragraphs"])
    titled = read_qa(detect_input(path), QAReadOptions(titles=True)).records[0]
    assert titled["paragraphs"][0].startswith("J! Archive - Show #5243, aired 2007-05-30\nMay 30, 2007")
    (tmp_path / "dev").mkdir()
    with gzip.open(tmp_path / "dev" / "SearchQA.jsonl.gz", "wb") as f:  # MRQA's own layout: dev/SearchQA.jsonl.gz
        f.write(path.read_bytes())
    source = find_split(tmp_path, "dev")
    assert source.format == "mrqa"
    assert read_qa(source).records == [record]


def test_mrqa_span_outside_its_context_names_file_and_line(searchqa, tmp_path):
    header, line = (searchqa / "mrqa" / "SearchQA-dev.hf-dummy.jsonl").read_text().splitlines()
    context = json.loads(line)
    good = json.dumps(context)
    context["qas"][0]["detected_answers"][0]["char_spans"] = [[367, len(context["context"])]]  # end inclusive
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join([header, good, json.dumps(context)]) + "\n")
    with pytest.raises(BadInput, match=r"dev\.jsonl, line 3: answer char span .* is outside its context"):
        read_qa(detect_input(path))
    data = read_qa(detect_input(path), QAReadOptions(skip_bad=True))
    assert len(data.records) == 1 and data.skipped == 1


def test_openqa_pair_of_files_from_real_quasart_questions(shared_data, tmp_path):
    # The real Quasar-T sample has no passages: the paragraphs are made up (tests/helpers/qa_samples.py).
    questions = quasart_questions(shared_data, 5)
    write_openqa(tmp_path, "dev", questions)
    source = find_split(tmp_path, "dev")
    assert source.format == "openqa"
    records = read_qa(source).records
    assert [r["question"] for r in records] == [q["question"] for q in questions]
    assert [r["answers"] for r in records] == [q["answers"] for q in questions]
    # OpenQA drops paragraphs of 5 tokens or fewer: the third made-up one goes
    assert records[0]["paragraphs"] == made_up_paragraphs(questions, 0)[:2]
    assert read_qa(source, QAReadOptions(max_paragraphs=1)).records[0]["paragraphs"] == made_up_paragraphs(questions, 0)[:1]


def test_openqa_line_counts_must_agree(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 3)
    txt, js = write_openqa(tmp_path, "dev", questions)
    js.write_text("\n".join(js.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(BadInput, match=r"dev\.txt, line 3: has more lines than dev\.json"):
        read_qa(find_split(tmp_path, "dev"), QAReadOptions(skip_bad=True))  # never skippable


def test_question_without_paragraphs_is_bad_or_skipped(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 3)
    txt, js = write_openqa(tmp_path, "dev", questions)
    lines = js.read_text().splitlines()
    lines[1] = json.dumps([{"question": ["q"], "document": ["only", "five", "tokens", "in", "here"]}])
    js.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput, match=r"dev\.json, line 2: the question has no paragraphs"):
        read_qa(find_split(tmp_path, "dev"))
    # with skip_bad it is kept without paragraphs (scored as wrong on dev/test), and counted apart
    data = read_qa(find_split(tmp_path, "dev"), QAReadOptions(skip_bad=True))
    assert [r["question"] for r in data.records] == [q["question"] for q in questions]
    assert data.records[1]["paragraphs"] == [] and (data.skipped, data.without_paragraphs) == (0, 1)


def test_official_quasart_files_joined_on_uid(shared_data, tmp_path):
    # Real questions, made-up contexts (the real contexts files are not available offline).
    questions = quasart_questions(shared_data, 4)
    write_quasar(tmp_path, "dev", questions)
    source = find_split(tmp_path, "dev")
    assert source.format == "quasar" and [p.name for p in source.paths] == ["dev_questions.json.gz", "dev_contexts.json.gz"]
    records = read_qa(source).records
    assert [r["id"] for r in records] == [q["question_id"] for q in questions]
    assert records[2]["answers"] == questions[2]["answers"]
    assert records[2]["paragraphs"] == made_up_paragraphs(questions, 2)  # no token rule outside OpenQA
    with pytest.raises(BadInput, match="contexts"):
        find_split(tmp_path, "dev", contexts="long")  # no long contexts written
    long_contexts = tmp_path / "contexts" / "long" / "dev_contexts.json.gz"
    long_contexts.parent.mkdir()
    with gzip.open(long_contexts, "wt") as f:  # long contexts for the first two questions only
        for q in questions[:2]:
            f.write(json.dumps({"uid": q["question_id"], "contexts": [[0.5, "a long pseudo-document"]]}) + "\n")
    with pytest.raises(BadInput, match=r"dev_questions\.json\.gz, line 3: the question has no paragraphs"):
        read_qa(find_split(tmp_path, "dev", contexts="long"))
    assert read_qa(find_split(tmp_path, "dev", contexts="long"), QAReadOptions(skip_bad=True)).without_paragraphs == 2


def test_quasart_context_without_question_names_contexts_file_and_line(shared_data, tmp_path):
    questions = quasart_questions(shared_data, 3)
    q_path, c_path = write_quasar(tmp_path, "dev", questions)
    with gzip.open(q_path, "wt") as f:  # drop the second question
        for q in (questions[0], questions[2]):
            f.write(json.dumps({"uid": q["question_id"], "question": q["question"], "answer": q["answers"][0]}) + "\n")
    with pytest.raises(BadInput, match=rf"dev_contexts\.json\.gz, line 2: context uid '{questions[1]['question_id']}' has no question"):
        read_qa(find_split(tmp_path, "dev"))
    data = read_qa(find_split(tmp_path, "dev"), QAReadOptions(skip_bad=True))
    assert len(data.records) == 2 and data.skipped == 1


def test_predict_inputs_may_lack_answers(tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": "Who?", "paragraphs": ["Lou Gehrig was.", " "]}) + "\n")
    source = detect_input(path)
    assert source.format == "records"
    assert read_qa(source, labeled=False).records == [
        {"id": "q1", "question": "Who?", "answers": [], "paragraphs": ["Lou Gehrig was."]}]
    with pytest.raises(BadInput, match=r"new\.jsonl, line 1: the question has no answers"):
        read_qa(source)


def test_unknown_layout_and_malformed_lines(tmp_path):
    assert find_split(tmp_path, "train") is None
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "x", "paragraphs": ["p"], "answers": ["p"]}\n{broken\n')
    with pytest.raises(BadInput, match=r"train\.jsonl, line 2: malformed JSON"):
        read_qa(find_split(tmp_path, "train"))
    (tmp_path / "other.json").write_text('{"foo": 1}')
    with pytest.raises(BadInput, match="not a QA file"):
        detect_input(tmp_path / "other.json")
    with pytest.raises(BadInput, match="unknown QA format"):
        find_split(tmp_path, "train", format="squad")
