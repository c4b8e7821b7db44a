"""Helpers shared by the command modules: the workdir, `--config FILE.yaml` merging, output."""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import typer

from kadapter_cli.artifacts.io import load_yaml_mapping
from kadapter_cli.artifacts.layout import DEFAULT_WORKDIR
from kadapter_cli.commands._click import BadParameter, Context, ParameterSource
from kadapter_cli.errors import BadInput


def get_workdir(ctx: Context) -> Path:
    while ctx is not None:
        if isinstance(ctx.obj, dict) and "workdir" in ctx.obj:
            return Path(ctx.obj["workdir"])
        ctx = ctx.parent
    return DEFAULT_WORKDIR


def merged_config(ctx: Context, config_file: Path | None, exclude: tuple[str, ...] = ("config",)) -> dict[str, Any]:
    """The command's options with `--config FILE.yaml` applied under them.

    Keys of the file are long option names with `_` (`-` is accepted too). A flag given on the
    command line (or through its environment variable) wins over the file; the file wins over the
    defaults. Unknown keys are refused, naming the key.
    """
    params = {k: v for k, v in ctx.params.items() if k not in exclude}
    if config_file is None:
        return params
    by_name = {p.name: p for p in ctx.command.params if p.name}
    # A key is an option's long name (`json` for --json, whatever the Python parameter is called).
    by_key = {opt[2:].replace("-", "_"): p.name for p in ctx.command.params if p.name in params
              for opt in getattr(p, "opts", ()) if opt.startswith("--")}
    for key, value in load_yaml_mapping(config_file, "config file", "expected a mapping of option names to values").items():
        name = by_key.get(str(key).replace("-", "_"))
        if name is None:
            known = ", ".join(sorted(by_key))
            raise BadInput(f"unknown option '{key}' (known: {known})", config_file)
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        try:
            params[name] = _convert(by_name[name], ctx, value)
        except BadParameter as e:
            raise BadInput(f"option '{key}': {e.message}", config_file) from None
    return params


@contextlib.contextmanager
def stdin_as_file(path: Path) -> Iterator[Path]:
    """`-` → a temporary file holding stdin (readers take paths); errors then name `<stdin>`."""
    if str(path) != "-":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kadapter-stdin-") as folder:
        copy = Path(folder) / "stdin"
        copy.write_bytes(sys.stdin.buffer.read())
        try:
            yield copy
        except BadInput as e:
            if e.path != str(copy):
                raise
            raise BadInput(e.message, "<stdin>", e.record) from None


def jsonable(obj: Any) -> Any:
    """Options → JSON for manifests (paths as strings, tuples as lists)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and not isinstance(obj, (int, float, str, bool)):
        return obj.value  # enums
    return obj


def default_of(function: Any, parameter: str) -> Any:
    """The default of a library function's parameter, for the flag that sets it: one value, one place."""
    return inspect.signature(function).parameters[parameter].default


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(jsonable(obj), indent=2, ensure_ascii=False))


def _convert(param, ctx: Context, value: Any) -> Any:
    """Converts a YAML value with the option's own type (a list for repeatable options; a mapping
    for a repeatable KEY=VALUE option such as `task_option: {max_negatives: 44999}`)."""
    if isinstance(value, dict) and getattr(param, "multiple", False):
        value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if value is not None and getattr(param, "multiple", False) and not isinstance(value, (list, tuple)):
        value = [value]
    return param.process_value(ctx, value)
