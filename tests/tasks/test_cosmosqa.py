"""CosmosQA through the task interface (docs/tasks.md, "CosmosQA"): the readers on the real sample (JSON Lines and the
authors' CSV), the candidate layout from the tokenizer, bad input, and the whole chain from the
command line — finetune (with and without adapters), evaluate, predict, the leaderboard file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from kadapter_cli.data import encoding
from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import get_task

FAST = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--max-length", "64"]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def sample(shared_data) -> Path:
    return shared_data / "cosmosqa"


def write_split_folder(folder: Path, sample: Path) -> Path:
    """The 300 real JSONL records cut by position: 200 train, 60 dev (`valid.jsonl`), 40 unlabeled test."""
    lines = _lines(sample / "valid.first300.jsonl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(lines[:200]) + "\n")
    (folder / "valid.jsonl").write_text("\n".join(lines[200:260]) + "\n")
    test = [json.loads(x) for x in lines[260:]]
    for record in test:
        del record["label"]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return folder


def write_csv_folder(folder: Path, sample: Path) -> Path:
    """The authors' CSV cut the same way (CRLF and quoting kept): 200 train.csv, 100 valid.csv."""
    raw = (sample / "valid.first300.csv").read_bytes().decode("utf-8")
    header, *rows = raw.split("\r\n")
    rows = [r for r in rows if r]
    assert len(rows) == 300  # no field of the sample holds a newline (its README)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_bytes(("\r\n".join([header, *rows[:200]]) + "\r\n").encode())
    (folder / "valid.csv").write_bytes(("\r\n".join([header, *rows[200:]]) + "\r\n").encode())
    return folder


# ---------------------------------------------------------------- reading


def test_jsonl_and_csv_of_the_real_sample_hold_the_same_records(sample):
    task = get_task("cosmosqa")
    from_jsonl = task.read(sample / "valid.first300.jsonl")
    from_csv = task.read(sample / "valid.first300.csv")
    assert len(from_jsonl) == len(from_csv) == 300
    assert from_jsonl == from_csv
    gold_file = [int(x) for x in _lines(sample / "valid-labels.first300.lst")]
    assert [r["label"] for r in from_jsonl] == gold_file
    first = from_jsonl[0]
    assert first["answers"][1] == "He wants to get married to a different person ." and first["label"] == 1
    assert task.gold(first) == ["1"]


def test_unlabeled_test_records_are_read_for_prediction_but_not_for_training(sample):
    task = get_task("cosmosqa")
    records = task.read(sample / "test.hf-dummy.jsonl", labeled=False)
    assert len(records) == 2 and all(r["label"] is None and not task.has_gold(r) for r in records)
    assert task.gold(records[0]) == []
    with pytest.raises(BadInput, match=r"test.hf-dummy.jsonl.*line 1.*missing field 'label'"):
        task.read(sample / "test.hf-dummy.jsonl")


def test_the_data_folder_may_use_the_datasets_own_file_names(tmp_path, sample):
    task = get_task("cosmosqa")
    files = task.task_files(write_split_folder(tmp_path / "jsonl", sample))
    assert {k: v.name for k, v in files.items()} == {"train": "train.jsonl", "dev": "valid.jsonl",
                                                      "test": "test.jsonl"}
    files = task.task_files(write_csv_folder(tmp_path / "csv", sample))
    assert (files["train"].name, files["dev"].name) == ("train.csv", "valid.csv")
    (tmp_path / "csv" / "valid.jsonl").write_text("")
    with pytest.raises(BadInput, match="dev split is given twice"):
        task.task_files(tmp_path / "csv")


# ---------------------------------------------------------------- encoding


def test_candidates_use_the_tokenizers_pair_separators(tiny_backbone, minilm):
    from kadapter_cli.modeling.backbone import load_tokenizer

    record = {"context": "I went home .", "question": "Why ?", "answers": ["Tired .", "b", "c", "d"], "label": 0}
    roberta = load_tokenizer(str(tiny_backbone))
    features = get_task("cosmosqa").encode(roberta, record, {}, 64)
    assert len(features["input_ids"]) == 4 and features["labels"] == 0 and features["gold"] == ["0"]
    c, q, a = (encoding.text_pieces(roberta, text) for text in ("I went home .", "Why ?", "Tired ."))
    s, e = roberta.convert_tokens_to_ids(["<s>", "</s>"])
    assert features["input_ids"][0] == [s, *c, e, e, *q, e, e, *a, e]  # the paper's layout
    original = get_task("cosmosqa", layout="original").encode(roberta, record, {}, 64)
    assert original["input_ids"][0] == [s, *c, e, *q, e, *a, e]  # the original code's single separators

    bert = load_tokenizer(str(minilm))
    tokens = bert.convert_ids_to_tokens(get_task("cosmosqa").encode(bert, record, {}, 64)["input_ids"][0])
    assert tokens == ["[CLS]", "i", "went", "home", ".", "[SEP]", "why", "?", "[SEP]", "tired", ".", "[SEP]"]


def test_long_candidates_are_truncated_longest_first_to_max_length(tiny_backbone, sample):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_backbone))
    task = get_task("cosmosqa")
    record = task.read(sample / "valid.first300.jsonl")[0]
    context, question = (encoding.text_pieces(tokenizer, record[k]) for k in ("context", "question"))
    s, e = tokenizer.bos_token_id, tokenizer.eos_token_id
    for answer, ids in zip(record["answers"], task.encode(tokenizer, record, {}, 128)["input_ids"]):
        answer = encoding.text_pieces(tokenizer, answer)
        # The long context gives way; the shorter question and answer stay whole.
        kept = 128 - 6 - len(question) - len(answer)
        assert len(context) > kept > max(len(question), len(answer))
        assert ids == [s, *context[:kept], e, e, *question, e, e, *answer, e]


@pytest.mark.parametrize("lengths, budget", [([10, 3, 2], 9), ([5, 5], 7), ([4, 9, 9], 13), ([1, 1], 5), ([7, 0, 3], 4)])
def test_longest_first_truncation_is_hugging_faces_token_by_token_rule(lengths, budget):
    kept = list(lengths)
    while sum(kept) > budget:  # remove one token from the longest; between equals, the later one
        longest = max(kept)
        kept[max(i for i, n in enumerate(kept) if n == longest)] -= 1
    assert encoding.truncate_longest_first(lengths, budget) == kept


# ---------------------------------------------------------------- the model


def test_candidates_are_flattened_for_the_body_and_scored_side_by_side(tiny_backbone, sample):
    import torch

    from kadapter_cli.modeling.backbone import load_backbone, load_tokenizer
    from kadapter_cli.stages.finetune import build_task_model

    task = get_task("cosmosqa")
    tokenizer = load_tokenizer(str(tiny_backbone))
    records = task.read(sample / "valid.first300.jsonl")[:3]
    batch = task.collate([task.encode(tokenizer, r, {}, 64) for r in records], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[:2] == (3, 4) and batch["input_ids"].shape[2] <= 64
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    torch.manual_seed(0)
    model = build_task_model(task, [], {}, "concat", load_backbone(str(tiny_backbone))).eval()
    scores = model(batch)
    assert scores.shape == (3, 4)
    ids, mask = batch["input_ids"].flatten(0, 1), batch["attention_mask"].flatten(0, 1)
    expected = model.head(model.body(ids, mask)[:, 0]).view(3, 4)  # the first token of every candidate
    torch.testing.assert_close(scores, expected)
    loss = task.loss(scores, batch)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(scores, batch["labels"]).item())


# ---------------------------------------------------------------- bad input from the command line


@pytest.mark.parametrize("edit, where, message", [
    (lambda r: {**r, "label": "4"}, "line 2", "answer index 0..3"),
    (lambda r: {k: v for k, v in r.items() if k != "answer2"}, "line 2", "missing field 'answer2'"),
    (lambda r: {**r, "context": "  "}, "line 2", "'context' is empty"),
    (lambda r: {**r, "question": ""}, "line 2", "'question' is empty"),
])
def test_bad_jsonl_records_exit_2_naming_file_and_line(cli, tmp_path, sample, tiny_backbone, edit, where, message):
    folder = write_split_folder(tmp_path / "data", sample)
    lines = _lines(folder / "train.jsonl")
    lines[1] = json.dumps(edit(json.loads(lines[1])))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke(cli.workdir, "finetune", "--task", "cosmosqa", "--data", folder, "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 2
    assert "train.jsonl" in result.stderr and where in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (cli.workdir / "finetuned").exists() or not any((cli.workdir / "finetuned").iterdir())


@pytest.mark.parametrize("header, message", [
    ("id,context,question,answer0,answer1,answer2,label", "expected the CSV header"),
    ("context,id,question,answer0,answer1,answer2,answer3,label", "expected the CSV header"),
])
def test_csv_with_a_wrong_header_exits_2_naming_file_and_line(cli, tmp_path, sample, tiny_backbone, header, message):
    folder = write_csv_folder(tmp_path / "data", sample)
    text = (folder / "valid.csv").read_bytes().decode()
    (folder / "valid.csv").write_bytes((header + text[text.index("\r\n"):]).encode())
    result = invoke(cli.workdir, "finetune", "--task", "cosmosqa", "--data", folder, "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 2 and "valid.csv" in result.stderr and "line 1" in result.stderr
    assert message in result.stderr
    assert not (cli.workdir / "finetuned").exists() or not any((cli.workdir / "finetuned").iterdir())


def test_csv_label_outside_the_answers_names_its_line(tmp_path, sample):
    folder = write_csv_folder(tmp_path / "data", sample)
    text = (folder / "valid.csv").read_bytes().decode().split("\r\n")
    text[3] = text[3][: text[3].rindex(",")] + ",7"  # the third record starts on line 4
    (folder / "valid.csv").write_bytes("\r\n".join(text).encode())
    with pytest.raises(BadInput, match=r"valid.csv.*line 4.*answer index 0..3, got '7'"):
        get_task("cosmosqa").read(folder / "valid.csv")


def test_task_options_are_checked(cli, tmp_path, sample, tiny_backbone):
    with pytest.raises(BadInput, match="layout of 'cosmosqa' must be one of paper, original"):
        get_task("cosmosqa", layout="fancy")
    folder = write_split_folder(tmp_path / "data", sample)
    result = invoke(cli.workdir, "finetune", "--task", "cosmosqa", "--data", folder, "--backbone", tiny_backbone,
                             "--task-option", "layuot=original", *FAST)
    assert result.exit_code == 2 and "no option 'layuot' (options: layout)" in result.stderr
    result = invoke(cli.workdir, "finetune", "--task", "cosmosqa", "--data", folder, "--backbone", tiny_backbone,
                             "--max-negatives", "3", *FAST)
    assert result.exit_code == 2 and "no option 'max_negatives'" in result.stderr


def invoke(workdir: Path, *args):
    """`kadapter --workdir W args...` in-process, its exit code and stderr kept (no raising)."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    return CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)])


# ---------------------------------------------------------------- the whole chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory, sample, tiny_backbone):
    """A fac adapter on the tiny backbone, and the CosmosQA sample cut into train/dev/test."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    root = tmp_path_factory.mktemp("cosmosqa")
    workdir = root / "work"
    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, f"kadapter {' '.join(map(str, args))} failed:\n{result.output}"
        return result

    run("prepare-trex", sample.parent / "trex", "--min-count", "1")
    run("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, *FAST, "--limit", "64")
    return workdir, run, write_split_folder(root / "data", sample), write_csv_folder(root / "csv", sample)


@pytest.mark.slow
@pytest.mark.parametrize("adapters", [None, "fac"])
def test_finetune_evaluate_predict_on_the_real_sample(chain, sample, tiny_backbone, adapters):
    workdir, run, data, _ = chain
    how = ["--adapters", adapters] if adapters else ["--backbone", tiny_backbone]
    result = run("finetune", "--task", "cosmosqa", "--data", data, *how, *FAST, "--task-option", "layout=original",
                 "--json")
    folder = workdir / "finetuned" / f"cosmosqa-{adapters or 'base'}"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert json.loads(result.stdout) == metrics
    assert set(metrics) == {"dev"}  # the test split is unlabeled: predictions only
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "cosmosqa" and config["task_options"] == {"layout": "original"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["task_option"] == ['layout="original"']
    assert manifest["config"]["lr"] == 1e-3 and manifest["config"]["warmup"] == 0  # paper default warm-up
    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])  # the Hub's front matter
    assert card["pipeline_tag"] == "feature-extraction"  # the standard pipeline that runs it
    assert {r["task"]["type"] for r in card["model-index"][0]["results"]} == {"multiple-choice"}

    dev = [json.loads(x) for x in _lines(folder / "predictions-dev.jsonl")]
    gold = [json.loads(x)["label"] for x in _lines(data / "valid.jsonl")]
    assert [x["index"] for x in dev] == list(range(60)) and [x["gold"] for x in dev] == [[g] for g in gold]
    assert all(len(x["pred"]) == 1 and x["pred"][0] in "0123" for x in dev)
    accuracy = sum(x["gold"] == x["pred"] for x in dev) / len(dev)
    assert accuracy == pytest.approx(metrics["dev"]["accuracy"])
    leaderboard = _lines(folder / "predictions-test.lst")
    test = [json.loads(x) for x in _lines(folder / "predictions-test.jsonl")]
    assert len(leaderboard) == len(test) == 40 and leaderboard == [x["pred"][0] for x in test]
    assert all(x["gold"] == [] for x in test)

    # evaluate recomputes the dev accuracy from the saved folder alone.
    out = run("evaluate", folder, "--data", data, "--split", "dev", "--json")
    assert json.loads(out.stdout)["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])
    # predict takes records without a label, and gives the same answers as the run did.
    lines = [json.loads(x) for x in run("predict", folder, data / "test.jsonl").stdout.splitlines()]
    assert [x["pred"] for x in lines] == [x["pred"] for x in test]
    # the unlabeled split has nothing to score
    assert invoke(workdir, "evaluate", folder, "--data", data, "--split", "test").exit_code == 2


@pytest.mark.slow
def test_finetune_on_the_authors_csv(chain, tiny_backbone):
    workdir, run, _, csv_data = chain
    run("finetune", "--task", "cosmosqa", "--data", csv_data, "--adapters", "fac", "--name", "cosmosqa-csv", *FAST,
        "--max-steps", "3")
    folder = workdir / "finetuned" / "cosmosqa-csv"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"dev"} and len(_lines(folder / "predictions-dev.jsonl")) == 100
    assert not (folder / "predictions-dev.lst").exists()  # a labeled split gets no leaderboard file
    out = run("evaluate", folder, "--data", csv_data, "--split", "dev", "--json")
    assert json.loads(out.stdout)["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])


@pytest.mark.slow
def test_a_frozen_backbone_caches_every_candidate(chain):
    workdir, run, data, _ = chain
    run("finetune", "--task", "cosmosqa", "--data", data, "--adapters", "fac", "--name", "frozen",
        "--freeze-backbone", "--cache-features", "on", *FAST, "--max-steps", "2")
    folder = workdir / "finetuned" / "frozen"
    assert json.loads((folder / "manifest.json").read_text())["stats"]["feature_cache"] == "memory"
    assert len(_lines(folder / "predictions-dev.jsonl")) == 60


def test_cached_candidate_features_give_the_backbones_scores(tiny_backbone, sample, tmp_path):
    """Each candidate's cached states come back in the order the model runs the candidates."""
    import torch

    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
    from kadapter_cli.modeling.backbone import backbone_shape, load_backbone, load_tokenizer
    from kadapter_cli.stages.finetune import build_task_model
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.feature_cache import attach_backbone_cache
    from kadapter_cli.training.objectives import TaskObjective

    task = get_task("cosmosqa")
    tokenizer = load_tokenizer(str(tiny_backbone))
    examples = [task.encode(tokenizer, r, {}, 64) for r in task.read(sample / "valid.first300.jsonl")[:5]]
    backbone = load_backbone(str(tiny_backbone))
    torch.manual_seed(0)
    adapters = {"fac": KnowledgeAdapter(AdapterConfig.for_backbone(backbone_shape(backbone), "fac"))}
    model = build_task_model(task, [], adapters, "concat", backbone).eval()
    model.body.freeze_backbone()
    model.body.freeze_adapters()
    objective = TaskObjective(tokenizer.pad_token_id, task, [])
    uncached = model(objective.collate(examples[1:4]))
    assert attach_backbone_cache(model.body, {"train": examples}, tokenizer.pad_token_id, TrainConfig(device="cpu"),
                                 tmp_path, torch.device("cpu"), mode="on") == "memory"
    assert examples[1]["_row"] == [4, 5, 6, 7]
    batch = objective.collate(examples[1:4])
    assert batch["features"][0].shape[0] == 12  # 3 records x 4 candidates, flat
    torch.testing.assert_close(model(batch), uncached, atol=2e-2, rtol=1e-2)  # fp16 cache


def test_a_pipeline_stage_sets_task_options_as_the_command_line_does(tmp_path):
    from kadapter_cli.cli import app
    from kadapter_cli.commands.dispatch import app_commands, stage_argv
    from kadapter_cli.workflow.pipeline import load_pipeline

    path = tmp_path / "cosmos.yaml"
    path.write_text("vars: {workdir: w}\nstages:\n  - {name: ft, command: finetune, "
                    "options: {task: cosmosqa, task-option: [layout=original]}}\n")
    pipeline = load_pipeline(path)
    argv = stage_argv(pipeline.stages[0], pipeline.workdir, app_commands(app)["finetune"], pipeline.path)
    assert argv[-4:] == ["--task", "cosmosqa", "--task-option", "layout=original"]


@pytest.mark.slow
def test_a_config_file_sets_task_options(chain, tmp_path, tiny_backbone):
    workdir, run, data, _ = chain
    config = tmp_path / "cosmos.yaml"
    config.write_text("task_option: {layout: original}\nmax_steps: 1\n")
    run("finetune", "--task", "cosmosqa", "--data", data, "--backbone", tiny_backbone, "--name", "from-config",
        "--config", config, *FAST)
    saved = json.loads((workdir / "finetuned" / "from-config" / "config.json").read_text())
    assert saved["task_options"] == {"layout": "original"}


# ---------------------------------------------------------------- CosmosQA beyond its happy path, written for the survivors of the mutation run of
# `tasks/cosmosqa.py` (docs/MUTATION.md): the authors' CSV read record by record with the line each
# record starts on, the messages of bad files and data folders, accuracy and its edge cases, the
# answers' probabilities, unlabeled records, and the leaderboard file.

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
