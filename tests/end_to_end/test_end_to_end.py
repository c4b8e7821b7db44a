"""The whole chain from the command line on the real samples, with the tiny backbone.

prepare-trex → parse (CoNLL-U) → train fac and lin → compose → finetune openentity, figer (raw
sample) and tacred → evaluate → predict. Small limits keep it to a minute or two on 2 cores; what
is asserted is the contract (files, formats, freezing, metrics recomputed), not model quality.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

FAST = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--max-length", "64"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, shared_data, tiny_backbone):
    """Runs the chain once for the module; returns the workdir and a CLI runner bound to it."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir = tmp_path_factory.mktemp("chain") / "work"
    runner = CliRunner()

    def cli(*args: str):
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, f"kadapter {' '.join(map(str, args))} failed:\n{result.output}"
        return result

    cli("prepare-trex", shared_data / "trex", "--min-count", "1")
    cli("parse", "--parser", "conllu", shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu")
    cli("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, *FAST)
    cli("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *FAST, "--limit", "200")
    cli("compose", "fac", "lin")

    # FIGER: the raw gold sample, converted, then cut into train/dev/test by position.
    figer = workdir / "tasks" / "figer"
    cli("convert", "figer-raw", shared_data / "figer" / "exp.label", figer / "all.json")
    records = json.loads((figer / "all.json").read_text())
    for split, part in (("train", records[:350]), ("dev", records[350:450]), ("test", records[450:])):
        (figer / f"{split}.json").write_text(json.dumps(part))
    (figer / "all.json").unlink()
    # The label vocabulary is FIGER's 113 types (types.map), as the full data set's labels.json gives.
    types = sorted({line.split("\t")[1].strip() for line in (shared_data / "figer" / "types.map").read_text().splitlines()
                    if "\t" in line})
    (figer / "labels.json").write_text(json.dumps(types))
    return workdir, cli


def test_adapters_and_composition_are_artifacts(chain):
    workdir, _ = chain
    for kind, metric in (("fac", "accuracy"), ("lin", "uas")):
        folder = workdir / "adapters" / kind
        assert {"kadapter_adapter.json", "kadapter_adapter.safetensors", "kadapter_head.safetensors", "metrics.json", "train_log.jsonl",
                "manifest.json"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "checkpoints").exists()
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["kind"] == "adapter" and manifest["config"]["epochs"] == 1
        assert 0.0 <= json.loads((folder / "metrics.json").read_text())["dev"][metric] <= 1.0
    comp = json.loads((workdir / "compositions" / "fac+lin" / "composition.json").read_text())
    assert [a["name"] for a in comp["adapters"]] == ["fac", "lin"] and comp["fusion"] == "concat"


@pytest.mark.parametrize(
    "task, data, adapters, headline",
    [
        ("openentity", "openentity/ernie-format", "fac,lin", ("precision", "recall", "f1")),
        ("figer", None, "fac+lin", ("strict_acc", "macro_f1", "micro_f1")),
        ("tacred", "tacred/gcn-over-pruned-trees-sample", "lin", ("precision", "recall", "f1")),
    ],
)
def test_finetune_evaluate_predict(chain, shared_data, task, data, adapters, headline):
    workdir, cli = chain
    data_dir = shared_data / data if data else workdir / "tasks" / task
    cli("finetune", "--task", task, "--adapters", adapters, "--data", data_dir, *FAST, "--micro-batch-size", "8",
        "--limit", "64")
    run = workdir / "finetuned" / f"{task}-{adapters.replace(',', '+')}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"dev", "test"} and set(headline) <= set(metrics["test"])

    # Adapters stay frozen through fine-tuning: their weights in the model equal the artifacts'.
    weights = load_file(run / "model.safetensors")
    for name in adapters.replace("+", ",").split(","):
        original = load_file(workdir / "adapters" / name / "kadapter_adapter.safetensors")
        for key, value in original.items():
            assert weights[f"body.adapters.{name}.{key}"].equal(value), key

    # Predictions: one line per (limited) record, in order, labels as strings.
    lines = [json.loads(x) for x in (run / "predictions-test.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(len(lines)))
    assert all(isinstance(label, str) for x in lines for label in x["gold"] + x["pred"])

    # evaluate recomputes the metrics from the saved folder alone: on the same 64 test records, in
    # the same batches (8, sorted by length), the same values.
    first = workdir / "first-64" / task
    first.mkdir(parents=True)
    (first / "test.json").write_text(json.dumps(json.loads((data_dir / "test.json").read_text())[:64]))
    result = cli("evaluate", run, "--data", first, "--split", "test", "--batch-size", "8", "--json")
    recomputed = json.loads(result.stdout)
    assert set(headline) <= set(recomputed)
    assert recomputed == pytest.approx(metrics["test"])
    evaluation = workdir / "evaluations" / f"{run.name}-test"
    assert (evaluation / "predictions-test.jsonl").read_text() == (run / "predictions-test.jsonl").read_text()
    assert (evaluation / "manifest.json").is_file()

    # predict labels new records in the task's own format, with or without gold labels.
    records = json.loads((data_dir / "test.json").read_text())[:3]
    source = workdir / f"{task}-new.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = [json.loads(x) for x in cli("predict", run, source).stdout.splitlines()]
    assert [x["index"] for x in out] == [0, 1, 2]
    unlabeled = workdir / f"{task}-unlabeled.jsonl"
    gold_keys = ("labels", "relation")
    unlabeled.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in gold_keys}) + "\n" for r in records))
    bare = [json.loads(x) for x in cli("predict", run, unlabeled).stdout.splitlines()]
    assert [x["gold"] for x in bare] == [[], [], []]
    assert [x["pred"] for x in bare] == [x["pred"] for x in out]  # gold never feeds the prediction


def test_baseline_run_is_named_base(chain, shared_data):
    workdir, cli = chain
    data_dir = shared_data / "openentity" / "ernie-format"
    recorded = json.loads((workdir / "adapters" / "fac" / "kadapter_adapter.json").read_text())["backbone_fingerprint"]
    cli("finetune", "--task", "openentity", "--data", data_dir, "--backbone", recorded["path_hint"],
        *FAST, "--limit", "32", "--max-steps", "2")
    config = json.loads((workdir / "finetuned" / "openentity-base" / "config.json").read_text())
    assert config["adapters"] == [] and config["fusion"] is None


def test_finetune_refuses_an_existing_output(chain, shared_data):
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir, _ = chain
    data_dir = shared_data / "openentity" / "ernie-format"
    args = ["--workdir", str(workdir), "finetune", "--task", "openentity", "--adapters", "fac,lin",
            "--data", str(data_dir), *FAST, "--limit", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "already exists" in result.stderr


def test_unknown_adapter_is_exit_2(chain):
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir, _ = chain
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "compose", "fac", "nope"])
    assert result.exit_code == 2 and "nope" in result.stderr
