"""The task registry and the OpenEntity, FIGER and TACRED readers, on the real samples and on bad files."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kadapter_cli.errors import BadInput
from kadapter_cli.tasks import TASKS, base, discover_tasks, get_task
from kadapter_cli.tasks.figer import bio_mentions, read_figer_raw
from kadapter_cli.tasks.openentity import OPENENTITY_LABELS

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
    assert oe.label_vocab([GOOD_TYPING], tmp_path) == OPENENTITY_LABELS  # K-Adapter's fixed order
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
