"""The task registry and the OpenEntity, FIGER and TACRED readers, on the real samples and on bad files."""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path

import pytest
import torch
from helpers.fixed_head import finetune_then_fix_head
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import TASKS, RelationTask, Task, TaskOption, TypingTask, base, discover_tasks, get_task
from kadapter_cli.tasks.figer import bio_mentions, read_figer_raw
from kadapter_cli.tasks.openentity import OPENENTITY_LABELS
from kadapter_cli.tasks.tacred import OFFICIAL_LABELS

GOOD_TYPING = {"sent": "USPS raised rates .", "start": 0, "end": 4, "labels": ["organization"]}
GOOD_TACRED = {"id": "x1", "token": ["Anna", "works", "for", "ACME", "."], "subj_start": 0, "subj_end": 0,
               "obj_start": 3, "obj_end": 3, "relation": "per:employee_of"}


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- registry


def test_all_three_tasks_are_discovered_from_their_modules():
    found = discover_tasks("kadapter_cli.tasks")
    assert {"openentity", "figer", "tacred"} <= set(found)
    assert found == TASKS
    for name in ("openentity", "figer", "tacred"):
        assert found[name].__module__ == f"kadapter_cli.tasks.{name}"


def test_a_new_task_module_is_found_without_registering_it_anywhere(tmp_path, monkeypatch):
    # A new package name each time: a process that imported the last one (mutmut forks its test
    # runs from one) would not import it again, so nothing would register.
    name = f"more_tasks_{uuid.uuid4().hex}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(
        "from kadapter_cli.tasks.base import TypingTask, register_task\n"
        "@register_task\n"
        "class Toy(TypingTask):\n"
        "    name = 'toy'\n"
        "    primary_metric = 'f1'\n"
        "    headline_metrics = ('f1',)\n"
        "    defaults = {'lr': 1e-5, 'batch_size': 8, 'epochs': 1, 'max_length': 64, 'warmup': 0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    found = discover_tasks(name)
    assert list(found) == ["toy"] and found["toy"].__module__ == f"{name}.toy"


def test_unknown_task_and_option_are_bad_input():
    with pytest.raises(BadInput, match="unknown task 'ner'.*figer"):
        get_task("ner")
    with pytest.raises(BadInput, match="no option 'negatives'.*max_negatives"):
        get_task("tacred", negatives=3)
    with pytest.raises(BadInput, match="max_negatives"):
        get_task("tacred", max_negatives=-1)


def test_task_files_and_paper_defaults(tmp_path):
    task = get_task("tacred")
    assert task.task_files(tmp_path) == {s: tmp_path / f"{s}.json" for s in ("train", "dev", "test")}
    assert task.defaults_for([]) == {"lr": 1e-5, "batch_size": 32, "micro_batch_size": 8, "epochs": 5,
                                     "max_length": 184, "warmup": 500}
    assert task.defaults_for(["lin", "fac"])["lr"] == 5e-6 and task.defaults_for(["fac", "lin"])["warmup"] == 1000
    assert get_task("openentity").defaults["lr"] == 5e-6  # the paper's, not the script's 1e-4
    assert get_task("figer").defaults_for(["lin"])["warmup"] == 200


# ---------------------------------------------------------------- real samples


def test_real_openentity_splits_load(shared_data):
    task = get_task("openentity")
    folder = shared_data / "openentity" / "ernie-format"
    for split in ("train", "dev", "test"):
        records = task.read(folder / f"{split}.json")
        assert len(records) == 500
        task.check_labels(records, task.label_vocab(records), folder / f"{split}.json")
    train = task.read(folder / "train.json")
    assert train[3] == {"sent": train[3]["sent"], "start": 74, "end": 78, "labels": ["organization"]}
    assert sum(not r["labels"] for r in train) == 83  # empty label sets are kept (README count)


def test_real_figer_raw_test_set_loads(shared_data):
    path = shared_data / "figer" / "exp.label"
    records, sentences = read_figer_raw(path)
    assert (len(records), sentences) == (563, 434)
    assert len({label for r in records for label in r["labels"]}) == 43
    assert len(get_task("figer").read(path)) == 563  # detected as raw BIO and converted on the fly
    # sentence 1: "UW" and "Department of Chemistry" are adjacent mentions with no O between them
    assert records[0]["sent"][records[0]["start"]:records[0]["end"]] == "UW"
    assert records[0]["labels"] == ["/organization/educational_institution", "/organization"]
    assert records[1]["sent"][records[1]["start"]:records[1]["end"]] == "Department of Chemistry"
    assert records[1]["labels"] == ["/education/department", "/organization"]


def test_figer_conversion_surface_forms_match_the_tokens(shared_data):
    path = shared_data / "figer" / "exp.label"
    mentions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if line.strip() and fields[1].startswith("B-"):
            mentions.append([fields[0]])
        elif line.strip() and fields[1].startswith("I-"):
            mentions[-1].append(fields[0])
    records, _ = read_figer_raw(path)
    assert [r["sent"][r["start"]:r["end"]] for r in records] == [" ".join(m) for m in mentions]


def test_real_tacred_samples_load(shared_data):
    task = get_task("tacred")
    folder = shared_data / "tacred"
    for split in ("train", "dev", "test"):
        assert len(task.read(folder / "gcn-over-pruned-trees-sample" / f"{split}.json")) == 20
    fixture = task.read(folder / "allenai-kb-fixture" / "LDC2018T24.json")
    assert len(fixture) == 3
    assert fixture[0]["tokens"][8:10] == ["Douglas", "Flint"] and fixture[0]["relation"] == "per:title"


# ---------------------------------------------------------------- raw FIGER details


def test_figer_raw_quirks(tmp_path):
    raw = tmp_path / "tiny.label"
    raw.write_text(
        "Ann\tB-/person\n"
        "Lee\tI-/person\n"
        "met\tO\t\n"           # an extra trailing field is ignored
        "UW\tB-/organization\n"
        "Bio\tB-/education/department,/organization\n"  # adjacent mention, no O between
        "\t\n"                  # a single TAB ends the sentence
        "in\tO\r\n"
        "New\tI-/location,/location/city\n"             # I- after O opens a mention (conlleval)
        "York\tI-/location/city,/location\n"            # same set of types, other order: continues
        "Paris\tI-/location\n"                          # other types: a new mention
        "\n", encoding="utf-8")
    records, sentences = read_figer_raw(raw)
    assert sentences == 2
    assert [(r["sent"][r["start"]:r["end"]], r["labels"]) for r in records] == [
        ("Ann Lee", ["/person"]),
        ("UW", ["/organization"]),
        ("Bio", ["/education/department", "/organization"]),
        ("New York", ["/location", "/location/city"]),
        ("Paris", ["/location"]),
    ]
    assert records[0]["sent"] == "Ann Lee met UW Bio"


def test_figer_raw_starting_with_a_bracket_is_not_taken_for_json(tmp_path):
    raw = write_text(tmp_path / "test.json", "[\tO\nAnn\tB-/person\n]\tO\n")
    assert get_task("figer").read(raw) == [{"sent": "[ Ann ]", "start": 2, "end": 5, "labels": ["/person"]}]


def test_bio_mentions_spans():
    assert bio_mentions(["B-/a", "B-/a", "I-/a", "O", "I-/b"]) == [(0, 1, ["/a"]), (1, 3, ["/a"]), (4, 5, ["/b"])]


@pytest.mark.parametrize("text, line, message", [
    ("Ann\tB-/person\nLee\n", 2, "expected TOKEN<TAB>TAG"),
    ("Ann\tX-/person\n", 1, "is not O, B-<types> or I-<types>"),
    ("Ann\tO\nLee\tB-/person,\n", 2, "empty type"),
])
def test_figer_raw_bad_lines(tmp_path, text, line, message):
    raw = write_text(tmp_path / "bad.label", text)
    with pytest.raises(BadInput) as err:
        get_task("figer").read(raw)
    assert str(err.value).startswith(f"{raw}, line {line}: ") and message in str(err.value)


def test_figer_raw_without_mentions_is_refused(tmp_path):
    with pytest.raises(BadInput, match="no mentions"):
        read_figer_raw(write_text(tmp_path / "o.label", "a\tO\nb\tO\n"))


# ---------------------------------------------------------------- bad records


@pytest.mark.parametrize("bad, message", [
    (["not", "an", "object"], "expected a JSON object, got a list"),
    ({"sent": "abc", "start": 0, "end": 1}, "missing field 'labels'"),
    ({**GOOD_TYPING, "start": "0"}, "'start' must be an integer, got a string"),
    ({**GOOD_TYPING, "end": True}, "'end' must be an integer, got a boolean"),
    ({**GOOD_TYPING, "start": 3, "end": 1}, "reversed or outside the sentence"),
    ({**GOOD_TYPING, "end": 40}, "reversed or outside the sentence"),
    ({**GOOD_TYPING, "start": -1}, "reversed or outside the sentence"),
    ({**GOOD_TYPING, "sent": "a   b", "start": 1, "end": 3}, "is blank"),
    ({**GOOD_TYPING, "labels": "person"}, "'labels' must be a list of strings"),
    ({**GOOD_TYPING, "sent": None}, "'sent' must be a string"),
])
@pytest.mark.parametrize("task_name", ["openentity", "figer"])
def test_bad_typing_records_name_file_and_record(tmp_path, task_name, bad, message):
    path = write_json(tmp_path / "dev.json", [GOOD_TYPING, bad])
    with pytest.raises(BadInput) as err:
        get_task(task_name).read(path)
    assert str(err.value).startswith(f"{path}, record 1 (counted from 0): ")
    assert message in str(err.value)


@pytest.mark.parametrize("bad, message", [
    ({k: v for k, v in GOOD_TACRED.items() if k != "token"}, "missing field 'token'"),
    ({**GOOD_TACRED, "token": "Anna works"}, "'token' must be a non-empty list of strings"),
    ({**GOOD_TACRED, "token": []}, "'token' must be a non-empty list of strings"),
    ({**GOOD_TACRED, "obj_start": 5, "obj_end": 5}, "object span [5, 5] is reversed or outside the 5 tokens"),
    ({**GOOD_TACRED, "subj_start": 1, "subj_end": 0}, "subject span [1, 0] is reversed"),
    ({**GOOD_TACRED, "obj_start": 0, "obj_end": 3}, "overlap"),
    ({**GOOD_TACRED, "subj_end": 1.0}, "'subj_end' must be an integer, got a number"),
    ({**GOOD_TACRED, "relation": 7}, "'relation' must be a string"),
    ({k: v for k, v in GOOD_TACRED.items() if k != "relation"}, "missing field 'relation'"),
])
def test_bad_tacred_records_name_file_and_record(tmp_path, bad, message):
    path = write_json(tmp_path / "train.json", [GOOD_TACRED, GOOD_TACRED, bad])
    with pytest.raises(BadInput) as err:
        get_task("tacred").read(path)
    assert str(err.value).startswith(f"{path}, record 2 (counted from 0): ")
    assert message in str(err.value)


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("  \n", "empty file"),
    ("[]", "no records"),
    ('{"records": []}\n', "missing field"),
    ('[{"sent": "a"}', "malformed JSON"),
    ("42", "expected a JSON list of records or JSON Lines"),
])
def test_bad_files(tmp_path, content, message):
    path = write_text(tmp_path / "test.json", content)
    with pytest.raises(BadInput, match=message) as err:
        get_task("openentity").read(path)
    assert str(path) in str(err.value)
    with pytest.raises(BadInput, match="file not found"):
        get_task("openentity").read(tmp_path / "missing.json")


def test_json_lines_input_and_unlabelled_records(tmp_path):
    lines = [json.dumps(GOOD_TACRED), "", json.dumps({**GOOD_TACRED, "obj_end": 9})]
    path = write_text(tmp_path / "in.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(BadInput, match=r"in\.jsonl, line 3: object span"):
        get_task("tacred").read(path)
    unlabelled = {k: v for k, v in GOOD_TACRED.items() if k != "relation"}
    path = write_text(tmp_path / "predict.jsonl", json.dumps(unlabelled) + "\n")
    (record,) = get_task("tacred").read(path, labeled=False)
    assert record["relation"] is None
    assert get_task("tacred").gold(record) == []
    # the trex-rc spelling `tokens` is read too
    trex = {k: v for k, v in GOOD_TACRED.items() if k != "token"} | {"tokens": GOOD_TACRED["token"]}
    assert get_task("tacred").read(write_json(tmp_path / "t.json", [trex]))[0]["tokens"] == GOOD_TACRED["token"]


# ---------------------------------------------------------------- labels


def test_label_vocabularies(tmp_path, shared_data):
    oe = get_task("openentity")
    assert oe.label_vocab([GOOD_TYPING], tmp_path / "openentity") == OPENENTITY_LABELS  # K-Adapter's fixed order
    figer = get_task("figer")
    records = [{**GOOD_TYPING, "labels": ["/person/artist", "/person"]}, {**GOOD_TYPING, "labels": ["/location"]}]
    assert figer.label_vocab(records, tmp_path) == ["/location", "/person", "/person/artist"]  # sorted, not file order
    tacred = get_task("tacred")
    # TACRED's labels are its fixed 42 (a sample rarely holds them all); a variant's own are kept.
    vocab = tacred.label_vocab([{"relation": "per:title"}, {"relation": "org:founded"}], tmp_path)
    assert len(vocab) == 42 and vocab == sorted(vocab) and {"no_relation", "org:website", "per:age"} <= set(vocab)
    assert tacred.label_vocab([{"relation": "per:job"}, {"relation": "org:founded"}], tmp_path) == [
        "no_relation", "org:founded", "per:job"]  # no_relation ensured
    write_json(tmp_path / "labels.json", ["/person", "/location", "/person/artist", "/art"])
    assert figer.label_vocab(records, tmp_path) == ["/person", "/location", "/person/artist", "/art"]


@pytest.mark.parametrize("content, message", [
    (["/a", "/a"], "listed twice"),
    ({"/a": 0}, "non-empty JSON list of label strings"),
    ([], "non-empty JSON list"),
])
def test_bad_labels_file(tmp_path, content, message):
    write_json(tmp_path / "labels.json", content)
    with pytest.raises(BadInput, match=message):
        get_task("figer").label_vocab([GOOD_TYPING], tmp_path)


def test_gold_label_outside_the_vocabulary_names_file_and_record(tmp_path):
    task = get_task("figer")
    labels = task.label_vocab([{**GOOD_TYPING, "labels": ["/person"]}], tmp_path)
    dev = write_json(tmp_path / "dev.json", [{**GOOD_TYPING, "labels": ["/person"]},
                                             {**GOOD_TYPING, "labels": ["/person", "/martian"]}])
    with pytest.raises(BadInput) as err:
        task.check_labels(task.read(dev), labels, dev)
    assert str(err.value) == f"{dev}, record 1 (counted from 0): label '/martian' is not one of the 1 labels of the task (/person)"
    with pytest.raises(BadInput, match="no labels"):
        task.label_vocab([{**GOOD_TYPING, "labels": []}], tmp_path / "nowhere")


def test_max_negatives_keeps_the_first_n_no_relation_examples(shared_data):
    path = shared_data / "tacred" / "gcn-over-pruned-trees-sample" / "train.json"
    records = get_task("tacred").read(path)  # 18 no_relation, 2 org:city_of_headquarters
    assert get_task("tacred").prepare_train(records) == records  # the default keeps everything
    kept = get_task("tacred", max_negatives=5).prepare_train(records)
    negatives = [r for r in records if r["relation"] == "no_relation"]
    assert [r for r in kept if r["relation"] == "no_relation"] == negatives[:5]
    assert len(kept) == 7
    assert len(get_task("tacred", max_negatives=0).prepare_train(records)) == 2


# ---------------------------------------------------------------- encode, predict, loss, metrics


@pytest.fixture(scope="module")
def bert(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


def test_every_real_record_encodes(shared_data, bert):
    cases = [("openentity", shared_data / "openentity" / "ernie-format" / "dev.json", 256),
             ("figer", shared_data / "figer" / "exp.label", 256),
             ("tacred", shared_data / "tacred" / "gcn-over-pruned-trees-sample" / "test.json", 184)]
    for name, path, max_length in cases:
        task = get_task(name)
        records = task.read(path)
        labels = task.label_vocab(records)
        index = {label: i for i, label in enumerate(labels)}
        for record in records:
            features = task.encode(bert, record, index, max_length)
            assert len(features["input_ids"]) <= max_length
            marker = "@" if name != "tacred" else "#"
            assert bert.convert_ids_to_tokens(features["input_ids"][features[task.position_keys[-1]]]) == marker
            assert features["gold"] == task.gold(record)


def test_encode_labels(bert):
    oe = get_task("openentity")
    index = {label: i for i, label in enumerate(OPENENTITY_LABELS)}
    features = oe.encode(bert, {**GOOD_TYPING, "labels": ["person", "organization"]}, index, 32)
    assert features["labels"] == [0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert set(features) == {"input_ids", "mention_pos", "labels", "gold"}
    tacred = get_task("tacred")
    record = {"id": None, "tokens": GOOD_TACRED["token"], "subj_start": 0, "subj_end": 0, "obj_start": 3,
              "obj_end": 3, "relation": "per:employee_of"}
    features = tacred.encode(bert, record, {"no_relation": 0, "per:employee_of": 1}, 32)
    assert features["labels"] == 1 and features["gold"] == ["per:employee_of"]
    assert set(features) == {"input_ids", "subj_pos", "obj_pos", "labels", "gold"}


def test_predictions_follow_each_task_rule():
    logits = [[-1.0, 2.0, 0.5], [-3.0, -0.5, -2.0]]
    labels = ["x", "y", "z"]
    assert get_task("openentity").predict(logits, labels) == [["y", "z"], []]  # logit > 0, may be empty
    assert get_task("figer").predict(logits, labels) == [["y", "z"], ["y"]]  # ∪ argmax: never empty
    assert get_task("tacred").predict(logits, labels) == [["y"], ["y"]]  # argmax


def test_loss_and_tensor_predictions():
    import torch

    oe = get_task("openentity")
    zeros = torch.zeros(2, 9)
    assert oe.loss(zeros, {"labels": torch.tensor([[1] * 9, [0] * 9])}).item() == pytest.approx(math.log(2))
    tacred = get_task("tacred")
    assert tacred.loss(torch.zeros(3, 4), {"labels": torch.tensor([0, 3, -100])}).item() == pytest.approx(math.log(4))
    assert tacred.predict(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), ["a", "b"]) == [["b"], ["a"]]
    # decode: structured predictions, the label(s) and the head's scores in label order
    assert tacred.decode(torch.tensor([[0.1, 0.9]]), {}, ["a", "b"]) == [{"pred": ["b"], "scores": [
        pytest.approx(0.1), pytest.approx(0.9)]}]


def test_task_metrics_report_their_headline_numbers():
    for name in ("openentity", "figer"):
        task = get_task(name)
        m = task.metrics([["a"], ["b"]], [["a"], ["a"]])
        assert set(task.headline_metrics) <= set(m) and task.primary_metric in m
        assert m["strict_acc"] == 0.5
    tacred = get_task("tacred")
    m = tacred.metrics([["per:title"], ["no_relation"]], [["per:title"], ["per:age"]])
    assert (m["precision"], m["recall"]) == (0.5, 1.0) and tacred.primary_metric == "f1"


def test_build_head_output_shape():
    heads = pytest.importorskip("kadapter_cli.modeling.heads")
    import torch

    h = torch.zeros(2, 7, 16)
    typing_head = get_task("figer").build_head(16, 5)
    assert isinstance(typing_head, heads.TypingHead)
    assert typing_head(h, torch.tensor([1, 2])).shape == (2, 5)
    relation_head = get_task("tacred").build_head(16, 42)
    assert relation_head(h, torch.tensor([1, 2]), torch.tensor([3, 4])).shape == (2, 42)


# ---------------------------------------------------------------- kadapter convert figer-raw


def test_convert_figer_raw_command(cli, shared_data, tmp_path):
    out = tmp_path / "tasks" / "figer" / "test.json"
    result = cli("convert", "figer-raw", shared_data / "figer" / "exp.label", out)
    assert result.exit_code == 0, result.stderr
    records = json.loads(out.read_text(encoding="utf-8"))
    assert len(records) == 563 and records[0]["ents"] == []
    assert get_task("figer").read(out) == read_figer_raw(shared_data / "figer" / "exp.label")[0]
    assert "563 mentions from 434 sentences" in result.stderr

    again = cli("convert", "figer-raw", shared_data / "figer" / "exp.label", out)
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    replaced = cli("convert", "figer-raw", shared_data / "figer" / "exp.label", out, "--overwrite", "--json")
    assert replaced.exit_code == 0
    assert json.loads(replaced.stdout) == {"output": str(out), "sentences": 434, "mentions": 563, "labels": 43}


def test_convert_figer_raw_bad_input_exits_2_naming_the_line(cli, tmp_path):
    bad = write_text(tmp_path / "bad.label", "Ann\tB-/person\nLee\tQ\n")
    out = tmp_path / "out.json"
    result = cli("convert", "figer-raw", bad, out)
    assert result.exit_code == 2
    assert f"{bad}, line 2: tag 'Q'" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir() if "out.json" in p.name] == []  # nothing half-written left behind
    missing = cli("convert", "figer-raw", tmp_path / "nope.label", out)
    assert missing.exit_code == 2 and "file not found" in missing.stderr


# ---------------------------------------------------------------- property: BIO → offsets


TYPES = st.lists(st.sampled_from(["/person", "/location", "/location/city", "/organization"]), min_size=1, max_size=2)
TOKEN = st.text(alphabet=st.sampled_from(list("abcXYZ09.,()“”’–-")), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sentences=st.lists(st.lists(st.tuples(TOKEN, st.sampled_from("OBI"), TYPES), min_size=1, max_size=12),
                          min_size=1, max_size=4))
def test_property_bio_offsets_cover_exactly_the_mention_tokens(tmp_path_factory, sentences):
    lines, expected = [], []
    for sentence in sentences:
        tokens = [token for token, _, _ in sentence]
        tags = ["O" if kind == "O" else f"{kind}-{','.join(types)}" for _, kind, types in sentence]
        lines += [f"{token}\t{tag}" for token, tag in zip(tokens, tags)] + ["\t"]
        expected += [" ".join(tokens[a:b]) for a, b, _ in bio_mentions(tags)]
    raw = write_text(tmp_path_factory.mktemp("bio") / "t.label", "\n".join(lines) + "\n")
    if not expected:
        with pytest.raises(BadInput, match="no mentions"):
            read_figer_raw(raw)
        return
    records, count = read_figer_raw(raw)
    assert count == len(sentences)
    assert [r["sent"][r["start"]:r["end"]] for r in records] == expected


# ---------------------------------------------------------------- What the classification tasks promise beyond their readers, written for the survivors of the
# mutation run of `tasks/` (docs/MUTATION.md): the probabilities `predict --scores` gives, prediction
# inputs whose gold labels the model never saw, a logit of exactly 0, task authors' registry and
# discovery, the batching of candidates, relation tasks without (or with another) negative label,
# and the messages that name what is wrong in a file.

SENTENCES = ["Alice Smith painted the old harbour at dawn .", "They drove to Paris in the morning ."]
TOKENS = ["Anna", "works", "for", "ACME", "in", "Paris", "."]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def _typing(i: int, labels: list[str]) -> dict:
    sent = SENTENCES[i % len(SENTENCES)]
    word = sent.split()[1]
    return {"sent": sent, "start": sent.index(word), "end": sent.index(word) + len(word), "labels": labels}


def _relation(relation: str | None) -> dict:
    return {"id": "r", "token": TOKENS, "subj_start": 0, "subj_end": 0, "obj_start": 3, "obj_end": 3,
            "relation": relation}


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


# ---------------------------------------------------------------- `predict --scores` (README: "…you need scores")


def test_openentity_scores_are_each_labels_sigmoid_and_a_zero_logit_is_not_predicted(cli, tiny_backbone, tmp_path):
    data = tmp_path / "openentity"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.json").write_text(json.dumps([_typing(0, ["person"]), _typing(1, ["location"])]))
    # entity +2, location exactly 0 (probability 0.5: not above it), the others negative
    bias = [2.0, 0.0, -1.0, -2.0, -3.0, -0.5, -4.0, -1.5, -2.5]
    run = finetune_then_fix_head(cli, tiny_backbone, "openentity", data, bias)
    # a prediction input may carry gold labels the model never saw: ignored for encoding, shown in gold
    source = tmp_path / "new.jsonl"
    source.write_text(json.dumps(_typing(0, ["dragon", "person"])) + "\n" + json.dumps(_typing(1, [])) + "\n")

    plain = cli("predict", run, source)
    assert plain.exit_code == 0, plain.output
    assert _lines(plain.stdout) == [{"index": 0, "gold": ["dragon", "person"], "pred": ["entity"]},
                                    {"index": 1, "gold": [], "pred": ["entity"]}]
    scored = cli("predict", run, source, "--scores")
    assert scored.exit_code == 0, scored.output
    assert [line["scores"] for line in _lines(scored.stdout)] == [{"entity": round(sigmoid(2.0), 6)}] * 2
    every = cli("predict", run, source, "--all-scores")
    assert every.exit_code == 0, every.output
    line = _lines(every.stdout)[0]
    assert list(line["scores"]) == OPENENTITY_LABELS  # label order
    assert line["scores"] == {label: round(sigmoid(b), 6) for label, b in zip(OPENENTITY_LABELS, bias)}
    assert line["scores"]["location"] == 0.5 and line["pred"] == ["entity"]

    # evaluate --scores writes the same lines into its predictions file
    out = tmp_path / "eval"
    result = cli("evaluate", run, "--data", data, "--split", "test", "--out", out, "--scores")
    assert result.exit_code == 0, result.output
    written = _lines((out / "predictions-test.jsonl").read_text())
    assert written == [{"index": 0, "gold": ["person"], "pred": ["entity"], "scores": {"entity": 0.880797}},
                       {"index": 1, "gold": ["location"], "pred": ["entity"], "scores": {"entity": 0.880797}}]


def test_tacred_scores_are_a_softmax_over_the_labels(cli, tiny_backbone, tmp_path):
    data = tmp_path / "tacred"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.json").write_text(json.dumps([_relation("per:employee_of"), _relation("no_relation")]))
    bias = [0.1 * (i % 7) - 0.2 for i in range(len(OFFICIAL_LABELS))]
    bias[OFFICIAL_LABELS.index("per:title")] = 3.0
    run = finetune_then_fix_head(cli, tiny_backbone, "tacred", data, bias)
    # unlabeled records and relations the model never saw are predicted too
    source = tmp_path / "new.json"
    source.write_text(json.dumps([_relation("per:favourite_colour"),
                                  {k: v for k, v in _relation(None).items() if k != "relation"},
                                  _relation("per:employee_of")]))
    every = cli("predict", run, source, "--all-scores")
    assert every.exit_code == 0, every.output
    lines = _lines(every.stdout)
    assert [(line["gold"], line["pred"]) for line in lines] == [(["per:favourite_colour"], ["per:title"]),
                                                                ([], ["per:title"]),
                                                                (["per:employee_of"], ["per:title"])]
    assert lines[0]["scores"] == {label: round(p, 6) for label, p in zip(OFFICIAL_LABELS, softmax(bias))}
    scored = cli("predict", run, source, "--scores")
    assert scored.exit_code == 0, scored.output
    title = softmax(bias)[OFFICIAL_LABELS.index("per:title")]
    assert _lines(scored.stdout)[1]["scores"] == {"per:title": round(title, 6)}


def test_scored_lines_of_hand_logits():
    tacred = get_task("tacred")
    lines = [{"index": 0, "gold": [], "pred": ["b"]}]
    predictions = [{"pred": ["b"], "scores": [1000.0, 1001.0]}]  # a softmax that must not overflow
    assert tacred.scored_lines(lines, predictions, [{}], ["a", "b"], "none") == lines
    assert tacred.scored_lines(lines, predictions, [{}], ["a", "b"], "all")[0]["scores"] == \
        {"a": round(1 / (1 + math.e), 6), "b": round(math.e / (1 + math.e), 6)}
    figer = get_task("figer")
    assert figer.scored_lines(lines, [{"pred": ["b"], "scores": [-1.0, 0.25]}], [{}], ["a", "b"], "predicted") == \
        [{"index": 0, "gold": [], "pred": ["b"], "scores": {"b": round(sigmoid(0.25), 6)}}]
    with pytest.raises(BadInput, match="^scores: task tacred does not give one prediction per record$"):
        tacred.scored_lines(lines * 2, predictions, [{}], ["a", "b"], "predicted")


def test_a_zero_logit_is_not_a_positive_one():
    labels = ["a", "b", "c"]
    assert get_task("openentity").predict([[0.0, 1.0, -1.0]], labels) == [["b"]]
    assert get_task("figer").predict([[0.0, -1.0, 0.5]], labels) == [["c"]]


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("labels, message", [
    ([""], "expected a non-empty JSON list of label strings"),
    ([5], "expected a non-empty JSON list of label strings"),
    (["a", "b", "a"], "record 2 (counted from 0): label 'a' is listed twice"),
])
def test_a_bad_labels_file_is_named_with_the_record(tmp_path, labels, message):
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(BadInput) as e:
        get_task("figer").label_vocab([], tmp_path)
    assert str(e.value) == f"{tmp_path / 'labels.json'}{', ' if 'record' in message else ': '}{message}"


@pytest.mark.parametrize("field, value, message", [
    ("sent", 5, "'sent' must be a string, got an integer"),
    ("start", {"at": 0}, "'start' must be an integer, got an object"),
])
def test_a_wrongly_typed_field_names_the_json_type(tmp_path, field, value, message):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([_typing(0, ["person"]), {**_typing(1, []), field: value}]))
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == f"{path}, record 1 (counted from 0): {message}"


def test_figer_training_records_without_labels_need_a_labels_file(tmp_path):
    with pytest.raises(BadInput) as e:
        get_task("figer").label_vocab([{"labels": []}], tmp_path)
    assert str(e.value) == (f"{tmp_path}: the training records carry no labels; list the labels in a file (a JSON "
                            "list, or one label a line) and pass labels FILE, or save it as labels.json in the data folder")


@pytest.mark.parametrize("change, message", [
    ({"token": []}, "'token' must be a non-empty list of strings"),
    ({"relation": 5}, "'relation' must be a string, got int"),
    # the subject starts on the object's last token
    ({"subj_start": 3, "subj_end": 4, "obj_start": 1, "obj_end": 3},
     "subject span [3, 4] and object span [1, 3] overlap"),
])
def test_bad_relation_records_say_what_is_wrong(tmp_path, change, message):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{**_relation("per:title"), **change}]))
    with pytest.raises(BadInput) as e:
        get_task("tacred").read(path)
    assert str(e.value) == f"{path}, record 0 (counted from 0): {message}"


def test_a_relation_record_with_both_token_spellings_reads_token(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{**_relation("per:title"), "tokens": ["x"] * len(TOKENS)}]))
    assert get_task("tacred").read(path)[0]["tokens"] == TOKENS


# ---------------------------------------------------------------- --task-option


def test_task_options_from_text():
    tacred, cosmosqa, openentity = (get_task(n).__class__ for n in ("tacred", "cosmosqa", "openentity"))
    assert base.parse_task_options(tacred, [" max-negatives =44999"]) == {"max_negatives": 44999}
    assert base.parse_task_options(tacred, ["max_negatives="]) == {"max_negatives": None}
    assert base.parse_task_options(cosmosqa, ["layout=original"]) == {"layout": "original"}
    # the value is everything after the first "="; text that is not YAML stays text
    assert base.parse_task_options(cosmosqa, ["layout=a=b"]) == {"layout": "a=b"}
    assert base.parse_task_options(cosmosqa, ["layout=[paper"]) == {"layout": "[paper"}
    for bad in ("max_negatives", "=3"):
        with pytest.raises(BadInput, match=f"^task_option must be key=value, got '{re.escape(bad)}'$"):
            base.parse_task_options(tacred, [bad])
    with pytest.raises(BadInput, match=r"^task 'tacred' has no option 'layout' \(options: max_negatives\)$"):
        base.parse_task_options(tacred, ["layout=paper"])
    with pytest.raises(BadInput, match=r"^task 'openentity' has no option 'size' \(options: none\)$"):
        base.parse_task_options(openentity, ["size=3"])
    two = _task_class(options={"b": TaskOption(1, "b", int), "a": TaskOption(2, "a", int)})
    with pytest.raises(BadInput, match=r"^task 'toy' has no option 'c' \(options: a, b\)$"):
        base.parse_task_options(two, ["c=3"])


def test_the_task_option_help_lists_each_tasks_options_with_their_defaults():
    from kadapter_cli.tasks import task_options_help

    text = task_options_help()  # what `finetune --help` says of --task-option
    assert text.startswith('cosmosqa: layout="paper" — paper: <s> context')
    assert "; tacred: max_negatives=null — keep only the first N no_relation training examples (the original: " \
           "44999; default: all)" in text


def test_a_task_option_from_the_command_line_reaches_the_task(cli, tiny_backbone, tmp_path):
    data = tmp_path / "tacred"
    data.mkdir()
    records = [_relation("no_relation"), _relation("per:title"), _relation("no_relation"), _relation("no_relation")]
    for split in ("train", "dev", "test"):
        (data / f"{split}.json").write_text(json.dumps(records))
    result = cli("finetune", "--task", "tacred", "--data", data, "--backbone", tiny_backbone, "--max-steps", "1",
                 "--task-option", "max-negatives=1", "--max-length", "32")
    assert result.exit_code == 0, result.output
    run = cli.workdir / "finetuned" / "tacred-base"
    assert json.loads((run / "config.json").read_text())["task_options"] == {"max_negatives": 1}
    result = cli("finetune", "--task", "tacred", "--data", data, "--backbone", tiny_backbone,
                 "--task-option", "max-negatives", "--name", "other")
    assert result.exit_code == 2 and "--task-option must be key=value, got 'max-negatives'" in result.output


class _Relations(RelationTask):
    """A relation task of a task author: no "no relation" label (accuracy and macro F1)."""

    name, primary_metric, headline_metrics = "relations", "accuracy", ("accuracy",)
    defaults = {"lr": 1e-5, "batch_size": 8, "epochs": 1, "max_length": 64, "warmup": 0}


class _RelationsWithNA(_Relations):
    negative_label = "NA"


def test_relation_metrics_follow_the_tasks_negative_label():
    gold, pred = [["x"], ["y"], ["NA"], ["x"]], [["x"], ["x"], ["NA"], ["NA"]]
    assert _Relations().metrics(gold, pred)["accuracy"] == 0.5
    m = _RelationsWithNA().metrics(gold, pred)
    # NA is ignored: 1 of 2 non-NA predictions right, 1 of 3 non-NA gold found
    assert (m["precision"], m["recall"]) == (0.5, pytest.approx(1 / 3))
    assert _RelationsWithNA().default_labels([{"relation": "x"}]) == ["NA", "x"]
    assert _Relations().default_labels([{"relation": "x"}]) == ["x"]
    assert _RelationsWithNA().default_labels([{"relation": None}]) == []  # no labels: not NA alone


def test_relation_encoding_follows_the_adapters_marker_style(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_backbone)
    tacred = get_task("tacred")
    record = tacred.normalize(_relation("per:employee_of"), "x.json", 0, True)
    index = {"no_relation": 0, "per:employee_of": 1}
    original = tacred.encode(tokenizer, record, index, 32, marker_style="original")
    assert original["input_ids"][original["subj_pos"]] == tokenizer.convert_tokens_to_ids("@")
    assert original["input_ids"][original["obj_pos"]] == tokenizer.convert_tokens_to_ids("#")
    assert tacred.examples(tokenizer, record, index, 32, "original") == [original]
    spaced = tacred.encode(tokenizer, record, index, 32)
    assert spaced["input_ids"][spaced["subj_pos"]] != tokenizer.convert_tokens_to_ids("@")


# ---------------------------------------------------------------- candidates, padding and positions


class _Pairs(TypingTask):
    """A task author's task with two candidates per example and two positions per candidate."""

    name, primary_metric, headline_metrics = "pairs", "f1", ("f1",)
    defaults = {"lr": 1e-5, "batch_size": 8, "epochs": 1, "max_length": 64, "warmup": 0}
    position_keys = ("left", "right")


def test_candidates_are_counted_padded_and_positioned_per_candidate():
    task = _Pairs()
    examples = [{"input_ids": [[5, 6, 7], [5, 6]], "left": [0, 1], "right": [2, 1], "labels": 1},
                {"input_ids": [[5], [5, 6, 7, 8]], "left": [0, 0], "right": [0, 3], "labels": 0}]
    assert [task.length(e) for e in examples] == [5, 5]  # every candidate's tokens
    assert task.length({"input_ids": [5, 6, 7]}) == 3
    batch = task.collate(examples, pad_id=1)
    assert batch["input_ids"].tolist() == [[[5, 6, 7, 1], [5, 6, 1, 1]], [[5, 1, 1, 1], [5, 6, 7, 8]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 1, 0], [1, 1, 0, 0]], [[1, 0, 0, 0], [1, 1, 1, 1]]]
    assert task.head_positions(batch).tolist() == [[[0, 2], [1, 1]], [[0, 0], [0, 3]]]  # (B, C, P)
    assert task.collate(examples, pad_id=1, pad_to=6)["input_ids"].shape == (2, 2, 6)
    single = task.collate([{"input_ids": [5, 6], "left": 0, "right": 1}], pad_id=1, pad_to=4)
    assert single["input_ids"].tolist() == [[5, 6, 1, 1]] and single["attention_mask"].tolist() == [[1, 1, 0, 0]]


class _Tokens(Task):
    """A task whose head reads every position (as extractive QA does)."""

    name, primary_metric, headline_metrics = "tokens", "accuracy", ("accuracy",)
    defaults = {"lr": 1e-5, "batch_size": 8, "epochs": 1, "max_length": 64, "warmup": 0}


def test_a_head_without_positions_reads_every_position():
    h = torch.arange(12.0).reshape(1, 4, 3)
    assert _Tokens().head_positions({"input_ids": torch.zeros(1, 4)}) is None
    assert torch.equal(_Tokens().run_head(lambda features: features.sum(-1), h, {}), h.sum(-1))


# ---------------------------------------------------------------- registry and discovery (task authors)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return base._REGISTRY


def _task_class(name: str = "toy", **attributes):
    body = {"name": name, "primary_metric": "f1", "headline_metrics": ("f1",),
            "defaults": {"lr": 1e-5, "batch_size": 8, "epochs": 1, "max_length": 64, "warmup": 0}, **attributes}
    return type("Toy", (TypingTask,), {k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize("missing", ["name", "primary_metric", "headline_metrics", "defaults"])
def test_a_task_class_missing_a_required_attribute_is_refused(registry, missing):
    cls = _task_class(**{missing: None})
    with pytest.raises(TypeError, match=f"^task class Toy has no '{missing}'$"):
        base.register_task(cls)


def test_register_task_checks_options_and_names(registry):
    with pytest.raises(TypeError, match=r"^task 'toy': option 'size' must be a TaskOption, not int$"):
        base.register_task(_task_class(options={"size": 3}))
    cls = _task_class(options={"size": TaskOption(3, "how many", int)})
    assert base.register_task(cls) is cls and registry["toy"] is cls
    assert base.register_task(cls) is cls  # the same class again (a module imported twice) is fine
    with pytest.raises(TypeError, match=r"^task name 'figer' is taken by kadapter_cli\.tasks\.figer\.Figer$"):
        base.register_task(_task_class("figer"))


def test_discovery_imports_public_modules_only(registry, tmp_path, monkeypatch):
    # A new package name each time: a process that ran this test before (mutmut's runs fork from
    # one) still holds the last one in sys.modules, and importing it again would register nothing.
    name = f"authors_tasks_{uuid.uuid4().hex}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    task = ("from kadapter_cli.tasks.base import TypingTask, register_task\n"
            "@register_task\nclass {cls}(TypingTask):\n    name = '{name}'\n    primary_metric = 'f1'\n"
            "    headline_metrics = ('f1',)\n    defaults = {{'lr': 1e-5, 'batch_size': 8, 'epochs': 1, "
            "'max_length': 64, 'warmup': 0}}\n")
    (package / "toy.py").write_text(task.format(cls="Toy", name="toy"))
    # a private helper and a module called base are not task modules: importing them would fail
    (package / "_helpers.py").write_text("raise ImportError('a private module was imported')\n")
    (package / "base.py").write_text("raise ImportError('base was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover_tasks(name)
    assert list(found) == ["toy"] and found["toy"].__module__ == f"{name}.toy"
    assert "figer" not in found  # only the package's own tasks


def test_converting_figer_never_replaces_a_file_unless_asked(cli, tmp_path):
    from kadapter_cli.errors import OutputExists
    from kadapter_cli.tasks.figer import convert_figer_raw

    source = tmp_path / "exp.label"
    source.write_text("Zürich\tB-/location\nis\tO\n\t\n", encoding="utf-8")
    output = tmp_path / "test.json"
    output.write_text("kept")
    with pytest.raises(OutputExists):
        convert_figer_raw(source, output)  # the library's default too
    again = cli("convert", "figer-raw", source, output)
    assert again.exit_code == 2 and f"{output}: already exists; pass --overwrite to replace it" in again.stderr
    assert output.read_text() == "kept"
    folder = cli("convert", "figer-raw", source, tmp_path)
    assert folder.exit_code == 2
    assert f"{tmp_path}: is a folder; give the file to write, e.g. tasks/figer/test.json" in folder.stderr
    replaced = cli("convert", "figer-raw", source, output, "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert json.loads(output.read_bytes().decode("utf-8")) == [
        {"sent": "Zürich is", "start": 0, "end": 6, "labels": ["/location"], "ents": []}]


def test_tacred_training_records_without_any_relation_are_refused_not_trained_to_nan(cli, tiny_backbone, tmp_path):
    """With no relation in any training record every target would be ignored and the loss NaN;
    `finetune` refuses it as bad input, as it does for the other tasks, before training."""
    data = tmp_path / "tacred"
    data.mkdir()
    records = [_relation(None) for _ in range(3)]  # `"relation": null`: unlabeled, as prediction inputs are
    for split in ("train", "dev", "test"):
        (data / f"{split}.json").write_text(json.dumps(records))
    result = cli("finetune", "--task", "tacred", "--data", data, "--backbone", tiny_backbone, "--max-steps", "1",
                 "--max-length", "32")
    assert result.exit_code == 2, result.output
    assert ("the training records carry no labels; list the labels in a file (a JSON list, or one label a line) "
            "and pass --labels FILE, or save it as labels.json in the data folder") in result.output
    assert not (cli.workdir / "finetuned" / "tacred-base").exists()


def test_typing_mention_offsets_an_empty_mention_and_one_ending_the_sentence(tmp_path):
    """`end` is exclusive: a mention may end at the sentence's last character; an empty one
    (start == end) is refused as reversed offsets, with the sentence's length in the message."""
    sent = "Obama visited Paris"
    path = tmp_path / "dev.json"
    path.write_text(json.dumps([{"sent": sent, "start": 14, "end": len(sent), "labels": ["location"]}]))
    (record,) = get_task("openentity").read(path)
    assert sent[record["start"]:record["end"]] == "Paris"
    path.write_text(json.dumps([{"sent": sent, "start": 6, "end": 6, "labels": []}]))
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == (f"{path}, record 0 (counted from 0): mention offsets start=6, end=6 are reversed or outside the sentence "
                            f"({len(sent)} characters; end is exclusive)")


def test_typing_prediction_inputs_may_lack_labels_but_bad_labels_are_named(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"sent": "Obama visited Paris", "start": 0, "end": 5}]))
    (record,) = get_task("figer").read(path, labeled=False)  # what `kadapter predict` reads
    assert record["labels"] == []
    with pytest.raises(BadInput) as e:
        get_task("figer").read(path)  # training and scoring need them
    assert "'labels'" in str(e.value) and str(e.value).startswith(f"{path}, record 0 (counted from 0): ")
    path.write_text(json.dumps([{"sent": "Obama visited Paris", "start": 0, "end": 5, "labels": "person"}]))
    with pytest.raises(BadInput) as e:
        get_task("figer").read(path, labeled=False)
    assert str(e.value) == f"{path}, record 0 (counted from 0): 'labels' must be a list of strings"


# ---------------------------------------------------------------- the readers (tasks_readers survivors)


def test_a_task_options_value_is_checked_against_its_choices_then_its_type():
    """What `--task-option key=value` (or a config file's `task_options`) says of a bad value; a
    task author's `TaskOption` gives these messages for their own options too."""
    style = TaskOption("paper", "layout", str, ("paper", "original"))
    assert style.check("toy", "layout", "original") == "original"
    with pytest.raises(BadInput) as e:
        style.check("toy", "layout", "both")
    assert str(e.value) == "task option layout of 'toy' must be one of paper, original, got 'both'"
    with pytest.raises(BadInput) as e:  # choices come first: an int outside them is named as such
        TaskOption(1, "level", int, (1, 2)).check("toy", "level", 3)
    assert str(e.value) == "task option level of 'toy' must be one of 1, 2, got 3"

    count = TaskOption(50, "how many", int)
    assert count.check("toy", "n", 7) == 7
    for bad, shown in (("7", "'7'"), (7.0, "7.0"), (True, "True"), (None, "None")):
        with pytest.raises(BadInput) as e:
            count.check("toy", "n", bad)
        assert str(e.value) == f"task option n of 'toy' must be int, got {shown}"  # a bool is not a count

    limit = TaskOption(None, "keep the first N", int)  # None is accepted when it is the default
    assert limit.check("toy", "limit", None) is None and limit.check("toy", "limit", 3) == 3
    with pytest.raises(BadInput) as e:
        limit.check("toy", "limit", "all")
    assert str(e.value) == "task option limit of 'toy' must be int or null, got 'all'"

    number = TaskOption(0.5, "a ratio", (int, float))
    assert number.check("toy", "ratio", 1) == 1 and number.check("toy", "ratio", 0.25) == 0.25
    with pytest.raises(BadInput) as e:
        number.check("toy", "ratio", False)
    assert str(e.value) == "task option ratio of 'toy' must be int or float, got False"
    flag = TaskOption(False, "a switch", bool)
    assert flag.check("toy", "on", True) is True
    with pytest.raises(BadInput) as e:
        flag.check("toy", "on", 1)
    assert str(e.value) == "task option on of 'toy' must be bool, got 1"
    assert TaskOption(None, "anything").check("toy", "free", {"a": [1]}) == {"a": [1]}  # no kind: no check


def test_the_task_option_help_when_no_task_has_options(monkeypatch):
    import kadapter_cli.tasks as tasks

    monkeypatch.setattr(tasks, "TASKS", {"openentity": get_task("openentity").__class__})
    assert tasks.task_options_help() == "no task has options"


@pytest.mark.parametrize("text, message", [
    ("Ann\tB-/person\nLee\n", "line 2: expected TOKEN<TAB>TAG"),
    ("Ann\tB-/person\n\n\t\nLee\n", "line 4: expected TOKEN<TAB>TAG"),  # blank lines are counted
    ("Ann\tB-/person\n \tO\n", "line 2: empty token"),
    ("Ann\tX-/person\n", "line 1: tag 'X-/person' is not O, B-<types> or I-<types>"),
    ("Ann\tb-/person\n", "line 1: tag 'b-/person' is not O, B-<types> or I-<types>"),
    ("Ann\tO\nLee\t\n", "line 2: tag '' is not O, B-<types> or I-<types>"),
    ("Ann\tO\nLee\tB-/person,\n", "line 2: tag 'B-/person,' has an empty type"),
    ("Ann\tO\nLee\tI-\n", "line 2: tag 'I-' has an empty type"),
    ("Ann\tO\nLee\tB-/a, ,/b\n", "line 2: tag 'B-/a, ,/b' has an empty type"),
    ("\ufeffAnn\tO\nLee\tQ\n", "line 2: tag 'Q' is not O, B-<types> or I-<types>"),
    ("Ann\tO\n\t\nLee\tO\n", "no mentions (no B-/I- tags) in the file"),
])
def test_each_bad_bio_line_is_named_with_its_number(tmp_path, text, message):
    raw = tmp_path / "exp.label"
    raw.write_bytes(text.encode("utf-8"))
    with pytest.raises(BadInput) as e:
        get_task("figer").read(raw)
    assert str(e.value) == (f"{raw}, {message}" if message.startswith("line") else f"{raw}: {message}")


def test_bio_sentences_keep_their_tokens_tags_and_line_numbers(tmp_path):
    from kadapter_cli.tasks.figer import iter_bio_sentences

    raw = tmp_path / "exp.label"
    raw.write_bytes("\ufeff Ann \t B-/person \textra\n\n\t\nLee\tI-/person\r\nsaw\tO\n\nit\tO".encode("utf-8"))
    assert list(iter_bio_sentences(raw)) == [
        (["Ann"], ["B-/person"], [1]),  # the byte-order mark, spaces around fields and extra fields dropped
        (["Lee", "saw"], ["I-/person", "O"], [4, 5]),
        (["it"], ["O"], [7]),  # the last sentence needs no blank line after it
    ]


@pytest.mark.parametrize("content, where", [
    (b"A\xffn\tB-/person\nLee\tI-/person\n", "line 1"),
    (b"Ann\tB-/person\nLee\tI-/person\n\t\nwas\tO\nZ\xfcrich\tB-/location\n", "line 5"),  # Latin-1 bytes
])
def test_a_bio_file_with_invalid_utf8_is_bad_input_naming_the_line(cli, tmp_path, content, where):
    """The format sniffing reads past bad bytes; the reader then names their line (exit 2, no traceback)."""
    raw = tmp_path / "exp.label"
    raw.write_bytes(content)
    with pytest.raises(BadInput) as e:
        get_task("figer").read(raw)
    assert str(e.value).startswith(f"{raw}, {where}: not valid UTF-8 (invalid start byte at byte ")
    result = cli("convert", "figer-raw", raw, tmp_path / "test.json")
    assert result.exit_code == 2 and f"{raw}, {where}: not valid UTF-8" in result.stderr
    assert "Traceback" not in result.output


def test_converted_figer_keeps_non_ascii_characters_as_they_are(tmp_path):
    """The JSON file holds the characters themselves, as the FIGER/ERNIE files do (not `\\u00fc`)."""
    from kadapter_cli.tasks.figer import convert_figer_raw

    source = tmp_path / "exp.label"
    source.write_bytes("Zürich\tB-/location\nliegt\tO\n\t\n".encode("utf-8"))
    output = tmp_path / "test.json"
    assert convert_figer_raw(source, output) == {"sentences": 1, "mentions": 1, "labels": 1}
    text = output.read_bytes().decode("utf-8")
    assert '"sent": "Zürich liegt"' in text and "\\u00fc" not in text
    assert json.loads(text) == [{"sent": "Zürich liegt", "start": 0, "end": 6, "labels": ["/location"], "ents": []}]


def test_converted_figer_is_utf8_whatever_the_locale(tmp_path):
    """Encoded as UTF-8 even where the locale's encoding is ASCII: checked in a process started with
    the C locale (and once here, so that mutation testing links this test to the converter)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import kadapter_cli
    from kadapter_cli.tasks.figer import convert_figer_raw

    source = tmp_path / "exp.label"
    source.write_bytes("Zürich\tB-/location\nliegt\tO\n\t\n".encode("utf-8"))
    convert_figer_raw(source, tmp_path / "here.json")
    output = tmp_path / "test.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHON"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONIOENCODING="utf-8")
    code = ("import locale, sys; from kadapter_cli.tasks.figer import convert_figer_raw; "
            "print(locale.getpreferredencoding(False)); convert_figer_raw(sys.argv[1], sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, str(source), str(output)], env=env, capture_output=True,
                          text=True, cwd=Path(kadapter_cli.__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() in ("ansi_x3.4-1968", "ascii", "us-ascii")  # the locale really is ASCII
    assert output.read_bytes() == (tmp_path / "here.json").read_bytes()


RECORD = {"sent": "Obama visited Paris", "start": 0, "end": 5, "labels": ["person"]}


@pytest.mark.parametrize("name, content", [
    ("list.json", json.dumps([RECORD])),
    ("indented.json", "\n\n    " + json.dumps([RECORD], indent=2)),
    ("after-4-KiB-of-blank-lines.json", "\n" * 5000 + json.dumps([RECORD])),  # past the first chunk sniffed
    ("lines.jsonl", json.dumps(RECORD) + "\n"),
    ("bom.json", "\ufeff" + json.dumps([RECORD])),  # saved by a Windows editor
    ("bom.jsonl", "\ufeff" + json.dumps(RECORD) + "\r\n\r\n"),
])
def test_task_files_are_read_whatever_their_layout(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    assert get_task("openentity").read(path) == [RECORD]
    assert base.detect_format(path) == ("jsonl" if name.endswith(".jsonl") else "json")


@pytest.mark.parametrize("content, message", [
    ("[]", "no records"),
    ("\n\n  ", "empty file"),
    ('"records"', "expected a JSON list of records or JSON Lines"),
    ("sent\tstart\n", "expected a JSON list of records or JSON Lines"),
    # one pretty-printed object, even after a blank line: not JSON Lines
    (json.dumps({"records": [RECORD]}, indent=2), "expected a JSON list of records or JSON Lines, got one JSON object"),
    ("\n" + json.dumps(RECORD, indent=1), "expected a JSON list of records or JSON Lines, got one JSON object"),
])
def test_a_task_file_that_holds_no_records_says_what_it_holds(tmp_path, content, message):
    path = tmp_path / "dev.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == f"{path}: {message}"


def test_a_bad_json_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_bytes((json.dumps(RECORD) + "\n\n" + '{"sent": "x",\n').encode("utf-8"))
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == f"{path}, line 3: malformed JSON: Expecting property name enclosed in double quotes"
    path.write_bytes(('{"sent": "x",\n' + json.dumps(RECORD) + "\n").encode("utf-8"))  # a bad first line
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == f"{path}, line 1: malformed JSON: Expecting property name enclosed in double quotes"
    path.write_bytes((json.dumps(RECORD) + "\n").encode("utf-8") + b'{"sent": "Z\xfcrich"}\n')  # Latin-1 bytes
    with pytest.raises(BadInput) as e:
        get_task("openentity").read(path)
    assert str(e.value) == f"{path}, line 2: not valid UTF-8 (invalid start byte at byte 11 of the line)"
    assert base.detect_format(tmp_path / "dev.jsonl") == "jsonl"
    path.write_bytes(b"Z\xfcrich\tB-/location\n")
    assert base.detect_format(path) == "text"


def test_a_task_file_that_cannot_be_read_is_named_with_why(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)  # a link to itself: the system refuses to open it
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    for path, message in ((tmp_path / "nope.json", "file not found"), (tmp_path, "is a folder, expected a file"),
                          (loop, "cannot read: Too many levels of symbolic links"), (empty, "empty file")):
        with pytest.raises(BadInput) as e:
            get_task("openentity").read(path)
        assert str(e.value) == f"{path}: {message}"


def test_unknown_tasks_and_options_are_named_with_what_is_known():
    with pytest.raises(BadInput) as e:
        get_task("trex")
    assert str(e.value) == "unknown task 'trex' (known: cosmosqa, figer, openentity, quasart, searchqa, tacred)"
    with pytest.raises(BadInput) as e:
        get_task("openentity", layout="paper")
    assert str(e.value) == "task 'openentity' has no option 'layout' (options: none)"
    with pytest.raises(BadInput) as e:
        get_task("quasart", size=3)
    assert str(e.value).startswith("task 'quasart' has no option 'size' (options: combine, contexts, format, ")
    with pytest.raises(BadInput) as e:  # a bad value names the task and the option
        get_task("cosmosqa", layout="both")
    assert str(e.value) == "task option layout of 'cosmosqa' must be one of paper, original, got 'both'"
    assert get_task("tacred", max_negatives=3).max_negatives == 3


def test_finetune_reads_task_files_saved_with_a_byte_order_mark(cli, tiny_backbone, tmp_path):
    """The README's promise, the way a user meets it: split files written by a Windows editor."""
    data = tmp_path / "openentity"
    data.mkdir()
    records = [_typing(i, ["person"] if i % 2 else ["location"]) for i in range(4)]
    (data / "train.json").write_bytes(("\ufeff" + json.dumps(records)).encode("utf-8"))
    for split in ("dev", "test"):  # JSON Lines
        (data / f"{split}.json").write_bytes(("\ufeff" + "\n".join(map(json.dumps, records)) + "\n").encode("utf-8"))
    result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tiny_backbone, "--max-steps", "1",
                 "--max-length", "32")
    assert result.exit_code == 0, result.output
    out = cli.workdir / "finetuned" / "openentity-base"
    assert len((out / "predictions-test.jsonl").read_text().splitlines()) == 4


# ---------------------------------------------------------------- around the happy path


def test_single_label_and_candidate_scores_are_a_softmax():
    from kadapter_cli.tasks import get_task

    tacred = get_task("tacred").label_scores({"pred": ["b"], "scores": [0.0, 2.0, -1.0]}, ["a", "b", "c"])
    assert list(tacred) == ["a", "b", "c"] and abs(sum(tacred.values()) - 1) < 1e-9
    assert max(tacred, key=tacred.get) == "b"
    cosmos = get_task("cosmosqa").label_scores({"pred": ["3"], "scores": [0.0, 0.0, 0.0, 1.0]}, [])
    assert list(cosmos) == ["0", "1", "2", "3"] and max(cosmos, key=cosmos.get) == "3"
