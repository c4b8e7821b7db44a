"""The typer app. Each `commands/<area>.py` adds its commands to `app`; they only parse options and
call plain library functions. Library modules never import from here."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import typer
from typer.core import TyperArgument, TyperGroup

from kadapter_cli import __version__
from kadapter_cli.artifacts.layout import DEFAULT_WORKDIR
from kadapter_cli.artifacts.output import is_disk_full
from kadapter_cli.commands._click import ClickException, Context, get_current_context
from kadapter_cli.errors import KadapterError

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


class KadapterGroup(TyperGroup):
    """Turns errors into exit codes: `BadInput` → 2 with one line, anything else → 1."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        plain_help(self, ctx)
        return super().parse_args(ctx, _hoist_global_options(list(args)))

    def invoke(self, ctx: Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException, SystemExit):
            raise
        except KadapterError as e:
            if debug_enabled(ctx):
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            # `Interrupted` says what was kept and how to continue; a bare Ctrl-C has no message.
            typer.echo("interrupted" + (f": {e}" if str(e) else ""), err=True)
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
