"""The typer app. Each `commands/<area>.py` adds its commands to `app`; they only parse options and
call plain library functions. Library modules never import from here."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup

from kadapter_cli import __version__
from kadapter_cli.artifacts.layout import DEFAULT_WORKDIR
from kadapter_cli.artifacts.output import is_disk_full
from kadapter_cli.commands._click import ClickException, Context, get_current_context
from kadapter_cli.errors import KadapterError, ParamText, Speller, parameter_text, spelling

# Hugging Face's own tqdm bars ("Writing model shards") would interleave with ours and leak into
# pipes; kadapter shows its own. Set before transformers is imported; a user's setting wins.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

# Global options that may also be given after the command name (as `kadapter train-adapter --workdir W`).
_GLOBAL_WITH_VALUE = ("--workdir",)
_GLOBAL_FLAGS = ("--debug",)


def _hoist_global_options(args: list[str]) -> list[str]:
    """Moves `--workdir W` / `--debug` found after the command name to the front."""
    front, rest, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i:])
            break
        if a in _GLOBAL_WITH_VALUE and i + 1 < len(args):
            front += [a, args[i + 1]]
            i += 2
            continue
        if any(a.startswith(g + "=") for g in _GLOBAL_WITH_VALUE) or a in _GLOBAL_FLAGS:
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest


def debug_enabled(ctx: Context | None = None) -> bool:
    if os.environ.get("KADAPTER_DEBUG", "") not in ("", "0", "false"):
        return True
    ctx = ctx or get_current_context(silent=True)
    while ctx is not None:
        if isinstance(ctx.obj, dict) and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


class _PlainArgument(TyperArgument):
    """An argument shown as `INPUTS...` in usage and help, not typer's `{inputs}...` and `<list[Path]>`."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw if self.required else f"[{self.display_name_raw}]"

    def display_type_rich(self, ctx: Context) -> str | None:
        return None


# What a value looks like in --help (click's words), instead of the Python type typer prints.
_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT", "Path": "PATH"}


def plain_help(command, ctx: Context) -> None:
    """Metavars a user reads: none on flags (typer prints `<bool>`), `N`/`PATH`/`TEXT` for values,
    `INPUTS...` for arguments. Options that list their choices set their own metavar."""
    help_option = command.get_help_option(ctx)
    for param in [*command.params, *([help_option] if help_option else [])]:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            param.__class__ = _PlainArgument
        elif param.metavar is not None:
            continue
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            python_type = param.bare_type().removeprefix("list[").removesuffix("]")
            param.metavar = _METAVARS.get(python_type, python_type.upper())
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub, ctx)


def _long_flag(option) -> str:
    return next((o for o in option.opts if o.startswith("--")), option.opts[0])


def flag_speller(command, others=()) -> Speller:
    """How a library parameter reads in `command`'s messages: as its flag. The option is the one
    whose parameter name is the library's (click knows `lr` ↔ `--lr`), in `command` first, then in
    `others` (advice to run another command); a parameter no command has keeps its library name.
    A setting reads as the command line gives it: `resume=True` → `--resume`, `mask_padding=False`
    → `--attend-padding`, `device=cuda` → `--device cuda`."""
    options: dict[str, Any] = {}
    for cmd in (*others, command):  # the command's own options win
        for param in getattr(cmd, "params", ()):
            if param.param_type_name == "option" and param.name and any(o.startswith("--") for o in param.opts):
                options[param.name] = param

    def spell(name: str, setting: str | None) -> str:
        option = options.get(name)
        if option is None:
            return parameter_text(name, setting)
        flag = _long_flag(option)
        if setting is None:
            return flag
        if option.is_flag and setting == "True":
            return flag
        if option.is_flag and setting == "False" and option.secondary_opts:
            return option.secondary_opts[0]
        return f"{flag} {setting}"

    return spell


def _running_command_speller(name: str, setting: str | None) -> str:
    """`flag_speller` of the command running now (what `progress.info` lines name)."""
    ctx = get_current_context(silent=True)
    root = ctx.find_root().command if ctx is not None else None
    others = tuple(getattr(root, "commands", {}).values())
    return flag_speller(ctx.command if ctx is not None else None, others)(name, setting)


class KadapterGroup(TyperGroup):
    """Turns errors into exit codes: `BadInput` → 2 with one line, anything else → 1. Library
    messages name parameters; they are shown with the running command's flags (`flag_speller`)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        plain_help(self, ctx)
        return super().parse_args(ctx, _hoist_global_options(list(args)))

    def _speller(self, ctx: Context) -> Speller:
        name = ctx.invoked_subcommand
        command = self.get_command(ctx, name) if name else None
        return flag_speller(command or self, tuple(self.commands.values()))

    def invoke(self, ctx: Context):
        try:
            with spelling(_running_command_speller):
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException, SystemExit):
            raise
        except KadapterError as e:
            if debug_enabled(ctx):
                traceback.print_exc()
            typer.echo(f"error: {e.render(self._speller(ctx))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            # `Interrupted` says what was kept and how to continue; a bare Ctrl-C has no message.
            message = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], ParamText) else str(e)
            message = message.render(self._speller(ctx)) if isinstance(message, ParamText) else message
            typer.echo("interrupted" + (f": {message}" if message else ""), err=True)
            sys.exit(130)
        except BrokenPipeError:
            # The reader went away (`kadapter ... | head`): stop quietly, as Unix tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if debug_enabled(ctx):
                traceback.print_exc()
            if is_disk_full(e):
                # A full disk is the user's to fix, not a bug; outputs are written atomically, so
                # nothing half-written is left where a later stage would read it.
                where = f" while writing {e.filename}" if getattr(e, "filename", None) else ""
                typer.echo(f"error: no space left on device{where}; free some space and rerun", err=True)
                sys.exit(2)
            if not debug_enabled(ctx):
                typer.echo(
                    f"internal error: {type(e).__name__}: {e}\n"
                    "(this is a bug in kadapter; rerun with --debug for the traceback)",
                    err=True,
                )
            sys.exit(1)


app = typer.Typer(
    cls=KadapterGroup,
    name="kadapter",
    help="K-Adapter: train knowledge adapters on a frozen encoder, compose them, fine-tune and evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kadapter {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    workdir: Path = typer.Option(
        DEFAULT_WORKDIR, "--workdir", envvar="KADAPTER_WORKDIR",
        help="Where stages write their outputs and find their inputs by default.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also KADAPTER_DEBUG=1)."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = {"workdir": workdir, "debug": debug}
