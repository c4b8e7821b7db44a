"""`kadapter convert ...`: bring data from other formats into the ones kadapter reads.

Thin typer functions: they parse options and call plain library functions.
"""

from __future__ import annotations

from pathlib import Path

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import echo_json
from kadapter_cli.progress import info

convert_app = typer.Typer(
    help="Convert data from other formats into the formats kadapter reads.",
    no_args_is_help=True,
)
app.add_typer(convert_app, name="convert")


@convert_app.command("figer-raw")
def figer_raw_cli(
    source: Path = typer.Argument(
        ..., help="FIGER token-per-line BIO file (TOKEN<TAB>TAG, as the original exp.label)."),
    output: Path = typer.Argument(
        ..., help="JSON file to write (ERNIE / K-Adapter format), e.g. WORKDIR/tasks/figer/test.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout."),
) -> None:
    """Convert raw FIGER (token-per-line BIO) into the JSON list of {sent, start, end, labels} records."""
    from kadapter_cli.tasks.figer import convert_figer_raw

    counts = convert_figer_raw(source, output, overwrite=overwrite)
    if as_json:
        echo_json({"output": output, **counts})
    info(f"wrote {counts['mentions']} mentions from {counts['sentences']} sentences "
         f"({counts['labels']} distinct types) to {output}")
