"""`kadapter report`: the paper-style results table across runs, and its figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import default_of, echo_json, get_workdir
from kadapter_cli.errors import BadInput
from kadapter_cli.stages.report import build_report


@app.command("report")
def report_cli(
    ctx: typer.Context,
    folders: Optional[list[Path]] = typer.Argument(None, help="Folders to search for finetuned runs and adapters (default: the workdir)."),
    split: str = typer.Option(default_of(build_report, "split"), "--split", help="The split of the finetuned runs' metrics: test (as the paper) or dev."),
    paper: bool = typer.Option(False, "--paper", help="Put the paper's numbers (RoBERTa-large, Findings of ACL 2021) beside."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
    csv_out: bool = typer.Option(False, "--csv", help="Print the paper-style table as CSV (scores as fractions)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (scores as fractions, every run's path)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write PNG figures here: loss and dev metric per step, headline bars."),
) -> None:
    """Collect every finetuned run and adapter into one table: rows adapter sets, columns each task's headline metrics."""
    from kadapter_cli.stages.report import collect, print_tables, to_csv
    from kadapter_cli.stages.report import markdown as to_markdown
    from kadapter_cli.stages.report import plot as write_plots

    if sum((markdown, csv_out, json_out)) > 1:
        raise BadInput("choose one of --markdown, --csv, --json")
    runs = collect(folders or [get_workdir(ctx)])
    report = build_report(runs, split=split, paper=paper)
    if json_out:
        echo_json(report)
    elif csv_out:
        sys.stdout.write(to_csv(report))
    elif markdown:
        sys.stdout.write(to_markdown(report))
    else:
        print_tables(report)
    if plot is not None:
        for path in write_plots(runs, plot, report):
            typer.echo(f"wrote {path}", err=True)
