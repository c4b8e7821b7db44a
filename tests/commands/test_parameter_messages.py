"""The library speaks in parameters, the CLI in flags: one failure, two wordings.

A library call's error names the parameter and its value (`lr must be positive, got -1`); the same
failure through `kadapter` names the command's flag (`--lr must be positive, got -1`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kadapter_cli.errors import BadInput, BadParameter, OutputExists, ParamText


def _command(name: str):
    import typer.main

    from kadapter_cli.cli import app

    group = typer.main.get_command(app)
    return group, group.commands[name]


def test_a_library_error_names_the_parameter_and_its_value():
    from kadapter_cli.training.config import TrainConfig

    with pytest.raises(BadParameter) as caught:
        TrainConfig(lr=-1).validate()
    assert str(caught.value) == "lr must be positive, got -1"
    assert (caught.value.parameter, caught.value.value) == ("lr", -1)
    assert caught.value.exit_code == 2 and isinstance(caught.value, BadInput)


def test_the_same_failure_through_the_cli_names_the_flag(cli):
    result = cli("train-adapter", "--kind", "fac", "--lr", "-1")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --lr must be positive, got -1.0"


def test_a_parameter_named_differently_from_its_flag_reads_as_the_flag(cli, tmp_path):
    # ParserSpec.kind is `parse --parser`: the click parameter's name is the library's.
    from kadapter_cli.data.parsing import ParserSpec, parse

    text = tmp_path / "a.txt"
    text.write_text("One sentence.\n")
    with pytest.raises(BadParameter, match=r"^kind must be one of .*, got 'udpipe'$"):
        parse([text], tmp_path / "parsed", spec=ParserSpec(kind="udpipe"))
    result = cli("parse", str(text), "--parser", "udpipe")
    assert result.exit_code == 2
    assert "error: --parser must be one of" in result.stderr and "got 'udpipe'" in result.stderr


def test_advice_reads_as_a_setting_from_the_library_and_as_a_flag_from_the_cli(cli, tmp_path):
    from kadapter_cli.artifacts.output import check_output

    out = tmp_path / "predictions.jsonl"
    out.write_text("")
    with pytest.raises(OutputExists) as caught:
        check_output(out)
    assert str(caught.value) == f"{out}: already exists; pass overwrite=True to replace it"
    result = cli("predict", str(tmp_path / "no-model"), "-", "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {out}: already exists; pass --overwrite to replace it"


def test_flag_speller_spells_names_settings_and_negative_flags_as_the_command_line_does():
    from kadapter_cli.commands import flag_speller

    group, train_adapter = _command("train-adapter")
    spell = flag_speller(train_adapter, tuple(group.commands.values()))
    text = ParamText("{lr} {batch_size:{value}} {device:cuda} {resume:True} {mask_padding:False} {cache_budget} "
                     "{no_such_option} {keep:x}", value=128)
    assert text.render(spell) == ("--lr --batch-size 128 --device cuda --resume --attend-padding --cache-budget "
                                  "no_such_option keep=x")
    assert str(text) == ("lr batch_size=128 device=cuda resume=True mask_padding=False cache_budget "
                         "no_such_option keep=x")
    # Advice to run another command: its flag, when the command at hand has no such option.
    _, finetune = _command("finetune")
    assert ParamText("train one again with {marker_style}").render(
        flag_speller(finetune, tuple(group.commands.values()))) == "train one again with --marker-style"
    assert ParamText("{marker_style}").render(flag_speller(finetune)) == "marker_style"


def test_a_warning_names_the_parameters_from_the_library_and_the_flags_from_the_cli(capsys):
    from kadapter_cli.commands import flag_speller
    from kadapter_cli.errors import spelling
    from kadapter_cli.progress import info

    warning = ParamText("warning: {warmup:{steps:,}} steps; give a share ({warmup:0.1})", steps=1000)
    info(warning)
    assert "warning: warmup=1,000 steps; give a share (warmup=0.1)" in capsys.readouterr().err
    _, train_adapter = _command("train-adapter")
    with spelling(flag_speller(train_adapter)):
        info(warning)
    assert "warning: --warmup 1,000 steps; give a share (--warmup 0.1)" in capsys.readouterr().err


def test_a_message_keeps_its_parameters_when_it_is_moved_to_another_file():
    error = BadParameter("{top_k} must be at least 1, got {value}", 0, "probes.yaml", "stage 'probe'")
    moved = BadInput(error.message, "<stdin>", error.record)
    assert str(moved) == "<stdin>, stage 'probe': top_k must be at least 1, got 0"
    assert moved.render(lambda name, setting: "--top-k") == "<stdin>, stage 'probe': --top-k must be at least 1, got 0"


# ---------------------------------------------------------------- no flags in library messages

PACKAGE = Path(__file__).resolve().parents[2] / "kadapter_cli"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Library modules whose strings may spell flags, and why. Everything else names parameters
# (`ParamText`, `BadParameter`) and leaves the flags to the command layer.
FLAGS_ALLOWED = {
    "artifacts/cards.py": "model cards show shell commands a reader runs (`kadapter finetune --task ...`)",
    "workflow/pipeline.py": "`kadapter run` builds and describes command lines (`--resume`, `--overwrite`, `--only`)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _flags_in_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    return [f"{path.relative_to(PACKAGE)}:{node.lineno}: {flag}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            for flag in FLAG.findall(node.value)]


def test_library_messages_name_parameters_not_flags():
    modules = [p for p in sorted(PACKAGE.rglob("*.py"))
               if p.relative_to(PACKAGE).parts[0] not in ("commands", "cli.py")]
    assert len(modules) > 50
    found = [hit for p in modules if str(p.relative_to(PACKAGE)) not in FLAGS_ALLOWED for hit in _flags_in_strings(p)]
    assert not found, "library strings that spell CLI flags (use ParamText/BadParameter fields):\n" + "\n".join(found)
    for allowed in FLAGS_ALLOWED:  # an exception that no longer spells a flag goes
        assert _flags_in_strings(PACKAGE / allowed), allowed


def test_engine_errors_name_parameters_from_python(cli, tmp_path):
    from kadapter_cli.data.ray_engine import RayOptions, check_engine

    for engine, options, message in (("spark", None, "engine must be one of local, ray, got 'spark'"),
                                     ("local", RayOptions(address="auto"), "address needs engine=ray"),
                                     ("local", RayOptions(num_gpus_per_worker=1), "num_gpus_per_worker needs engine=ray")):
        with pytest.raises(BadParameter) as caught:
            check_engine(engine, options, None)
        assert str(caught.value) == message
    # through the CLI, the same failure names the flag (`address` is `--ray-address`)
    result = cli("parse", tmp_path / "a.conllu", "--ray-address", "auto", "--out", tmp_path / "out")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --ray-address needs --engine ray"
