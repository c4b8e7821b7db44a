"""Knowledge probing commands: train-probe (the masked-LM layer) and probe (LAMA P@1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import echo_json, get_workdir, jsonable, merged_config
from kadapter_cli.commands.train import (
    ADAM_BETA1,
    ADAM_BETA2,
    ADAM_EPS,
    CONFIG,
    DETERMINISTIC,
    DEVICE,
    EPOCHS,
    LIMIT,
    LOG_EVERY,
    LR,
    MAX_LENGTH,
    MAX_STEPS,
    OVERWRITE,
    PRECISION,
    REPORT_TO,
    RESUME,
    RUN_NAME,
    SAVE_EVERY,
    SEED,
    TRACKING_DIR,
    WARMUP,
    WEIGHT_DECAY,
    _train_config,
)
from kadapter_cli.errors import BadInput
from kadapter_cli.processes import is_main_process, process_count
from kadapter_cli.stages.options import LAMA_BATCH_SIZE, LAMA_TOP_K
from kadapter_cli.training.config import PROBE_DEFAULTS


@app.command("train-probe")
def train_probe_cli(
    ctx: typer.Context,
    adapters: Optional[str] = typer.Option(None, "--adapters", help=(
        "Adapters to probe, e.g. fac or fac,lin (names, folders or Hugging Face Hub repository ids org/name or org/name@revision), "
        "or a composition; none = the backbone alone.")),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Text file, one paragraph a line (raw WikiText: ' = Heading = ' lines are skipped)."),
    name: Optional[str] = typer.Option(None, "--name", help="Probe name (default: the adapters joined by +, or base); written to <workdir>/probes/<name>."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/probes/<name>)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone id or folder (default: the adapters')."),
    init_from_lm_head: bool = typer.Option(False, "--init-from-lm-head", help="Start the backbone's block from the backbone's own pretrained LM head (through its frozen transform)."),
    pretrained_lm_head: bool = typer.Option(False, "--pretrained-lm-head", help="Baseline: the backbone's own LM head as it is, untrained (no --adapters, no --corpus)."),
    micro_batch_size: Optional[int] = typer.Option(None, "--micro-batch-size", help=f"Sequences per forward pass (default {PROBE_DEFAULTS['micro_batch_size']}); --batch-size is the effective batch."),
    epochs: Optional[int] = EPOCHS, max_steps: Optional[int] = MAX_STEPS,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Effective batch in sequences (paper: {PROBE_DEFAULTS['batch_size']}) = micro-batch × accumulation × processes."),
    lr: Optional[float] = LR, warmup: Optional[float] = WARMUP, weight_decay: float = WEIGHT_DECAY,
    adam_eps: float = ADAM_EPS, adam_beta1: float = ADAM_BETA1, adam_beta2: float = ADAM_BETA2,
    max_length: Optional[int] = MAX_LENGTH, seed: int = SEED, save_every: Optional[int] = SAVE_EVERY,
    log_every: int = LOG_EVERY, resume: bool = RESUME, overwrite: bool = OVERWRITE, device: str = DEVICE,
    precision: str = PRECISION, deterministic: bool = DETERMINISTIC, limit: Optional[int] = LIMIT,
    report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Train the probe's masked-LM layer over the frozen backbone and adapters (paper App. D)."""
    from kadapter_cli.artifacts.layout import probe_dir, probe_name
    from kadapter_cli.stages.compose import resolve_adapters
    from kadapter_cli.stages.probe import ProbeTrainingSpec, train_probe

    options = merged_config(ctx, config)
    workdir = get_workdir(ctx)
    adapter_set = resolve_adapters(options["adapters"], workdir, None)
    # --batch-size is the effective batch, as for every training command (TrainConfig.batch_split).
    train_config, resolved = _train_config(options, PROBE_DEFAULTS)
    split = train_config.batch_split(process_count())
    resolved.update({"micro_batch_size": split.micro_batch_size, "grad_accum": split.grad_accum})
    name = options["name"] or probe_name(adapter_set.names, options["pretrained_lm_head"])
    spec = ProbeTrainingSpec(
        out=Path(options["out"] or probe_dir(workdir, name)), adapters=adapter_set,
        backbone=options["backbone"], corpus=options["corpus"], max_length=int(resolved["max_length"]),
        init_from_lm_head=options["init_from_lm_head"],
        pretrained_lm_head=options["pretrained_lm_head"],
    )
    summary = train_probe(spec, train_config, resume=options["resume"], overwrite=options["overwrite"],
                          manifest_config=jsonable(resolved))
    if not is_main_process():  # the main process reports
        return
    if json_out:
        echo_json(summary)
    else:
        steps = f"{summary['steps']} steps on {summary['sequences']} sequences" if summary.get("trained") else "untrained"
        typer.echo(f"probe {name} ({steps}) → {spec.out}")


@app.command("probe")
def probe_cli(
    ctx: typer.Context,
    probes: list[str] = typer.Argument(..., help="Probe names (under <workdir>/probes) or folders, e.g. base fac."),
    trex: Optional[Path] = typer.Option(None, "--trex", help="LAMA T-REx folder: P*.jsonl + relations.jsonl (here or one level up)."),
    google_re: Optional[Path] = typer.Option(None, "--google-re", help="LAMA Google-RE folder: {place_of_birth,date_of_birth,place_of_death}_test.jsonl."),
    common_vocab: Optional[Path] = typer.Option(None, "--common-vocab", help="One word a line (LAMA's common_vocab_cased.txt): objects outside it are dropped and predictions are restricted to it."),
    uhn: bool = typer.Option(False, "--uhn", help="UHN: drop facts whose object is a substring of the subject (string match)."),
    query_prefix_space: bool = typer.Option(
        False, "--query-prefix-space",
        help="Byte-level BPE (RoBERTa): encode the query's first word after a space, as the probe's training corpus lines "
             "are encoded (default: without one, as LAMA does)."),
    template: list[str] = typer.Option([], "--template", metavar="REL=TEMPLATE", help="Add or replace a T-REx template, e.g. 'P17=[X] is located in [Y] .' (repeatable)."),
    top_k: int = typer.Option(LAMA_TOP_K, "--top-k", help="Predicted tokens kept per fact in the predictions files."),
    batch_size: int = typer.Option(LAMA_BATCH_SIZE, "--batch-size", help="Queries per batch."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/probe-results/<probes joined by +>[-uhn])."),
    device: str = DEVICE,
    precision: str = PRECISION,
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """P@1 (macro over relations), micro P@1, P@10 and MRR of each probe on LAMA, side by side."""
    from kadapter_cli.artifacts.layout import PROBES, probe_results_dir, resolve_artifact
    from kadapter_cli.data.lama import parse_template_options
    from kadapter_cli.stages.probe import LamaSpec, evaluate_probes

    workdir = get_workdir(ctx)
    if device not in ("auto", "cpu", "cuda"):
        raise BadInput(f"--device must be auto, cpu or cuda, got {device!r}")
    dirs = [resolve_artifact(p, workdir, PROBES) for p in probes]
    spec = LamaSpec(trex=trex, google_re=google_re, common_vocab=common_vocab, uhn=uhn,
                    templates=parse_template_options(template), top_k=top_k, batch_size=batch_size,
                    query_prefix_space=query_prefix_space)
    target = out or probe_results_dir(workdir, [d.name for d in dirs], uhn)
    summary = evaluate_probes(dirs, spec, target, device=device, precision=precision,
                              manifest_config=jsonable({**ctx.params, "probes": [str(d) for d in dirs]}))
    if json_out:
        echo_json(summary)
    else:
        _print_probe_table(summary, target)


DATASET_TITLES = {"trex": "T-REx", "google_re": "Google-RE"}


def _print_probe_table(summary: dict, target: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    names = summary["probes"]
    datasets = list(dict.fromkeys(d for r in summary["results"].values() for d in r))
    table = Table(title=f"LAMA{' (UHN)' if summary['uhn'] else ''}, in % (P@1: macro over relations)")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")

    def value(name: str, dataset: str, key: str, relation: str | None = None) -> str:
        m = summary["results"].get(name, {}).get(dataset)
        if m is not None and relation is not None:
            m = m["per_relation"].get(relation)
        if m is None:
            return "-"
        return f"{m[key]:,}" if key == "facts" else f"{100 * m[key]:.2f}"

    for dataset in datasets:
        title = DATASET_TITLES.get(dataset, dataset)
        for key, label in (("p_at_1", "P@1"), ("p_at_1_micro", "P@1 micro"), ("p_at_10", "P@10"),
                           ("mrr", "MRR ×100"), ("facts", "facts")):
            table.add_row(f"{title} {label}", *(value(n, dataset, key) for n in names))
        relations = dict.fromkeys(r for n in names for r in summary["results"].get(n, {}).get(dataset, {})
                                  .get("per_relation", {}))
        for relation in relations:
            table.add_row(f"  {relation} P@1", *(value(n, dataset, "p_at_1", relation) for n in names))
    Console().print(table)
    dropped: dict[str, int] = {}
    first = summary["filters"][names[0]]  # probes on one backbone keep the same facts
    for counts in first.values():
        for key, v in counts.items():
            if key.startswith("dropped_"):
                dropped[key.removeprefix("dropped_")] = dropped.get(key.removeprefix("dropped_"), 0) + v
    read = sum(c["read"] for c in first.values())
    kept = sum(c["kept"] for c in first.values())
    typer.echo(f"facts: {read} read, {kept} kept; dropped: "
               + ", ".join(f"{k} {v}" for k, v in dropped.items()) + f" (per relation in {target / 'metrics.json'})")
