"""Your own labels are a first-class path (docs/tasks.md, "Your own labels").

`tests/tasks/biomed/` holds 38 hand-written biomedical mentions in the OpenEntity format (26 train,
6 dev, 6 test), each labelled drug, disease or gene: data of a user's own, not the benchmark's.
Fine-tuning `--task openentity` on it infers those three labels from the training split, says so,
names the run after the data folder and writes a card that claims no benchmark.
"""

from __future__ import annotations

import json
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
    """Data whose training labels are all the benchmark's is the benchmark's, in any folder: the
    demo's entity-typing data (OpenEntity's nine types, in a folder named `typing`)."""
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
    labels.write_text(json.dumps(["person", "location"]))  # only the benchmark's labels: its data
    assert planned(data=str(biomed), labels=str(labels)) == str(work / "finetuned" / "openentity-fac")
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
