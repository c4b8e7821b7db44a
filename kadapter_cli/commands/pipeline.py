"""`kadapter run PIPELINE.yaml` and `kadapter demo`: thin wrappers over `kadapter_cli.workflow.pipeline`."""

from __future__ import annotations

from pathlib import Path

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands._click import Context, ParameterSource
from kadapter_cli.commands.common import echo_json, get_workdir


def _workdir_override(ctx: Context) -> dict[str, str]:
    """`kadapter --workdir W run ...` wins over the pipeline's `workdir` variable; the default does not."""
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("workdir") in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT,
    ):
        return {"workdir": str(get_workdir(ctx).absolute())}  # the user's path: relative to where they are
    return {}


def _results_json(results) -> list[dict]:
    return [
        {"stage": r.stage, "ran": r.ran, "reason": r.reason, "command": ["kadapter", *r.argv],
         "seconds": r.seconds, "exit_code": r.exit_code}
        for r in results
    ]


@app.command("run")
def run_cli(
    ctx: typer.Context,
    pipeline_file: Path = typer.Argument(..., help="Pipeline YAML file: vars + stages of kadapter commands (format: pipelines/demo.yaml)."),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="NAME=VALUE",
        help="Override a pipeline variable, e.g. --set backbone=roberta-base (repeatable).",
    ),
    force: bool = typer.Option(False, "--force", help="Rerun every selected stage, changed or not."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run and why; run nothing."),
    only: list[str] = typer.Option([], "--only", metavar="STAGE", help="Run only this stage (repeatable)."),
    json_output: bool = typer.Option(False, "--json", help="Print what happened to each stage as JSON on stdout."),
) -> None:
    """Run a pipeline's stages in order, skipping those whose options and inputs did not change.

    The lock file beside the workdir (<workdir>.lock.yaml) records what each stage ran with. A stage that reruns over its existing output is passed --overwrite.

    Relative paths in the file (and in --set values) are relative to the file's folder, as in weasel. A global --workdir (or KADAPTER_WORKDIR) replaces the pipeline's workdir variable.
    """
    from kadapter_cli.commands.dispatch import ClickCommands
    from kadapter_cli.progress import info
    from kadapter_cli.workflow.pipeline import in_folder, load_pipeline_resolved, parse_assignments, run_pipeline

    variables = {**_workdir_override(ctx), **parse_assignments(overrides)}
    pipeline_file = pipeline_file.absolute()
    echo = typer.echo if dry_run and not json_output else info
    with in_folder(pipeline_file.parent):
        pipeline = load_pipeline_resolved(pipeline_file, variables, create_backbone=not dry_run)
        results = run_pipeline(pipeline, ClickCommands(ctx.find_root().command), force=force, dry_run=dry_run, only=only,
                               echo=echo)
        if json_output:
            echo_json({"pipeline": str(pipeline_file), "workdir": str(pipeline.workdir.absolute()),
                       "lock": str(pipeline.lock_path.absolute()), "dry_run": dry_run,
                       "stages": _results_json(results)})


@app.command("demo")
def demo_cli(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rerun every stage even if the workdir holds its results."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout instead of a table."),
) -> None:
    """Run the bundled demo (pipelines/demo.yaml on the bundled data) and print a results table.

    Stages: prepare-trex, parse, train the fac and lin adapters, compose them, probe the backbone and fac on LAMA-format facts, fine-tune entity typing with no adapter, fac, lin and fac+lin, evaluate. Minutes on a laptop CPU.

    The backbone is the packaged MiniLM when installed, otherwise a tiny random one made on the fly. The workdir is kadapter-work-demo unless --workdir is given; a second run only prints the table.

    It ends with `kadapter report --paper` on the workdir; `kadapter --workdir kadapter-work-demo report --plot DIR` draws its figures.
    """
    import torch

    from kadapter_cli.commands.dispatch import ClickCommands
    from kadapter_cli.progress import info
    from kadapter_cli.workflow.pipeline import (
        DEMO_PIPELINE,
        DEMO_THREADS,
        demo_summary,
        load_pipeline_resolved,
        run_pipeline,
    )

    # The thread count decides the order in which matrix products add up: pinned, every machine with
    # the same CPU kernels prints the same table (README, "The demo").
    torch.set_num_threads(DEMO_THREADS)
    pipeline = load_pipeline_resolved(DEMO_PIPELINE, _workdir_override(ctx))
    info(f"demo: workdir {pipeline.workdir}, backbone {pipeline.variables['backbone']}")
    run_pipeline(pipeline, ClickCommands(ctx.find_root().command), force=force, echo=info)
    summary = demo_summary(pipeline)
    if json_output:
        echo_json(summary)
    else:
        from kadapter_cli.stages.report import build_report, collect, print_tables

        _print_demo_tables(summary)
        # `kadapter report --paper` on the workdir: the paper-style table, the paper's numbers beside
        # (the adapters' table above already has their scores).
        print_tables(build_report(collect([pipeline.workdir]), paper=True), adapters=False)


def _pct(value) -> str:
    """Scores are fractions in metrics.json; tables show percentages like the paper. Counts stay counts."""
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return f"{100 * value:.2f}"
    return "–" if value is None else f"{value:,.0f}" if isinstance(value, float) else f"{value:,}"


def _secs(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _print_demo_tables(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"backbone: {summary['backbone']} ({summary['backbone_kind']})", soft_wrap=True, highlight=False)
    table = Table(title=f"Entity typing ({summary['task']}), test split")
    for col in ("variant", "P", "R", "F1", "dev F1", "time (s)"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for row in summary["finetuned"]:
        test, dev = row["test"], row["dev"]
        table.add_row(row["variant"], _pct(test.get("precision")), _pct(test.get("recall")), _pct(test.get("f1")),
                      _pct(dev.get("f1")), _secs(row["seconds"]))
    console.print(table)
    table = Table(title="Knowledge adapters, dev split")
    for col in ("adapter", "metric", "value", "time (s)"):
        table.add_column(col, justify="left" if col in ("adapter", "metric") else "right", no_wrap=True)
    for row in summary["adapters"]:
        metrics = row["dev"] or {"–": None}
        for i, (metric, value) in enumerate(metrics.items()):
            table.add_row(f"{row['name']} ({row['kind']})" if i == 0 else "", metric, _pct(value),
                          _secs(row["seconds"]) if i == 0 else "")
    console.print(table)
    if summary.get("probe"):
        _print_probe_demo_table(console, summary["probe"])


def _print_probe_demo_table(console, probe: dict) -> None:
    from rich.table import Table

    names = probe["probes"]
    datasets = list(dict.fromkeys(d for r in probe["results"].values() for d in r))
    table = Table(title="LAMA probe, demo facts (P@1: macro over relations)")
    table.add_column("metric", justify="left", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    for dataset in datasets:
        for key, label in (("p_at_1", "P@1"), ("p_at_1_micro", "P@1 micro"), ("p_at_10", "P@10"), ("mrr", "MRR"),
                           ("facts", "facts")):
            values = [probe["results"].get(n, {}).get(dataset, {}).get(key) for n in names]
            table.add_row(f"{dataset} {label}", *(_pct(float(v)) if key != "facts" and v is not None else _pct(v)
                                                  for v in values))
    console.print(table)
