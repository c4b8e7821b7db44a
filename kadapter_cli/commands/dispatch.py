"""The pipeline runner's commands (`kadapter_cli.workflow.pipeline.Commands`) over the running typer
app: a stage's options checked against its click command and turned into argv, and the command run
in this process."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

from kadapter_cli.errors import BadInput
from kadapter_cli.workflow.pipeline import Stage


def _group(app: Any) -> Any:
    """The click group of a typer app (or the group itself, as a command's context holds it)."""
    import typer
    import typer.main

    return typer.main.get_command(app) if isinstance(app, typer.Typer) else app


def app_commands(app: Any) -> dict[str, Any]:
    """Command name → click command of a typer app or click group."""
    return dict(getattr(_group(app), "commands", {}))


def stage_argv(stage: Stage, workdir: Path, command: Any | None = None, path: Path | None = None) -> list[str]:
    """The `kadapter` argv of a stage: `--workdir W command inputs... args... --option value ...`.

    With the click `command` at hand, option names are checked (an unknown one is `BadInput`
    naming the pipeline file and stage), `false` turns into `--no-x` where the option has one,
    and a list repeats a repeatable option; otherwise lists are comma-joined (`--adapters fac,lin`).
    """
    argv = ["--workdir", str(workdir), stage.command, *stage.inputs, *stage.args]
    params = {}
    if command is not None:
        for p in command.params:
            for opt in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())):
                if opt.startswith("--"):
                    params[opt] = p
    for key, value in stage.options.items():
        flag = f"--{key}"
        param = params.get(flag)
        if command is not None and param is None:
            known = ", ".join(sorted(o[2:] for o in params if o not in ("--help",)))
            raise BadInput(f"command '{stage.command}' has no option '--{key}' (known: {known})",
                           path, f"stage '{stage.name}'")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif param is not None and getattr(param, "secondary_opts", None):
                argv.append(param.secondary_opts[0])
            continue
        if isinstance(value, list):
            if param is not None and getattr(param, "multiple", False):
                for v in value:
                    argv += [flag, str(v)]
                continue
            value = ",".join(str(v) for v in value)
        argv += [flag, str(value)]
    return argv


def invoke(app: Any, argv: Sequence[str]) -> int:
    """Runs one kadapter command in this process; returns its exit code (the command prints its own errors).

    What the command prints on stdout goes to stderr: stdout belongs to the runner (the plan of
    a dry run, `--json`, the demo's table), so that it stays parseable.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _group(app).main(args=list(argv), prog_name="kadapter", standalone_mode=True)
    except SystemExit as e:
        if e.code is None:
            return 0
        return e.code if isinstance(e.code, int) else 1
    return 0


def _has_option(command: Any, flag: str) -> bool:
    return any(flag in getattr(p, "opts", ()) for p in command.params)


class ClickCommands:
    """`Commands` for a typer app or click group: what `kadapter run` and `kadapter demo` hand the runner."""

    def __init__(self, app: Any):
        self.app = app
        self.commands = app_commands(app)

    def names(self) -> list[str]:
        return list(self.commands)

    def argv(self, stage: Stage, workdir: Path, path: Path | None = None) -> list[str]:
        return stage_argv(stage, workdir, self.commands[stage.command], path)

    def has_option(self, command: str, flag: str) -> bool:
        return _has_option(self.commands[command], flag)

    def run(self, argv: Sequence[str]) -> int:
        return invoke(self.app, argv)
