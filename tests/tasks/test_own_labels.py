"""Your own labels are a first-class path (docs/tasks.md, "Your own labels").

`tests/tasks/biomed/` holds 38 hand-written biomedical mentions in the OpenEntity format (26 train,
6 dev, 6 test), each labelled drug, disease or gene: data of a user's own, not the benchmark's.
Fine-tuning `--task openentity` on it infers those three labels from the training split, says so,
names the run after the data folder and writes a card that claims no benchmark.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from kadapter_cli.artifacts.layout import DEMO_DATA

BIOMED = Path(__file__).resolve().parent / "biomed"
FAST = ("--max-steps", "1", "--batch-size", "4", "--max-length", "32")


@pytest.fixture
def biomed(tmp_path) -> Path:
    """A copy of the biomedical data in a folder named `biomed`, free to change."""
    return Path(shutil.copytree(BIOMED, tmp_path / "data" / "biomed"))


@pytest.fixture
def fac(cli, tiny_backbone, make_trex_rc):
    make_trex_rc(cli.workdir / "trex-rc")
    result = cli("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 0, result.output
    return cli.workdir / "adapters" / "fac"


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_own_labels_are_inferred_said_and_name_the_run(cli, biomed, fac):
    result = cli("finetune", "--task", "openentity", "--data", biomed, "--adapters", "fac", *FAST)
    assert result.exit_code == 0, result.output
    assert "labels: 3 from the training split (disease, drug, gene)" in result.stderr
    run = cli.workdir / "finetuned" / "biomed-fac"
    assert json.loads((run / "labels.json").read_text()) == ["disease", "drug", "gene"]
    assert not (cli.workdir / "finetuned" / "openentity-fac").exists()
    # every dev and test mention is scored against the three labels
    predictions = [json.loads(line) for line in (run / "predictions-test.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(set(p["pred"]) <= {"disease", "drug", "gene"} for p in predictions)
    meta, body = _card(run)
    assert "openentity" not in meta["tags"] and "datasets" not in meta and "license" not in meta
    [result_] = meta["model-index"][0]["results"][:1]
    assert result_["dataset"] == {"name": "biomed", "type": "biomed", "split": "dev"}
    assert "**biomed** (own data in the openentity format, 3 labels: disease, drug, gene)" in body
    assert "License of the training data: not known to kadapter" in body


def test_a_labels_file_is_honoured_in_its_order(cli, biomed, tiny_backbone, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("gene\ndrug\n\ndisease\nprotein\n")  # one a line; blank lines skipped
    result = cli("finetune", "--task", "openentity", "--data", biomed, "--backbone", tiny_backbone,
                 "--labels", labels, *FAST)
    assert result.exit_code == 0, result.output
    assert f"labels: 4 from {labels} (gene, drug, disease, protein)" in result.stderr
    run = cli.workdir / "finetuned" / "biomed-base"
    assert json.loads((run / "labels.json").read_text()) == ["gene", "drug", "disease", "protein"]
    assert json.loads((run / "manifest.json").read_text())["config"]["labels"] == str(labels)
    # a JSON list is read as well
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps(["drug", "gene", "disease"]))
    again = cli("finetune", "--task", "openentity", "--data", biomed, "--backbone", tiny_backbone,
                "--labels", as_json, "--name", "listed", *FAST)
    assert again.exit_code == 0, again.output
    assert json.loads((cli.workdir / "finetuned" / "listed" / "labels.json").read_text()) == ["drug", "gene", "disease"]


def test_an_unknown_dev_label_lists_the_labels_and_the_fix_before_loading_anything(cli, biomed, tmp_path):
    dev = json.loads((biomed / "dev.json").read_text())
    dev[2]["labels"] = ["protein"]
    (biomed / "dev.json").write_text(json.dumps(dev))
    # a backbone that does not exist: the label is refused before any model is loaded
    result = cli("finetune", "--task", "openentity", "--data", biomed, "--backbone", tmp_path / "no-backbone", *FAST)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {biomed / 'dev.json'}, record 2 (counted from 0): label 'protein' is not one of the 3 labels from "
        "the training split (disease, drug, gene); if it is right, list every label in a file (a JSON list, or one "
        "label a line) and pass --labels FILE")
    # with the label listed, the same data trains
    labels = tmp_path / "labels.txt"
    labels.write_text("disease\ndrug\ngene\nprotein\n")
    refused = cli("finetune", "--task", "openentity", "--data", biomed, "--backbone", tmp_path / "no-backbone",
                  "--labels", labels, *FAST)
    assert refused.exit_code == 2 and "label 'protein'" not in refused.output and "no-backbone" in refused.output


def test_a_labels_file_missing_a_label_says_to_add_it(cli, biomed, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("drug\ngene\n")
    result = cli("finetune", "--task", "openentity", "--data", biomed, "--labels", labels,
                 "--backbone", tmp_path / "no-backbone", *FAST)
    assert result.exit_code == 2
    assert (f"{biomed / 'train.json'}, record 2 (counted from 0): label 'disease' is not one of the 2 labels from "
            f"{labels} (drug, gene); add it to {labels}") in result.stderr


def test_the_benchmarks_data_keeps_the_benchmarks_name_and_labels(tmp_path):
    """Data recognisably the benchmark's is the benchmark's, in any folder: the demo's entity-typing
    data (all of OpenEntity's nine types, in a folder named `typing`)."""
    from kadapter_cli.tasks import get_task

    openentity = get_task("openentity")
    assert openentity.run_data_name(DEMO_DATA / "typing") == "openentity"
    records = openentity.read(DEMO_DATA / "typing" / "train.json")
    label_set = openentity.label_set(records, DEMO_DATA / "typing")
    assert label_set.benchmark and label_set.labels == ["entity", "location", "time", "organization", "object",
                                                        "event", "place", "person", "group"]
    assert label_set.describe().startswith("labels: 9 of the openentity benchmark (entity, location, time")
    assert openentity.run_data_name(BIOMED) == "biomed"
    # FIGER and TACRED decide alike: their closed sets against the training labels
    figer = get_task("figer")
    assert figer.label_set([{"labels": ["/person", "/location/city"]}]).benchmark
    own = figer.label_set([{"labels": ["drug"]}, {"labels": ["gene"]}])
    assert (own.benchmark, own.labels) == (False, ["drug", "gene"])
    tacred = get_task("tacred")
    assert len(tacred.label_set([{"relation": "per:title"}]).labels) == 42
    own = tacred.label_set([{"relation": "treats"}, {"relation": "causes"}])
    assert (own.benchmark, own.labels, own.origin) == (False, ["causes", "no_relation", "treats"],
                                                         "from the training split")


def test_a_pipeline_plans_the_run_name_finetune_gives(tmp_path, biomed):
    from kadapter_cli.workflow.pipeline import Stage, command_io

    work = tmp_path / "w"

    def planned(**options) -> str:
        stage = Stage("f", "finetune", options={"task": "openentity", "adapters": "fac", **options})
        return command_io(stage, work)[1][0]

    assert planned(data=str(biomed)) == str(work / "finetuned" / "biomed-fac")
    assert planned(data=str(DEMO_DATA / "typing")) == str(work / "finetuned" / "openentity-fac")
    assert planned() == str(work / "finetuned" / "openentity-fac")  # <workdir>/tasks/openentity
    labels = tmp_path / "benchmark-labels.json"
    labels.write_text(json.dumps(["person", "location"]))  # only the benchmark's labels, but not its data
    assert planned(data=str(biomed), labels=str(labels)) == str(work / "finetuned" / "biomed-fac")
    assert planned(data=str(biomed), labels="benchmark") == str(work / "finetuned" / "openentity-fac")
    assert planned(data=str(biomed), name="mine") == str(work / "finetuned" / "mine")
    # data the planner cannot read yet (an earlier stage writes it) or cannot read at all: the task's name
    assert planned(data=str(tmp_path / "not-yet")) == str(work / "finetuned" / "openentity-fac")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.json").write_text("[{")
    assert planned(data=str(tmp_path / "broken")) == str(work / "finetuned" / "openentity-fac")


@pytest.mark.parametrize("content, message", [
    ("drug\ngene\ndrug\n", "line 3: label 'drug' is listed twice"),
    ('["drug", "gene", "drug"]', "record 2 (counted from 0): label 'drug' is listed twice"),
    ("\n\n", "empty file"),
])
def test_a_bad_labels_file_is_named_with_the_line(tmp_path, content, message):
    from kadapter_cli.errors import BadInput
    from kadapter_cli.tasks import get_task

    path = tmp_path / "labels.txt"
    path.write_text(content)
    with pytest.raises(BadInput) as e:
        get_task("openentity").label_set([], None, path)
    expected = f"{path}, {message}" if message.startswith(("line", "record")) else f"{path}: {message}"
    assert str(e.value) == expected


# ---------------------------------------------------------------- a part of the benchmark's labels


def _people_and_places(n: int) -> list[dict]:
    """`n` OpenEntity-format records labelled person or location only: two of OpenEntity's nine types."""
    names = [("Ann", "Paris"), ("Bob", "Lyon"), ("Chen", "Oslo"), ("Dara", "Lima")]
    records = []
    for i in range(n):
        person, place = names[i % len(names)]
        sent = f"{person} moved to {place} in {1990 + i} ."
        start = len(person) + len(" moved to ")
        records.append({"sent": sent, "start": 0, "end": len(person), "labels": ["person"]} if i % 2 == 0 else
                       {"sent": sent, "start": start, "end": start + len(place), "labels": ["location"]})
    return records


@pytest.fixture
def mydata(tmp_path) -> Path:
    """Data of a user's own in a folder `mydata`, labelled person and location only."""
    folder = tmp_path / "data" / "mydata"
    folder.mkdir(parents=True)
    for split, n in (("train", 8), ("dev", 4), ("test", 4)):
        (folder / f"{split}.json").write_text(json.dumps(_people_and_places(n)))
    return folder


def test_a_part_of_the_benchmarks_labels_is_your_own_unless_asked(cli, mydata, tiny_backbone):
    """Labels that are a few of OpenEntity's plain-word types (person, location) do not make the data
    OpenEntity's: the labels come from the training split, the run and card name `mydata`, and the
    run says why and how to get the benchmark's set (`--labels benchmark`), which then applies."""
    result = cli("finetune", "--task", "openentity", "--data", mydata, "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    at = lines.index("labels: 2 from the training split (location, person)")
    assert lines[at + 1] == (
        "they are all openentity benchmark labels, but the data is not taken for the benchmark's (the training split "
        "uses 2 of its 9 labels, in a folder not named openentity); for the benchmark's labels, and a run and card "
        "named after it, pass --labels benchmark")
    run = cli.workdir / "finetuned" / "mydata-base"
    assert json.loads((run / "labels.json").read_text()) == ["location", "person"]
    assert not (cli.workdir / "finetuned" / "openentity-base").exists()
    meta, body = _card(run)
    assert "openentity" not in meta["tags"] and "datasets" not in meta
    assert "**mydata** (own data in the openentity format, 2 labels: location, person)" in body

    asked = cli("finetune", "--task", "openentity", "--data", mydata, "--backbone", tiny_backbone,
                "--labels", "benchmark", *FAST)
    assert asked.exit_code == 0, asked.output
    assert "labels: 9 of the openentity benchmark (entity, location, time" in asked.stderr
    assert "the data is taken for the openentity benchmark's, as asked (--labels benchmark)" in asked.stderr
    run = cli.workdir / "finetuned" / "openentity-base"
    assert len(json.loads((run / "labels.json").read_text())) == 9
    meta, body = _card(run)
    assert "openentity" in meta["tags"] and "own data" not in body


def test_asking_for_the_benchmark_refuses_a_label_outside_it(cli, biomed, tmp_path):
    result = cli("finetune", "--task", "openentity", "--data", biomed, "--labels", "benchmark",
                 "--backbone", tmp_path / "no-backbone", *FAST)
    assert result.exit_code == 2
    assert (f"{biomed / 'train.json'}, record 0 (counted from 0): label 'drug' is not one of the 9 labels of the "
            "openentity benchmark (entity, location, time, organization, object, event, place, person, group); it "
            "was asked for with --labels benchmark; leave that out to read your own labels from the training "
            "split") in result.stderr


def test_asking_for_the_benchmark_of_a_task_without_one_names_the_parameter():
    from kadapter_cli.errors import BadParameter
    from kadapter_cli.tasks.base import RelationTask

    class Mine(RelationTask):  # a task author's relations: no benchmark label set
        name, primary_metric, headline_metrics = "mine", "accuracy", ("accuracy",)

    with pytest.raises(BadParameter) as e:
        Mine().label_set([{"relation": "treats"}], None, "benchmark")
    assert e.value.parameter == "labels" and str(e.value).startswith(
        "labels benchmark: the mine task has no benchmark label set; pass a labels file")


def test_the_benchmarks_samples_are_recognised_and_say_why(shared_data):
    """The real samples stay the benchmark's in folders not named after it: OpenEntity's (its
    training split uses all nine types) and TACRED's (its relation names are TACRED's own, though
    the sample's training split holds 2 of the 42)."""
    from kadapter_cli.tasks import get_task

    openentity, tacred = get_task("openentity"), get_task("tacred")
    for task, folder, why in (
            (openentity, shared_data / "openentity" / "ernie-format", "the training split uses all 9 of its labels"),
            (tacred, shared_data / "tacred" / "gcn-over-pruned-trees-sample",
             "every training label is one of its 42 own label names")):
        assert task.run_data_name(folder) == task.name
        label_set = task.label_set(task.read(folder / "train.json"), folder)
        assert label_set.benchmark and label_set.labels == list(task.benchmark_labels)
        assert str(label_set.notice()).startswith(f"the data is taken for the {task.name} benchmark's ({why}); "
                                                  "for labels of your own, list them in a file")
    # a folder named after the task is the benchmark's whatever its case
    assert openentity.label_set([{"labels": ["person"]}], Path("data/OpenEntity")).benchmark


# ---------------------------------------------------------------- FIGER and TACRED formats, your labels


def test_own_labels_in_the_figer_format(cli, biomed, tiny_backbone):
    """FIGER reads the same JSON as OpenEntity: the biomedical data, fine-tuned as FIGER, is still yours."""
    result = cli("finetune", "--task", "figer", "--data", biomed, "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 0, result.output
    assert "labels: 3 from the training split (disease, drug, gene)" in result.stderr
    run = cli.workdir / "finetuned" / "biomed-base"
    assert json.loads((run / "labels.json").read_text()) == ["disease", "drug", "gene"]
    assert not (cli.workdir / "finetuned" / "figer-base").exists()
    meta, body = _card(run)
    assert "figer" not in meta["tags"]
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "biomed", "type": "biomed", "split": "dev"}
    assert "**biomed** (own data in the figer format, 3 labels: disease, drug, gene)" in body


def _relation(tokens: str, subj: tuple[int, int], obj: tuple[int, int], relation: str) -> dict:
    """A record in TACRED's format: word spans, inclusive at both ends."""
    return {"token": tokens.split(), "subj_start": subj[0], "subj_end": subj[1], "obj_start": obj[0],
            "obj_end": obj[1], "relation": relation}


BIOREL_TRAIN = [  # your own relations, and no `no_relation` among them
    _relation("Metformin remains the first-line treatment for type 2 diabetes .", (0, 0), (6, 8), "treats"),
    _relation("Aspirin lowers the risk of stroke .", (0, 0), (5, 5), "treats"),
    _relation("Smoking causes lung cancer .", (0, 0), (2, 3), "causes"),
    _relation("Asbestos exposure leads to mesothelioma .", (0, 1), (4, 4), "causes"),
    _relation("Imatinib inhibits the BCR-ABL kinase .", (0, 0), (3, 4), "targets"),
    _relation("Trastuzumab binds HER2 on tumour cells .", (0, 0), (2, 2), "targets"),
]
BIOREL_EVAL = [  # one treats, one causes, two pairs without a relation
    _relation("Insulin controls blood sugar in diabetes .", (0, 0), (5, 5), "treats"),
    _relation("Alcohol causes liver cirrhosis .", (0, 0), (2, 3), "causes"),
    _relation("Ibuprofen was sold next to bandages .", (0, 0), (5, 5), "no_relation"),
    _relation("The gene TP53 was sequenced in Boston .", (2, 2), (6, 6), "no_relation"),
]


def test_own_relations_in_the_tacred_format_add_no_relation_and_score_it_as_the_negative(cli, tmp_path,
                                                                                        tiny_backbone):
    """Relations of your own, none of them `no_relation`: the task adds `no_relation` (dev and test
    use it), and scores it as TACRED does, as the negative class: a model that always says `treats`
    finds 1 of the 2 relations among 4 guesses (P 1/4, R 1/2), not 1 of 4 labels."""
    from helpers.fixed_head import fix_head

    data = tmp_path / "data" / "biorel"
    data.mkdir(parents=True)
    (data / "train.json").write_text(json.dumps(BIOREL_TRAIN))
    for split in ("dev", "test"):
        (data / f"{split}.json").write_text(json.dumps(BIOREL_EVAL))
    result = cli("finetune", "--task", "tacred", "--data", data, "--backbone", tiny_backbone, *FAST)
    assert result.exit_code == 0, result.output
    assert "labels: 4 from the training split (causes, no_relation, targets, treats)" in result.stderr
    run = cli.workdir / "finetuned" / "biorel-base"
    labels = json.loads((run / "labels.json").read_text())
    assert labels == ["causes", "no_relation", "targets", "treats"]
    assert not (cli.workdir / "finetuned" / "tacred-base").exists()
    meta, body = _card(run)
    assert "tacred" not in meta["tags"]
    assert "**biorel** (own data in the tacred format, 4 labels: causes, no_relation, targets, treats)" in body

    fix_head(run, [0.0, 0.0, 0.0, 5.0])  # always `treats`
    scored = cli("evaluate", run, "--data", data, "--split", "test", "--no-save", "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)
    assert (metrics["precision"], metrics["recall"], metrics["accuracy"]) == (0.25, 0.5, 0.25)
    assert metrics["f1"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- the README's section, as a user runs it

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


@pytest.mark.slow
def test_the_readmes_own_labels_section_runs_as_written(tmp_path, monkeypatch, tiny_backbone, make_trex_rc):
    """The README's "Your own labels": its records are read by their tasks, and its commands, run as
    written from a folder holding `data/biomed` (the biomedical data) and a `kadapter-work` with a
    `fac` adapter (on the tiny backbone), print the line it quotes and write the folder it names."""
    import shlex

    from typer.testing import CliRunner

    from kadapter_cli.cli import app
    from kadapter_cli.tasks import get_task

    section = _readme_section("Your own labels")
    [records] = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    typing_record, relation_record = map(json.loads, records.splitlines())
    path = tmp_path / "records.jsonl"
    for task, record in (("openentity", typing_record), ("figer", typing_record), ("tacred", relation_record)):
        path.write_text(json.dumps(record) + "\n")
        [read] = get_task(task).read(path)
        assert get_task(task).gold(read) == record.get("labels", [record.get("relation")])
    assert typing_record["sent"][typing_record["start"]:typing_record["end"]] == "aspirin"  # end exclusive

    root = tmp_path / "user"
    shutil.copytree(BIOMED, root / "data" / "biomed")
    test_records = json.loads((BIOMED / "test.json").read_text())
    (root / "new_mentions.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("sent", "start", "end")}) + "\n"
                                                     for r in test_records))
    runner = CliRunner()
    workdir = root / "kadapter-work"
    make_trex_rc(workdir / "trex-rc")
    made = runner.invoke(app, ["--workdir", str(workdir), "train-adapter", "--kind", "fac", "--backbone",
                               str(tiny_backbone), *FAST], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    monkeypatch.chdir(root)
    [commands] = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    outputs = []
    for line in commands.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "kadapter", line
        result = runner.invoke(app, argv[1:], catch_exceptions=False)  # the default workdir: ./kadapter-work
        assert result.exit_code == 0, f"{line}\n{result.output}"
        outputs.append(result)
    [quoted] = re.findall(r"The run prints `(labels: [^`]*)`", section)
    assert quoted in outputs[0].stderr.splitlines()
    [named] = re.findall(r"writes `(kadapter-work/finetuned/[^`]*)`", section)
    assert (root / named / "labels.json").is_file() and named.endswith("/biomed-fac")
    predictions = [json.loads(line) for line in outputs[1].stdout.splitlines()]
    assert len(predictions) == len(test_records)
    assert all(set(p["pred"]) <= {"disease", "drug", "gene"} for p in predictions)
