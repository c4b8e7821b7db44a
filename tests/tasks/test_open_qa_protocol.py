"""SearchQA / Quasar-T scored as the protocols score them, decoded as the model was trained (docs/tasks.md).

- `--no-answer cls`: span probabilities under the training softmax (with `<s>`), so a window's
  no-answer mass lowers its spans;
- OpenQA's files: gold answers tokenised like the paragraphs, for matching and for EM/F1;
- distant supervision on the answer's words, articles kept;
- `--combine sum`: a span in the overlap of two windows of one paragraph counted once;
- `--skip-bad`: a dev/test question left without paragraphs scored as wrong, and counted;
- the `max_answer_length` default listed among the documented differences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.qa_samples import kadapter_in

from kadapter_cli.tasks import get_task, metrics
from kadapter_cli.tasks.open_qa.encoding import answer_char_spans
from kadapter_cli.tasks.open_qa.formats import detect_input, read_qa
from kadapter_cli.tasks.open_qa.ptb import ptb_join, ptb_tokenize
from kadapter_cli.tasks.open_qa.task import window_spans

REPO = Path(__file__).resolve().parents[2]
FAST = ["--batch-size", "4", "--lr", "2e-3", "--max-length", "64"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_openqa(folder: Path, split: str, questions: list[dict], paragraphs: list[list[str]]) -> Path:
    """thunlp/OpenQA's two files: answers raw in the `.txt`, paragraphs as token lists in the `.json`."""
    _write_jsonl(folder / f"{split}.txt", [{"question": q["question"], "answers": q["answers"]} for q in questions])
    _write_jsonl(folder / f"{split}.json", [[{"question": q["question"].split(), "document": p.split()} for p in ps]
                                            for q, ps in zip(questions, paragraphs)])
    return folder / f"{split}.txt"


# ---------------------------------------------------------------- 1. --no-answer cls decodes as it trains


def _two_windows() -> tuple[torch.Tensor, dict]:
    """Two windows `<s> p p p p </s>`: a no-answer window whose `<s>` logit is 12 with a stray
    paragraph logit of 2, and the answer window (`<s>` logit 0, the answer's logit 1.5)."""
    no_answer = torch.tensor([12.0, 2.0, 0.0, 0.0, 0.0, -5.0])
    answer = torch.tensor([0.0, 1.5, 0.0, 0.0, 0.0, -5.0])
    logits = torch.stack([torch.stack([no_answer, no_answer], -1), torch.stack([answer, answer], -1)])
    context = torch.tensor([[False, True, True, True, True, False]] * 2)
    return logits, context


def test_cls_windows_score_spans_under_the_training_softmax():
    logits, context = _two_windows()
    answer_mask = context.clone()
    answer_mask[:, 0] = True  # no_answer=cls: <s> is in the loss's softmax
    (no_answer, answer) = window_spans(logits, {"context_mask": context, "answer_mask": answer_mask}, 30)
    # as trained: e^2 / (e^12 + e^2 + 3), squared — the window's no-answer mass lowers its span
    stray = (math.exp(2) / (math.exp(12) + math.exp(2) + 3)) ** 2
    assert no_answer[0][1:] == (1, 1) and no_answer[0][0] == pytest.approx(stray, rel=1e-4)
    assert no_answer[0][0] < 3e-9
    expected = (math.exp(1.5) / (1 + math.exp(1.5) + 3)) ** 2
    assert answer[0][1:] == (1, 1) and answer[0][0] == pytest.approx(expected, rel=1e-4)


def test_skip_windows_keep_the_paragraph_softmax():
    # no_answer=skip never trains <s>: the softmax stays over the paragraph, as it trained
    logits, context = _two_windows()
    (no_answer, answer) = window_spans(logits, {"context_mask": context, "answer_mask": context}, 30)
    assert no_answer[0][0] == pytest.approx((math.exp(2) / (math.exp(2) + 3)) ** 2, rel=1e-4)  # 0.51
    assert answer[0][0] == pytest.approx((math.exp(1.5) / (math.exp(1.5) + 3)) ** 2, rel=1e-4)  # 0.36


def _cls_records() -> list[dict]:
    """Each question: a paragraph that names the answer, and one of a single word (one sub-token
    of the tiny vocabulary) that holds no answer: over its own paragraph alone, its only span would
    have probability 1."""
    words = ["city", "river", "book", "school", "music", "water"]
    return [{"id": str(i), "question": f"Where was person {i} born?", "answers": [word],
             "paragraphs": [f"{word} is where person {i} was born .", "island"]}
            for i, word in enumerate(words)]


def test_a_no_answer_paragraph_does_not_win_after_cls_training(tiny_backbone, tmp_path):
    data = tmp_path / "data"
    records = _cls_records()
    for split in ("train", "dev"):
        _write_jsonl(data / f"{split}.jsonl", records)
    run = kadapter_in(tmp_path / "work")
    run("finetune", "--backbone", tiny_backbone, "--task", "searchqa", "--data", data, "--name", "cls",
        "--no-answer", "cls", "--epochs", "25", *FAST)
    run_dir = run.workdir / "finetuned" / "cls"
    evaluated = json.loads(run("evaluate", run_dir, "--data", data, "--split", "dev", "--json").stdout)
    lines = _lines(run.workdir / "evaluations" / "cls-dev" / "predictions-dev.jsonl")
    assert [x["pred"][0] for x in lines] == [r["answers"][0] for r in records]
    assert evaluated == {"em": 100.0, "f1": 100.0}


# ---------------------------------------------------------------- 2. OpenQA answers tokenised like the paragraphs


@pytest.mark.parametrize("text, tokens", [
    ("halley's comet", ["halley", "'s", "comet"]),
    ("Don't, can't, won't", ["Do", "n't", ",", "ca", "n't", ",", "wo", "n't"]),
    ("you\u2019re so vain", ["you", "'re", "so", "vain"]),
    ("the players' ball", ["the", "players", "'", "ball"]),
    ("cannot gonna", ["can", "not", "gon", "na"]),
    ("x-ray, -word and word- -- pass", ["x-ray", ",", "-", "word", "and", "word", "-", "--", "pass"]),
    ("audi \u2013 vorsprung", ["audi", "--", "vorsprung"]),
    ('the "Mystery Train" (1954).', ["the", "``", "Mystery", "Train", "''", "(", "1954", ")", "."]),
    ("-LRB- n -RRB-", ["(", "n", ")"]),
    ("100,000 at 3:30; a,b", ["100,000", "at", "3:30", ";", "a", ",", "b"]),
    ("st. louis, c.s. forester, u.s.", ["st.", "louis", ",", "c.s.", "forester", ",", "u.s."]),
    ("the end.", ["the", "end", "."]),
    ("$5 or 50% #1", ["$", "5", "or", "50", "%", "#", "1"]),
    ("t'pau o'neill 'tis", ["t'pau", "o'neill", "'t", "is"]),
])
def test_ptb_tokenisation_of_the_cases_that_matter(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_three_of_the_300_real_quasart_answers_compare_differently_once_tokenised(shared_data):
    questions = json.loads((shared_data / "quasar-t" / "quasarT-dev.first300.json").read_text())
    changed = [q["answers"][0] for q in questions
               if metrics.squad_normalize(ptb_join(q["answers"][0])) != metrics.squad_normalize(q["answers"][0])]
    assert changed == ["halley's comet", "shem - noah's son", "santa's little helper"]
    # a perfect reader over CoreNLP-tokenised paragraphs returns the tokenised span: scored against the
    # raw answers, it loses those three questions
    raw = metrics.extractive_qa_metrics([q["answers"] for q in questions], [ptb_join(q["answers"][0]) for q in questions])
    assert raw["em"] == pytest.approx(99.0)
    tokenised = metrics.extractive_qa_metrics([[ptb_join(a) for a in q["answers"]] for q in questions],
                                              [ptb_join(q["answers"][0]) for q in questions])
    assert tokenised == {"em": 100.0, "f1": 100.0}


def test_openqa_answers_are_matched_and_scored_under_the_paragraphs_tokenisation(tmp_path):
    txt = _write_openqa(tmp_path, "dev", [{"question": "Which comet returns every 76 years ?", "answers": ["halley's comet"]}],
                        [["the return of halley 's comet was seen in 1986 ."]])
    (record,) = read_qa(detect_input(txt)).records
    assert record["answers"] == ["halley 's comet"]  # as OpenQA's read_data tokenises them
    (span,) = answer_char_spans(record["paragraphs"][0], record["answers"])
    assert record["paragraphs"][0][slice(*span)] == "halley 's comet"
    assert metrics.extractive_qa_metrics([record["answers"]], ["halley 's comet"]) == {"em": 100.0, "f1": 100.0}
    # other formats keep the SQuAD scoring of the raw answer
    records = _write_jsonl(tmp_path / "records.jsonl", [{"id": "q", "question": "Which comet?", "answers": ["halley's comet"],
                                                         "paragraphs": ["the return of Halley's comet"]}])
    assert read_qa(detect_input(records)).records[0]["answers"] == ["halley's comet"]


def test_an_openqa_question_with_an_apostrophe_gets_its_training_label(tiny_backbone, tmp_path):
    questions = [{"question": "Which comet returns every 76 years ?", "answers": ["halley's comet"]},
                 {"question": "Which helper has four legs ?", "answers": ["santa's little helper"]}]
    paragraphs = [["the return of halley 's comet was seen in 1986 .", "a comet is a ball of ice and dust ."],
                  ["the dog santa 's little helper lives with the simpsons .", "a helper is someone who helps ."]]
    for split in ("train", "dev"):
        _write_openqa(tmp_path / "data", split, questions, paragraphs)
    run = kadapter_in(tmp_path / "work")
    run("finetune", "--backbone", tiny_backbone, "--task", "quasart", "--data", tmp_path / "data", "--name", "oq",
        "--epochs", "1", *FAST)
    run_dir = run.workdir / "finetuned" / "oq"
    assert json.loads((run_dir / "manifest.json").read_text())["stats"]["train_examples"] == 2  # one labelled window each
    assert [x["gold"] for x in _lines(run_dir / "predictions-dev.jsonl")] == [["halley 's comet"], ["santa 's little helper"]]


# ---------------------------------------------------------------- 3. distant supervision keeps articles


def test_distant_supervision_matches_the_answers_words_articles_kept():
    paragraph = "The Who played first. Who knows who came next?"
    assert [paragraph[s:e] for s, e in answer_char_spans(paragraph, ["The Who"])] == ["The Who"]
    paragraph = "vitamin C and vitamin A"
    assert [paragraph[s:e] for s, e in answer_char_spans(paragraph, ["Vitamin A"])] == ["vitamin A"]
    # punctuation and case still do not matter
    paragraph = "LOU GEHRIG played"
    assert [paragraph[s:e] for s, e in answer_char_spans(paragraph, ["(Lou) Gehrig"])] == ["LOU GEHRIG"]
    assert answer_char_spans("the end", ["the"]) == []  # an answer with no word but an article matches nothing


def test_finetune_labels_the_who_and_vitamin_a_only_where_the_articles_match(tiny_backbone, tmp_path):
    # As the docs run it: OpenQA files, `--task-option combine=sum`, then `kadapter evaluate`. With the
    # articles dropped, "The Who" would label each paragraph's "who" and "Vitamin A" the "vitamin" of
    # "vitamin C": 5 labelled windows instead of 2.
    questions = [{"question": "Which band recorded the rock opera Tommy ?", "answers": ["The Who"]},
                 {"question": "Which vitamin are carrots rich in ?", "answers": ["Vitamin A"]}]
    paragraphs = [["The Who recorded the rock opera Tommy in 1969 .", "nobody knows who wrote the first rock opera .",
                   "who played at the festival that year is not known ."],
                  ["carrots are rich in vitamin A and in fibre .", "oranges are rich in vitamin C and in water ."]]
    for split in ("train", "dev"):
        _write_openqa(tmp_path / "data", split, questions, paragraphs)
    run = kadapter_in(tmp_path / "work")
    run("finetune", "--backbone", tiny_backbone, "--task", "quasart", "--data", tmp_path / "data", "--name", "who",
        "--task-option", "combine=sum", "--epochs", "1", *FAST)
    run_dir = run.workdir / "finetuned" / "who"
    assert json.loads((run_dir / "manifest.json").read_text())["stats"]["train_examples"] == 2
    evaluated = json.loads(run("evaluate", run_dir, "--data", tmp_path / "data", "--split", "dev", "--json").stdout)
    lines = _lines(run.workdir / "evaluations" / "who-dev" / "predictions-dev.jsonl")
    assert [x["gold"] for x in lines] == [["The Who"], ["Vitamin A"]]
    assert evaluated == pytest.approx(metrics.extractive_qa_metrics([x["gold"] for x in lines], [x["pred"] for x in lines]))


# ---------------------------------------------------------------- 4. --combine sum counts a span once


def test_sum_counts_a_span_in_the_overlap_of_two_windows_once(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_backbone)
    filler = " ".join(f"word{i}" for i in range(12))
    record = {"id": "q", "question": "Where?", "answers": ["Samos"],
              "paragraphs": [f"{filler} Samos {filler}", "Davos is a town ."]}
    task = get_task("searchqa", combine="sum", stride=16)
    windows = task.examples(tokenizer, record, {}, 40)
    for w in windows:
        w["record"] = 0

    def span_of(window: dict, word: str) -> list | None:
        """`[start, end]` positions of `word` in the window, None when the window does not hold all of it."""
        lo = window["paragraph"].index(word)
        inside = [i for i, (s, e) in enumerate(window["offsets"]) if s < lo + len(word) and e > lo]
        if not inside or window["offsets"][inside[0]][0] > lo or window["offsets"][inside[-1]][1] < lo + len(word):
            return None
        return [window["context_start"] + inside[0], window["context_start"] + inside[-1]]

    samos = [(w, span_of(w, "Samos")) for w in windows if w["paragraph"].startswith("word0")]
    holding = [(w, s) for w, s in samos if s is not None]
    assert len(holding) == 2  # the answer lies in the overlap of the paragraph's two windows
    davos = next(w for w in windows if w["paragraph"].startswith("Davos"))
    predictions = []
    for w in windows:
        if w is davos:
            predictions.append({"pred": [], "spans": [[0.9, *span_of(w, "Davos")]]})
        elif any(w is h for h, _ in holding):
            probability = 0.6 if w is holding[0][0] else 0.5
            predictions.append({"pred": [], "spans": [[probability, *span_of(w, "Samos")]]})
        else:
            predictions.append({"pred": [], "spans": []})
    ((_, ranked),) = task.ranked_answers(predictions, windows)
    assert ranked == [("Davos", 0.9), ("Samos", 0.6)]  # 0.6 once, not 0.6 + 0.5
    # the same answer in two paragraphs still adds up
    twice = [{"pred": [], "spans": [[0.6, *span_of(w, "Samos")]]} if w is holding[0][0] else
             {"pred": [], "spans": [[0.5, *span_of(w, "Davos")]]} if w is davos else {"pred": [], "spans": []}
             for w in windows]
    assert task.ranked_answers(twice, windows)[0][1] == [("Samos", 0.6), ("Davos", 0.5)]


def _overlap_records(tokenizer, max_length: int, stride: int) -> list[dict]:
    """A question whose one paragraph is cut into two windows that both hold the answer (in their
    overlap), then the same question over each window's text alone, and over both texts as two
    paragraphs. Each text re-encodes to the very window it came from."""
    words = ["city", "river", "book", "school", "music", "water", "forest", "harbor", "mountain", "village",
             "museum", "library", "bridge", "garden", "storm", "winter", "morning", "factory", "hospital", "lake"]
    paragraph = " ".join([*words[:12], "island", *words[12:]])
    record = {"id": "long", "question": "Where?", "answers": ["island"], "paragraphs": [paragraph]}
    task = get_task("searchqa", stride=stride)
    windows = task.examples(tokenizer, record, {}, max_length)
    texts = [w["paragraph"][w["offsets"][0][0]: w["offsets"][-1][1]] for w in windows]
    assert len(texts) == 2 and all(t.split().count("island") == 1 for t in texts)  # the answer in the overlap
    alone = [task.examples(tokenizer, {**record, "paragraphs": [t]}, {}, max_length) for t in texts]
    assert [[w["input_ids"] for w in a] for a in alone] == [[w["input_ids"]] for w in windows]
    return [record, *({**record, "id": f"window{i}", "paragraphs": [t]} for i, t in enumerate(texts)),
            {**record, "id": "both", "paragraphs": texts}]


def test_evaluate_with_sum_scores_an_answer_in_two_overlapping_windows_once(tiny_backbone, tmp_path):
    from kadapter_cli.modeling.backbone import load_tokenizer

    records = _overlap_records(load_tokenizer(tiny_backbone), 24, 8)
    for split in ("train", "dev"):
        _write_jsonl(tmp_path / "data" / f"{split}.jsonl", records)
    # As the docs run it: `--task-option combine=sum` at fine-tuning, then `kadapter evaluate` (here
    # `--all-scores`, to read each answer's combined score). The model learns where the answer is.
    run = kadapter_in(tmp_path / "work")
    run("finetune", "--backbone", tiny_backbone, "--task", "searchqa", "--data", tmp_path / "data", "--name", "sum",
        "--task-option", "combine=sum", "--task-option", "stride=8", "--max-length", "24",
        "--epochs", "15", "--batch-size", "4", "--lr", "1e-2")
    run_dir = run.workdir / "finetuned" / "sum"
    run("evaluate", run_dir, "--data", tmp_path / "data", "--split", "dev", "--all-scores")
    scores = {x["id"]: x["scores"]["island"] for x in _lines(run.workdir / "evaluations" / "sum-dev" / "predictions-dev.jsonl")}
    first, second = scores["window0"], scores["window1"]  # the answer's probability in each window
    assert scores["both"] == pytest.approx(first + second, abs=2e-6)  # two paragraphs: two occurrences, summed
    assert scores["long"] == pytest.approx(max(first, second), abs=2e-6)  # one occurrence, seen by two windows


# ---------------------------------------------------------------- 5. --skip-bad scores a question without paragraphs as wrong


def test_skip_bad_scores_a_question_left_without_paragraphs_as_wrong(tiny_backbone, tmp_path):
    questions = [{"question": f"Where was person {i} born ?", "answers": [city]}
                 for i, city in enumerate(["Samos", "Paris", "Rome", "Oslo"])]
    paragraphs = [[f"{q['answers'][0]} is where person {i} was born , as all books say ."] for i, q in enumerate(questions)]
    _write_openqa(tmp_path / "data", "train", questions, paragraphs)
    dev = [*paragraphs[:2], ["too short to keep"], paragraphs[3]]  # OpenQA drops paragraphs of ≤ 5 tokens
    _write_openqa(tmp_path / "data", "dev", questions, dev)
    run = kadapter_in(tmp_path / "work")
    refused = run("finetune", "--backbone", tiny_backbone, "--task", "quasart", "--data", tmp_path / "data", "--name", "bad",
                  "--epochs", "1", *FAST, code=2)
    assert "dev.json, line 3: the question has no paragraphs" in refused.output
    run("finetune", "--backbone", tiny_backbone, "--task", "quasart", "--data", tmp_path / "data", "--name", "bad",
        "--epochs", "1", *FAST, "--skip-bad")
    run_dir = run.workdir / "finetuned" / "bad"
    lines = _lines(run_dir / "predictions-dev.jsonl")
    assert [x["id"] for x in lines] == ["1", "2", "3", "4"] and lines[2]["pred"] == [""]
    saved = json.loads((run_dir / "metrics.json").read_text())["dev"]
    assert saved == pytest.approx(metrics.extractive_qa_metrics([x["gold"] for x in lines], [x["pred"] for x in lines]))
    assert saved["em"] <= 75.0  # the question without paragraphs counts, as wrong
    stats = json.loads((run_dir / "manifest.json").read_text())["stats"]
    assert (stats["skipped_bad_questions"], stats["questions_without_paragraphs"]) == (0, 1)
    evaluated = json.loads(run("evaluate", run_dir, "--data", tmp_path / "data", "--split", "dev", "--skip-bad",
                               "--json").stdout)
    assert evaluated == pytest.approx(saved)
    evaluation = run.workdir / "evaluations" / "bad-dev"
    assert json.loads((evaluation / "manifest.json").read_text())["stats"]["questions_without_paragraphs"] == 1


def test_finetune_and_evaluate_say_how_many_questions_were_skipped_or_left_without_paragraphs(tiny_backbone, tmp_path):
    questions = [{"question": f"Where was person {i} born ?", "answers": [city]}
                 for i, city in enumerate(["Samos", "Paris", "Rome", "Oslo"])]
    paragraphs = [[f"{q['answers'][0]} is where person {i} was born , as all books say ."] for i, q in enumerate(questions)]
    short = ["too short to keep"]  # OpenQA drops paragraphs of ≤ 5 tokens
    train = [*questions[:2], {**questions[2], "answers": []}, questions[3]]  # no answers: a bad question
    _write_openqa(tmp_path / "data", "train", train, [*paragraphs[:3], short])
    _write_openqa(tmp_path / "data", "dev", questions, [*paragraphs[:2], short, paragraphs[3]])
    run = kadapter_in(tmp_path / "work")
    trained = run("finetune", "--backbone", tiny_backbone, "--task", "quasart", "--data", tmp_path / "data",
                  "--name", "told", "--epochs", "1", *FAST, "--skip-bad", "--json")
    assert "train.txt: 1 bad question skipped" in trained.stderr
    assert "train.txt: 1 question without paragraphs: left out of training" in trained.stderr
    assert "dev.txt: 1 question without paragraphs: scored as wrong" in trained.stderr
    assert trained.stderr.count("skipped") == 1 and trained.stderr.count("without paragraphs") == 2
    json.loads(trained.stdout)  # stdout stays the metrics
    run_dir = run.workdir / "finetuned" / "told"
    stats = json.loads((run_dir / "manifest.json").read_text())["stats"]
    assert (stats["skipped_bad_questions"], stats["questions_without_paragraphs"]) == (1, 2)
    # evaluate --no-save writes no manifest: the count is printed
    evaluated = run("evaluate", run_dir, "--data", tmp_path / "data", "--split", "dev", "--skip-bad", "--no-save")
    assert "dev.txt: 1 question without paragraphs: scored as wrong" in evaluated.stderr
    assert "skipped" not in evaluated.stderr and not (run.workdir / "evaluations").exists()


# ---------------------------------------------------------------- 9. the answer-length default is a documented difference


def test_the_answer_length_default_is_listed_among_the_differences():
    assert get_task("quasart").max_answer_length == 30
    table = (REPO / "docs" / "differences.md").read_text()
    row = next((line for line in table.splitlines() if "max_answer_length" in line), "")
    assert "15 words" in row and "30" in row and "sub-token" in row
