"""`--help`: the paper's defaults per adapter kind and task, choices shown as choices, no Python
type names leaking into any command's help, and every argument that takes a model says it takes a
Hugging Face Hub repository id."""

from __future__ import annotations

import pytest


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


@pytest.mark.parametrize("command, argument", [
    ("compose", "ADAPTERS..."), ("finetune", "--adapters"), ("train-probe", "--adapters"), ("encode", "MODEL"),
    ("evaluate", "MODEL_DIR"), ("predict", "MODEL_DIR"), ("inspect", "FOLDER"),
])
def test_every_argument_that_takes_a_model_says_it_takes_a_hub_repository_id(cli, command, argument, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    rows = [line.strip("│ ") for line in cli(command, "--help").stdout.splitlines()]
    start = next(i for i, row in enumerate(rows) if row.lstrip("* ").startswith(argument + " "))
    end = next(i for i, row in enumerate(rows[start + 1:], start + 1)
               if re.match(r"[*\s]*(--|[A-Z_.]+\s|╰)", row))  # the next argument, option or box
    described = " ".join(" ".join(rows[start:end]).split())
    # written without brackets: rich reads `[@revision]` as markup and drops it from the help
    assert "Hub repository id" in described and "org/name or org/name@revision" in described, described
