"""What a user meets around the happy path (issue 17): results never silently wrong, defaults
that fit, clear refusals. Every test goes through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"
FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


def _same_shape_other_weights(source: Path, target: Path) -> Path:
    """A copy of a backbone folder with one weight changed: same shape, other model."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory, tiny_backbone) -> tuple[Path, Path]:
    return tiny_backbone, _same_shape_other_weights(tiny_backbone, tmp_path_factory.mktemp("other") / "backbone")


def test_adapters_record_the_backbone_fingerprint_and_mismatches_are_refused(cli, tmp_path, two_backbones,
                                                                             make_trex_rc):
    from kadapter_cli.artifacts.io import sha256_file

    first, other = two_backbones
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    for name, backbone in (("fac", first), ("fac-other", other)):
        result = cli("train-adapter", "--kind", "fac", "--name", name, "--data", data, "--backbone", backbone,
                     *FAST, "--cache-features", "off")
        assert result.exit_code == 0, result.stderr
    adapters = cli.workdir / "adapters"
    fingerprint = json.loads((adapters / "fac" / "kadapter_adapter.json").read_text())["backbone_fingerprint"]
    assert fingerprint["path_hint"] == str(first.resolve())
    assert fingerprint["folder_name"] == first.name
    assert fingerprint["config_sha256"] == sha256_file(first / "config.json")
    short = {n: json.loads((adapters / n / "kadapter_adapter.json").read_text())["backbone_fingerprint"]
             for n in ("fac", "fac-other")}
    described = {n: f"folder {f['path_hint']} (config {f['config_sha256'][:12]}, weights {f['weights_sha256'][:12]})"
                 for n, f in short.items()}
    assert short["fac"]["weights_sha256"] != short["fac-other"]["weights_sha256"]

    # compose: both fingerprints in the message, exit 2, nothing written; the override composes.
    refused = cli("compose", "fac", "fac-other")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: adapters were trained on different backbones: '{adapters / 'fac'}' on {described['fac']}, "
        f"'{adapters / 'fac-other'}' on {described['fac-other']}; pass --allow-backbone-mismatch to use them anyway")
    assert not (cli.workdir / "compositions").exists()
    assert cli("compose", "fac", "fac-other", "--allow-backbone-mismatch").exit_code == 0

    # finetune with the adapter on the other weights of the same shape: refused, unless asked.
    args = ("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", "--backbone", other, *FAST)
    refused = cli(*args)
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: adapter 'fac' was trained on {described['fac']}, but the backbone given is "
        f"{described['fac-other']}; pass --allow-backbone-mismatch to use it anyway")
    assert not (cli.workdir / "finetuned").exists()
    assert cli(*args, "--allow-backbone-mismatch").exit_code == 0
    config = json.loads((cli.workdir / "finetuned" / "openentity-fac" / "config.json").read_text())
    assert config["backbone_fingerprint"] == short["fac-other"]
    # The adapter's own backbone (the default) passes without a word.
    assert cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *FAST,
               "--name", "own").exit_code == 0


def test_prepare_trex_refuses_to_write_an_empty_artifact_and_gives_the_numbers(cli, shared_data):
    import collections

    sample = shared_data / "trex"
    counts = collections.Counter(json.loads(line)["relation"] for line in _prepared(cli, sample))
    del counts["P31"]
    largest = max(sorted(counts), key=counts.get)

    refused = cli("prepare-trex", sample)  # the default --min-count 50 on a two-document sample
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: {sum(counts.values())} examples in {len(counts)} relations, all below --min-count 50 (the largest, "
        f"{largest}, has {counts[largest]}; try --min-count {counts[largest]}); refusing to write an empty trex-rc "
        "(pass --allow-empty to write it)")
    assert not (cli.workdir / "trex-rc").exists()

    written = cli("prepare-trex", sample, "--allow-empty")
    assert written.exit_code == 0
    assert "warning: " in written.stderr and "the trex-rc written is empty" in written.stderr
    assert json.loads((cli.workdir / "trex-rc" / "relations.json").read_text()) == []


def _prepared(cli, sample: Path) -> list[str]:
    """Every example of the sample, with no relation left out by count."""
    out = cli.workdir.parent / "all-relations"
    assert cli("prepare-trex", sample, "--min-count", "0", "--out", out).exit_code == 0
    return [line for split in ("train", "dev") for line in (out / f"{split}.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- defaults and options that fit


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_max_steps_overrides_the_epoch_count_and_a_long_warmup_is_warned(cli, tmp_path, tiny_backbone,
                                                                         make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    base = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--batch-size", "4",
            "--max-length", "24", "--device", "cpu", "--cache-features", "off", "--epochs", "1")
    # 16 examples, batch 4: 4 steps an epoch; --max-steps 10 runs 10 steps (3 epochs), not 4.
    longer = cli(*base, "--max-steps", "10", "--warmup", "0.1")
    assert longer.exit_code == 0, longer.stderr
    assert _manifest(cli.workdir / "adapters" / "fac")["stats"]["steps"] == 10
    assert "warning" not in longer.stderr
    warned = cli(*base, "--max-steps", "3", "--warmup", "1000", "--overwrite")
    assert warned.exit_code == 0
    assert ("warning: --warmup 1,000 steps is not shorter than the run (3 steps): the learning rate never reaches "
            "--lr 2e-05; give a share instead (--warmup 0.1 = the first 10%)") in warned.stderr
    assert _manifest(cli.workdir / "adapters" / "fac")["stats"]["steps"] == 3


def test_help_shows_the_papers_defaults_per_kind_and_task(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    from kadapter_cli.tasks import TASKS
    from kadapter_cli.training.config import KIND_DEFAULTS

    adapter_help = " ".join(cli("train-adapter", "--help").stdout.split())
    assert f"Training epochs (default: fac {KIND_DEFAULTS['fac']['epochs']}, lin {KIND_DEFAULTS['lin']['epochs']})" \
        in adapter_help
    # --help reads the one table the stage trains with: every value of it is there, per kind.
    for key in ("batch_size", "warmup", "max_length"):
        assert f"default: fac {KIND_DEFAULTS['fac'][key]:g}, lin {KIND_DEFAULTS['lin'][key]:g}" in adapter_help, key
    assert "(default: fac 2e-5, lin 1e-5)" in adapter_help
    assert "paper default" not in adapter_help
    finetune_help = " ".join(cli("finetune", "--help").stdout.split())
    epochs = ", ".join(f"{name} {task.defaults['epochs']}" for name, task in TASKS.items())
    assert f"Training epochs (default: {epochs})" in finetune_help
    assert "tacred 500 (lin: 200, fac+lin: 1000)" in finetune_help


@pytest.mark.parametrize("command", [
    [], ["prepare-trex"], ["parse"], ["train-adapter"], ["compose"], ["finetune"], ["evaluate"], ["predict"],
    ["inspect"], ["run"], ["demo"], ["tiny-backbone"], ["import-original"], ["convert", "figer-raw"],
    ["report"], ["train-probe"], ["probe"],
])
def test_help_reads_like_a_cli_not_like_python(cli, command, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    text = cli(*command, "--help").stdout
    for leaked in ("<bool>", "<int>", "<str>", "<float>", "<path>", "<list["):
        assert leaked not in text, f"{leaked!r} in kadapter {' '.join(command)} --help"
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert not re.search(r"[{}]", usage), usage


def test_help_shows_choices_as_choices(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert "stanza|spacy|conllu" in cli("parse", "--help").stdout
    adapter_help = cli("train-adapter", "--help").stdout
    for choices in ("fac|lin", "pointer|original", "auto|cpu|cuda", "fp32|bf16|fp16", "auto|on|off"):
        assert choices in adapter_help
    assert "concat|add|gated" in cli("compose", "--help").stdout
    assert "train|dev|test" in cli("evaluate", "--help").stdout
    assert "Usage: kadapter parse [OPTIONS] INPUTS..." in " ".join(cli("parse", "--help").stdout.split())


def test_threads_are_set_explicitly_or_from_what_is_idle(cli, tmp_path, tiny_backbone, monkeypatch,
                                                         make_trex_rc):
    import os

    import torch

    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *FAST,
            "--cache-features", "off", "--overwrite")
    before = torch.get_num_threads()
    try:
        assert cli(*args, "--threads", "2").exit_code == 0 and torch.get_num_threads() == 2
        # Automatic: every core busy → one thread; OMP_NUM_THREADS, when set, wins.
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
        assert cli(*args).exit_code == 0 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cli(*args).exit_code == 0 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    refused = cli(*args, "--threads", "0")
    assert refused.exit_code == 2 and "--threads must be at least 1, got 0" in refused.stderr


def test_an_uncached_backbone_offline_is_said_at_once(cli, tmp_path, monkeypatch, make_trex_rc):
    import time

    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", "kadapter-test/no-such-model")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    began = time.monotonic()
    result = cli(*args)
    assert time.monotonic() - began < 20
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: tokenizer 'kadapter-test/no-such-model' is not a local folder and not in the Hugging Face cache, "
        "and http://127.0.0.1:9 cannot be reached: download it where there is a network "
        "(`hf download kadapter-test/no-such-model`) or pass a local folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(*args)
    assert result.exit_code == 2 and "and HF_HUB_OFFLINE is set: download it" in result.stderr


def test_a_missing_backbone_folder_is_called_missing(cli, tmp_path, make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    missing = tmp_path / "nope"
    result = cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", missing)
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"error: {missing}: no such folder (expected a Hugging Face model id or a local model folder)"


def test_run_set_of_an_unknown_variable_is_an_error(cli, tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("vars: {backbone: auto}\nstages:\n  - {name: t, command: tiny-backbone, args: [x]}\n")
    result = cli("run", pipeline, "--dry-run", "--set", "backbon=roberta-base")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {pipeline}: --set backbon: the pipeline has no such variable "
                                     "(variables: backbone, demo_data, pipeline_dir, workdir)")


def test_readme_parse_example_names_a_model_the_install_provides(cli, tmp_path):
    import re

    line = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("kadapter parse "))
    model = re.search(r"--model (\S+)", line)[1]
    pytest.importorskip(model, reason=f"{model} is installed by `make test` (the test extra)")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France.\nThe cat sat on the mat.\n")
    argv = line.split("#")[0].split()[1:]
    result = cli(*[str(corpus) if a == "corpus.txt" else a for a in argv], "--dev-ratio", "0")
    assert result.exit_code == 0, result.stderr
    assert len((cli.workdir / "parsed" / "train.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------- inspect, evaluate, predict and small things


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_backbone, make_trex_rc):
    """A workdir with a fac adapter, its composition with itself under another name, and a finetuned model."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    root = tmp_path_factory.mktemp("made")
    workdir = root / "work"
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result

    data = make_trex_rc(root / "trex-rc", 16, 4)
    for name in ("fac", "fac2"):
        run("train-adapter", "--kind", "fac", "--name", name, "--data", data, "--backbone", tiny_backbone, *FAST,
            "--cache-features", "off")
    run("compose", "fac", "fac2")
    run("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *FAST)
    return workdir


def test_inspect_says_what_a_finetuned_model_is(cli, made, tiny_backbone, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    model = made / "finetuned" / "openentity-fac"
    text = cli("inspect", model).stdout
    metrics = json.loads((model / "metrics.json").read_text())
    def row(name: str) -> str:
        return re.search(rf"^{name}  +(.*?)\s*$", text, re.M)[1]

    assert row("task") == "openentity"
    assert row("backbone") == tiny_backbone.name  # a folder is recorded by its name; its path is a hint
    assert row("backbone fingerprint").startswith(f"folder {tiny_backbone.resolve()} (config ")
    assert row("adapters") == "fac (fac)"
    assert row("test").startswith(f"precision: {metrics['test']['precision']:.4g}, ")
    assert "{" not in text and "'" not in text  # no Python reprs
    report = json.loads(cli("inspect", model, "--json").stdout)
    assert report["about"]["task"] == "openentity" and report["about"]["dev"] == metrics["dev"]


def test_inspect_says_adapter_kind_and_composition_trainable(cli, made, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    text = cli("inspect", made / "adapters" / "fac").stdout
    assert any(line.split() == ["kind", "adapter", "(fac)"] for line in text.splitlines())
    assert "{" not in text
    composition = cli("inspect", made / "compositions" / "fac+fac2").stdout
    assert "?" not in composition
    assert re.search(r"^adapters +fac \(fac\), fac2 \(fac\)\s*$", composition, re.M)


def test_evaluate_refuses_to_overwrite_like_every_other_command(cli, made):
    model = made / "finetuned" / "openentity-fac"
    args = ("evaluate", model, "--data", TYPING, "--split", "dev", "--batch-size", "8")
    assert cli(*args).exit_code == 0
    again = cli(*args)
    out = cli.workdir / "evaluations" / "openentity-fac-dev"
    assert again.exit_code == 2
    assert again.stderr.strip() == f"error: {out}: already exists; pass --overwrite to replace it"
    assert cli(*args, "--overwrite").exit_code == 0


def test_predict_reads_stdin_refuses_to_overwrite_and_names_a_wrong_folder(cli, made, tmp_path):
    model = made / "finetuned" / "openentity-fac"
    records = json.loads((TYPING / "test.json").read_text())[:3]
    text = "".join(json.dumps(r) + "\n" for r in records)
    piped = cli("predict", model, "-", input=text)
    assert piped.exit_code == 0, piped.stderr
    assert [json.loads(line)["index"] for line in piped.stdout.splitlines()] == [0, 1, 2]
    bad = cli("predict", model, "-", input=text + '{"sent": "x"}\n')
    assert bad.exit_code == 2 and bad.stderr.startswith("error: <stdin>, line 4: ")

    out = tmp_path / "predictions.jsonl"
    (tmp_path / "in.jsonl").write_text(text)
    assert cli("predict", model, tmp_path / "in.jsonl", "--out", out).exit_code == 0
    before = out.read_bytes()
    again = cli("predict", model, tmp_path / "in.jsonl", "--out", out)
    assert again.exit_code == 2 and again.stderr.strip() == f"error: {out}: already exists; pass --overwrite to replace it"
    assert cli("predict", model, tmp_path / "in.jsonl", "--out", out, "--overwrite").exit_code == 0
    assert out.read_bytes() == before

    adapter = made / "adapters" / "fac"
    wrong = cli("predict", adapter, tmp_path / "in.jsonl")
    assert wrong.exit_code == 2
    assert wrong.stderr.strip() == (f"error: {adapter}: not a finetuned model folder (its manifest says 'adapter'; "
                                    "`kadapter finetune` makes one)")


def test_small_refusals_say_what_is_wrong_in_words(cli, made, tmp_path):
    same = cli("compose", made / "adapters" / "fac", made / "adapters" / "fac")
    assert same.exit_code == 2
    assert same.stderr.strip() == ("error: two adapters share the name 'fac': give each adapter once, or rename one "
                                   "with --name when training it")

    composition = made / "compositions" / "fac+fac2"
    fused = cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", composition, "--fusion", "add")
    assert fused.exit_code == 2
    assert fused.stderr.strip() == (f"error: {composition}: --fusion add: this composition fuses with concat; leave "
                                    "--fusion out, or compose again with --fusion add")

    config = tmp_path / "config.yaml"
    config.write_text("epochz: 3\n")
    unknown = cli("train-adapter", "--kind", "fac", "--config", config)
    assert unknown.exit_code == 2 and "unknown option 'epochz' (known: " in unknown.stderr
    known = unknown.stderr.split("known: ")[1]
    assert "json," in known and "json_out" not in known and "mask_padding" in known


def test_lin_word_counts_print_as_whole_numbers(cli, shared_data, tiny_backbone, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    conllu = shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    assert cli("parse", "--parser", "conllu", conllu, "--limit", "40").exit_code == 0
    result = cli("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *FAST, "--cache-features", "off")
    assert result.exit_code == 0, result.stderr
    words = json.loads((cli.workdir / "adapters" / "lin" / "metrics.json").read_text())["dev"]["words"]
    assert isinstance(words, int)
    assert re.search(rf"│\s+{words:,}\s+│", result.stdout) and ".0000" not in result.stdout


# ---------------------------------------------------------------- every wait shows progress


def _kadapter(workdir: Path, *args, terminal: bool) -> str:
    """`kadapter --workdir W args...` as a process, its stderr a pty (a terminal) or a pipe; returns its output."""
    import os
    import pty
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    env.pop("KADAPTER_PROGRESS", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    argv = [sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(workdir), *map(str, args)]
    if not terminal:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_every_wait_shows_a_labelled_bar_on_a_terminal_and_nothing_when_piped(tmp_path, tiny_backbone):
    import re

    args = ("finetune", "--task", "openentity", "--data", TYPING, "--backbone", tiny_backbone, *FAST,
            "--freeze-backbone")
    shown = _kadapter(tmp_path / "tty", *args, terminal=True)
    for label in ("loading backbone", "encoding train", "caching features (train)", "caching features (dev)",
                  "train", "evaluating dev", "evaluating test"):
        assert label in shown, label
    # what, how many, rate, elapsed, remaining: `evaluating test ━━━ 16/16 123.4 examples/s 0:00:00 0:00:00`
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert re.search(r"evaluating test [━╺╸ ]+ 16/16 ([\d,.]+|–) examples/s \d+:\d\d:\d\d \d+:\d\d:\d\d", plain), plain
    piped = _kadapter(tmp_path / "pipe", *args, terminal=False)
    for label in ("loading backbone", "encoding", "caching features", "evaluating", "examples/s"):
        assert label not in piped, label


def test_parse_bar_ends_full_and_hugging_face_bars_stay_silent(tmp_path, shared_data):
    import re

    conllu = shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    shown = _kadapter(tmp_path / "w", "parse", "--parser", "conllu", conllu, "--limit", "30", terminal=True)
    last_frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).split("parsing")[-1]
    assert "30/30" in last_frame and "?" not in last_frame
    made = _kadapter(tmp_path / "w", "tiny-backbone", tmp_path / "tb", terminal=False)
    assert "Writing model shards" not in made and "it/s" not in made


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


# ---------------------------------------------------------------- scores


def test_predict_and_evaluate_give_scores_on_request(cli, made):
    import math

    model = made / "finetuned" / "openentity-fac"
    labels = json.loads((model / "labels.json").read_text())
    records = json.loads((TYPING / "test.json").read_text())[:4]
    text = "".join(json.dumps(r) + "\n" for r in records)
    plain = [json.loads(line) for line in cli("predict", model, "-", input=text).stdout.splitlines()]
    assert all("scores" not in line for line in plain)

    scored = [json.loads(line) for line in cli("predict", model, "-", "--scores", input=text).stdout.splitlines()]
    every = [json.loads(line) for line in cli("predict", model, "-", "--all-scores", input=text).stdout.splitlines()]
    for line, full, before in zip(scored, every, plain):
        assert line["pred"] == before["pred"] and sorted(line["scores"]) == sorted(line["pred"])
        assert all(p > 0.5 for p in line["scores"].values())  # OpenEntity predicts the labels with logit > 0
        assert list(full["scores"]) == labels  # every label, in label order
        assert all(0 < p < 1 for p in full["scores"].values())
        assert all(math.isclose(full["scores"][k], v, abs_tol=1e-6) for k, v in line["scores"].items())
        assert {k for k, p in full["scores"].items() if p > 0.5} == set(line["pred"])

    result = cli("evaluate", model, "--data", TYPING, "--split", "dev", "--scores", "--out", cli.workdir / "ev")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in (cli.workdir / "ev" / "predictions-dev.jsonl").read_text().splitlines()]
    assert lines and all(sorted(line["scores"]) == sorted(line["pred"]) for line in lines)


def test_single_label_and_candidate_scores_are_a_softmax():
    from kadapter_cli.tasks import get_task

    tacred = get_task("tacred").label_scores({"pred": ["b"], "scores": [0.0, 2.0, -1.0]}, ["a", "b", "c"])
    assert list(tacred) == ["a", "b", "c"] and abs(sum(tacred.values()) - 1) < 1e-9
    assert max(tacred, key=tacred.get) == "b"
    cosmos = get_task("cosmosqa").label_scores({"pred": ["3"], "scores": [0.0, 0.0, 0.0, 1.0]}, [])
    assert list(cosmos) == ["0", "1", "2", "3"] and max(cosmos, key=cosmos.get) == "3"
