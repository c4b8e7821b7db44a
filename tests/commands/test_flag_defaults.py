"""One default, one place: every flag's default is the library's.

For each command, each click parameter is compared with the default of the library parameter it
sets: a parameter of the same name (or the name in `RENAMED`) of the functions and spec classes
the command calls (`LIBRARY`), read with `inspect.signature`, or the library constant in
`CONSTANTS` where the library takes the value without a default of its own. A flag whose default
is a literal that drifted from the library's fails here; so does a new flag with a default the
library does not have, unless `OWN_DEFAULTS` says why it is the command's own.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest
import typer.main

from kadapter_cli.api.features_file import encode_file
from kadapter_cli.artifacts.push import push
from kadapter_cli.cli import app
from kadapter_cli.data.parsing import ParserSpec, merge_parsed_shards, parse
from kadapter_cli.data.ray_engine import RayOptions
from kadapter_cli.data.trex import merge_trex_shards, prepare_trex
from kadapter_cli.modeling.backbone import DEFAULT_BACKBONE
from kadapter_cli.modeling.original import import_original
from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone
from kadapter_cli.stages.compose import AdapterSet, compose
from kadapter_cli.stages.finetune import FinetuneSpec, evaluate_finetuned, finetune, predict_records
from kadapter_cli.stages.inspect import inspect as inspect_artifact
from kadapter_cli.stages.options import EVAL_SPLIT
from kadapter_cli.stages.pretrain import AdapterTrainingSpec, train_adapter
from kadapter_cli.stages.probe import LamaSpec, ProbeTrainingSpec, evaluate_probes, train_probe
from kadapter_cli.stages.report import build_report
from kadapter_cli.tasks.figer import convert_figer_raw
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.workflow.pipeline import run_pipeline

COMMANDS = Path(__file__).resolve().parents[2] / "kadapter_cli" / "commands"

# What each command calls: the library parameters its flags set.
LIBRARY: dict[str, tuple[Any, ...]] = {
    "prepare-trex": (prepare_trex, merge_trex_shards, RayOptions),
    "parse": (ParserSpec, parse, merge_parsed_shards, RayOptions),
    "encode": (encode_file,),
    "tiny-backbone": (make_tiny_backbone,),
    "import-original": (import_original,),
    "inspect": (inspect_artifact,),
    "push": (push,),
    "run": (run_pipeline,),
    "demo": (run_pipeline,),
    "train-adapter": (AdapterTrainingSpec, train_adapter, TrainConfig),
    "compose": (compose, AdapterSet),
    "finetune": (FinetuneSpec, finetune, TrainConfig),
    "evaluate": (evaluate_finetuned,),
    "predict": (predict_records,),
    "train-probe": (ProbeTrainingSpec, train_probe, TrainConfig),
    "probe": (LamaSpec, evaluate_probes),
    "report": (build_report,),
    "convert figer-raw": (convert_figer_raw,),
}
# A flag whose parameter the library names otherwise: (command, flag parameter) → library parameter.
RENAMED = {
    ("tiny-backbone", "layers"): "num_layers",
    ("tiny-backbone", "heads"): "num_heads",
    ("import-original", "taps"): "tap_layers",  # "0,11,22" on the command line
}
# A default the library holds as a constant, not as a parameter's default.
CONSTANTS = {
    ("evaluate", "split"): EVAL_SPLIT,  # evaluate_finetuned takes the split without a default
    ("train-adapter", "backbone"): DEFAULT_BACKBONE,  # AdapterTrainingSpec.backbone is required
}
# Defaults that are the command's own, and why.
OWN_DEFAULTS = {
    ("evaluate", "scores"): "with --all-scores it makes the library's `scores` mode ('none' unless given)",
    ("predict", "scores"): "with --all-scores it makes the library's `scores` mode ('none' unless given)",
}


def _commands():
    def walk(command, path=()):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path), command

    return dict(walk(typer.main.get_command(app)))


def _library_default(target: Any, name: str) -> Any:
    parameter = inspect.signature(target).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return inspect.Parameter.empty
    return parameter.default


def _same(flag_default: Any, library_default: Any) -> bool:
    if isinstance(library_default, (list, tuple)):  # "0,11,22" for (0, 11, 22); a repeatable flag's list
        if isinstance(flag_default, str):
            flag_default = [int(t) for t in flag_default.split(",")]
        return list(flag_default) == list(library_default)
    return type(flag_default) is type(library_default) and flag_default == library_default or (
        isinstance(flag_default, float) and isinstance(library_default, (int, float))
        and not isinstance(library_default, bool) and flag_default == library_default)


def test_every_command_is_mapped_to_the_library_it_calls():
    assert set(_commands()) == set(LIBRARY)


def flag_defaults():
    for command_name, command in sorted(_commands().items()):
        for param in command.params:
            if param.name and param.name != "help" and param.default is not None:
                yield command_name, param


@pytest.mark.parametrize(("command_name", "param"), list(flag_defaults()),
                         ids=lambda v: v if isinstance(v, str) else v.name)
def test_each_flag_default_is_the_library_default_it_stands_for(command_name, param):
    key = (command_name, param.name)
    default = param.default
    if key in OWN_DEFAULTS:
        return
    if key in CONSTANTS:
        assert _same(default, CONSTANTS[key]), f"{command_name} {param.opts[0]}: {default!r} != {CONSTANTS[key]!r}"
        return
    name = RENAMED.get(key, param.name)
    found = {t.__qualname__: d for t in LIBRARY[command_name]
             if (d := _library_default(t, name)) is not inspect.Parameter.empty}
    if not found:
        # A switch that is off, or an empty repeatable option, sets nothing the library has a default for.
        assert default is False or default in ([], ()), (
            f"{command_name} {param.opts[0]} defaults to {default!r}, which no library parameter named {name!r} "
            "holds: take it from the library, or list it in OWN_DEFAULTS with the reason")
        return
    wrong = {where: d for where, d in found.items() if not _same(default, d)}
    assert not wrong, f"{command_name} {param.opts[0]} defaults to {default!r}, the library to {wrong}"


def test_the_check_catches_a_drifted_literal(monkeypatch):
    # A re-typed literal that drifts from the library's default fails the comparison above.
    command = _commands()["probe"]
    param = next(p for p in command.params if p.name == "top_k")
    monkeypatch.setattr(param, "default", param.default + 1)
    with pytest.raises(AssertionError, match="--top-k defaults to 11"):
        test_each_flag_default_is_the_library_default_it_stands_for("probe", param)
    unknown = next(p for p in _commands()["encode"].params if p.name == "pool")
    monkeypatch.setitem(LIBRARY, "encode", ())
    with pytest.raises(AssertionError, match="OWN_DEFAULTS"):
        test_each_flag_default_is_the_library_default_it_stands_for("encode", unknown)


def _sets_nothing(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None or node.value is False or node.value is Ellipsis
    return isinstance(node, (ast.List, ast.Tuple)) and not node.elts


def _literal_defaults(path) -> list[str]:
    """`typer.Option(<literal>, ...)` / `typer.Argument(<literal>, ...)` in a command module, but for
    the literals that set nothing (None, False, [], and `...` for a required argument)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("Option", "Argument")
                and node.args):
            first = node.args[0]
            if isinstance(first, (ast.Constant, ast.List, ast.Tuple, ast.UnaryOp)) and not _sets_nothing(first):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(first)}")
    return found


def test_no_command_spells_a_default_of_its_own():
    # A literal default in a command is a second copy of the library's; take the library's instead.
    found = [hit for path in sorted(COMMANDS.glob("*.py")) for hit in _literal_defaults(path)]
    assert not found, "flag defaults written as literals:\n" + "\n".join(found)
