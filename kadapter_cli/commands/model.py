"""Model commands: `tiny-backbone`, `import-original`, `inspect`, `push`.

Each is a thin typer function: it parses options and calls a plain library function. torch and
transformers are imported inside the functions so that `kadapter --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import default_of
from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.options import ORIGINAL_NAMES, ORIGINAL_TAPS
from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone
from kadapter_cli.progress import info


@app.command("tiny-backbone")
def tiny_backbone_cli(
    folder: Path = typer.Argument(..., help="Folder to write the tiny RoBERTa and its tokenizer to."),
    hidden_size: int = typer.Option(default_of(make_tiny_backbone, "hidden_size"), "--hidden-size", help="Hidden size of the model."),
    layers: int = typer.Option(default_of(make_tiny_backbone, "num_layers"), "--layers", help="Number of transformer layers."),
    heads: int = typer.Option(default_of(make_tiny_backbone, "num_heads"), "--heads", help="Number of attention heads (must divide the hidden size)."),
    vocab_size: int = typer.Option(default_of(make_tiny_backbone, "vocab_size"), "--vocab-size", help="Most entries of the byte-level BPE vocabulary."),
    seed: int = typer.Option(default_of(make_tiny_backbone, "seed"), "--seed", help="Seed of the random weights (same seed → identical files)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the folder if it exists."),
) -> None:
    """Write a tiny randomly initialised RoBERTa + byte-level BPE tokenizer, for smoke tests.

    The folder loads with AutoModel/AutoTokenizer and can be given to any `--backbone` option.
    """
    from kadapter_cli.artifacts.manifest import write_manifest
    from kadapter_cli.artifacts.output import atomic_output

    config = {"hidden_size": hidden_size, "num_layers": layers, "num_heads": heads, "vocab_size": vocab_size, "seed": seed}
    with atomic_output(folder, overwrite=overwrite) as tmp:
        make_tiny_backbone(tmp, hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                           vocab_size=vocab_size, seed=seed)
        write_manifest(tmp, "backbone", config=config)
    info(f"wrote a tiny RoBERTa ({hidden_size} wide, {layers} layers, {heads} heads) to {folder}")


def _parse_taps(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInput(f"--taps must be comma-separated layer indices, got '{text}'") from None


@app.command("import-original")
def import_original_cli(
    ctx: typer.Context,
    fac: Optional[Path] = typer.Option(None, "--fac", help="The original fac-adapter pytorch_model.bin."),
    lin: Optional[Path] = typer.Option(None, "--lin", help="The original lin-adapter pytorch_model.bin."),
    name_fac: str = typer.Option(ORIGINAL_NAMES["fac"], "--name-fac", help="Adapter name for the fac checkpoint (<workdir>/adapters/<name>)."),
    name_lin: str = typer.Option(ORIGINAL_NAMES["lin"], "--name-lin", help="Adapter name for the lin checkpoint (<workdir>/adapters/<name>)."),
    relations: Optional[Path] = typer.Option(
        None, "--relations",
        help="Relation ids of the fac head in label order (JSON list, e.g. trex-rc/relations.json, or one per line); "
        "default rel_0..rel_{n-1}.",
    ),
    taps: str = typer.Option(
        ",".join(map(str, ORIGINAL_TAPS)), "--taps",
        help="Backbone layers the adapter layers read (not stored in the checkpoints; the released scripts used 0,11,22).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing adapter folders."),
) -> None:
    """Import microsoft/K-Adapter checkpoints (pytorch_model.bin) as adapter artifacts.

    The files are loaded with torch.load(weights_only=True): a pickle that would run code is refused.
    """
    import sys

    from kadapter_cli.artifacts.layout import ADAPTERS
    from kadapter_cli.commands.common import get_workdir
    from kadapter_cli.modeling.original import import_original

    written = import_original(
        fac, lin, get_workdir(ctx) / ADAPTERS, overwrite,
        name_fac=name_fac, name_lin=name_lin, relations=relations, tap_layers=_parse_taps(taps), command=sys.argv,
    )
    for path in written:
        info(f"imported {path}")


@app.command("inspect")
def inspect_cli(
    ctx: typer.Context,
    folder: Path = typer.Argument(..., help=(
        "Artifact folder (or an adapter name, resolved under <workdir>/adapters, or a Hugging Face Hub repository "
        "id org/name or org/name@revision).")),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show an artifact's manifest summary and its parameter table."""
    from kadapter_cli.artifacts.layout import ADAPTERS
    from kadapter_cli.artifacts.sources import artifact_folder
    from kadapter_cli.commands.common import echo_json, get_workdir
    from kadapter_cli.stages.inspect import inspect

    report = inspect(artifact_folder(folder, get_workdir(ctx), ADAPTERS))
    if as_json:
        echo_json(report)
        return
    _print_report(report)


def plain(value) -> str:
    """A value as a person reads it: 0.6612, 1,492, `a: 1, b: 2`, `0, 11, 22` — not a Python repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    about = dict(report["about"])
    adapter_kind = about.pop("adapter kind", None)
    summary.add_row("path", report["path"])
    summary.add_row("kind", f"{report['kind']} ({adapter_kind})" if adapter_kind else str(report["kind"]))
    for key, value in about.items():
        if value not in (None, {}, ""):
            summary.add_row(key, plain(value))
    summary.add_row("created", f"{report['created']} (kadapter {report['kadapter_version']})")
    summary.add_row("command", " ".join(map(str, report["command"])) or "-")
    summary.add_row("inputs", str(len(report["inputs"])))
    summary.add_row("files", ", ".join(report["files"]) or "-")
    for key, value in report["stats"].items():
        summary.add_row(f"stats.{key}", plain(value))
    console.print(summary)
    if report["parameters"]:
        table = Table(title="parameters")
        table.add_column("component")
        table.add_column("total", justify="right")
        table.add_column("trainable", justify="right")
        for row in report["parameters"]:
            table.add_row(row["component"], f"{row['total']:,}", "?" if row["trainable"] is None else f"{row['trainable']:,}")
        trainable = report["trainable_parameters"]
        table.add_row("all", f"{report['total_parameters']:,}", "?" if trainable is None else f"{trainable:,}", style="bold")
        console.print(table)


@app.command("push")
def push_cli(
    ctx: typer.Context,
    artifact: Path = typer.Argument(..., help=(
        "An adapter, composition or finetuned model folder (or an adapter name, resolved under <workdir>/adapters).")),
    repo_id: str = typer.Argument(..., metavar="ORG/NAME", help="The Hugging Face Hub repository (created if new)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private (an existing one keeps its own)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="The branch to push to (created from main if new; default main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the files that would go and the card's metadata; no network."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of lines."),
) -> None:
    """Push an artifact to the Hugging Face Hub: its manifest, every file it lists, and its card.

    Any argument that takes an adapter, a composition or a finetuned model then takes ORG/NAME (or
    ORG/NAME@REVISION). Uses the token of `hf auth login` or HF_TOKEN, and HF_ENDPOINT.
    """
    from kadapter_cli.artifacts.layout import ADAPTERS, resolve_artifact
    from kadapter_cli.artifacts.push import push
    from kadapter_cli.commands.common import echo_json, get_workdir

    result = push(resolve_artifact(artifact, get_workdir(ctx), ADAPTERS), repo_id, private=private, revision=revision,
                  dry_run=dry_run)
    if as_json:
        echo_json(result)
        return
    where = f"{result['repo_id']} (revision {result['revision']}{', private' if private else ''})"
    typer.echo(f"{'would push' if dry_run else 'pushed'} {len(result['files'])} files ({result['kind']}) to {where}:")
    width = max(len(f["path"]) for f in result["files"])
    for f in result["files"]:
        typer.echo(f"  {f['path']:<{width}}  {f['size']:>12,} bytes")
    typer.echo("card metadata:")
    typer.echo("\n".join("  " + line for line in yaml_lines(result["card"])))
    if not dry_run:
        typer.echo(f"→ {result['url']} (commit {result['commit'][:12]})")


def yaml_lines(value: dict) -> list[str]:
    import yaml

    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True).rstrip("\n").splitlines()
