"""Training and evaluation commands: train-adapter, compose, finetune, evaluate, predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import echo_json, get_workdir, jsonable, merged_config
from kadapter_cli.errors import BadInput

# ---------------------------------------------------------------- shared training options
# Options left at None take the paper's value for the kind / task (see `kadapter_cli.pretrain`,
# `kadapter_cli.tasks`).

EPOCHS = typer.Option(None, "--epochs", help="Training epochs (paper default for the kind/task).")
MAX_STEPS = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps.")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Examples per batch (per process).")
LR = typer.Option(None, "--lr", help="Peak learning rate of AdamW.")
WARMUP = typer.Option(None, "--warmup", help="Warm-up: steps if ≥ 1, share of all steps if < 1.")
WEIGHT_DECAY = typer.Option(0.0, "--weight-decay", help="AdamW weight decay (not on biases and norms).")
ADAM_EPS = typer.Option(1e-8, "--adam-eps", help="AdamW epsilon.")
ADAM_BETA1 = typer.Option(0.9, "--adam-beta1", help="AdamW beta1.")
ADAM_BETA2 = typer.Option(0.999, "--adam-beta2", help="AdamW beta2 (0.9 as in Dozat & Manning's parser suits the lin pointer head).")
GRAD_ACCUM = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step.")
MAX_LENGTH = typer.Option(None, "--max-length", help="Longest input in sub-tokens, special tokens included.")
SEED = typer.Option(42, "--seed", help="Seed of initialisation, data order and dropout.")
SAVE_EVERY = typer.Option(None, "--save-every", help="Checkpoint every N steps (and at each epoch end).")
EVAL_EVERY = typer.Option(None, "--eval-every", help="Evaluate on dev every N steps (default: each epoch end).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
PRECISION = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (mixed precision on GPU).")
LIMIT = typer.Option(None, "--limit", help="Use only the first N examples of each split.")
CACHE = typer.Option("auto", "--cache-features",
                     help="Cache the frozen backbone's states across epochs: auto (when within budget), on, off.")
CACHE_BUDGET = typer.Option(None, "--cache-budget", help="Feature cache budget in GiB (default: a share of RAM).")
CONFIG = typer.Option(None, "--config", help="YAML file of options (long names with _); flags override it.")
LOG_EVERY = typer.Option(10, "--log-every", help="Write a train_log.jsonl line every N steps.")
# Experiment tracking (kadapter_cli/tracking.py): a training command takes all three with one line,
#   report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
# and TrainConfig.from_options picks them up.
REPORT_TO = typer.Option("none", "--report-to",
                         help="Trackers for losses, learning rate, throughput and dev metrics: tensorboard, wandb, "
                              "mlflow, aim, all (every installed one), none; comma-separated for several.")
RUN_NAME = typer.Option(None, "--run-name", help="The trackers' run name (default: the output folder's name).")
TRACKING_DIR = typer.Option(None, "--tracking-dir", help="The trackers' folder (default: <output>/tracking).")


def _train_config(options: dict[str, Any], defaults: dict[str, Any]):
    from kadapter_cli.train_config import TrainConfig

    values = {k: (defaults.get(k) if options.get(k) is None else options.get(k)) for k in options}
    for key, value in defaults.items():
        values.setdefault(key, value)
        if values[key] is None:
            values[key] = value
    return TrainConfig.from_options(values), values


def _parse_taps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInput(f"--taps must be comma-separated layer indices like 0,11,22, got {text!r}") from None


def _print_metrics(title: str, metrics: dict[str, dict], headline: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("split")
    keys = headline or sorted({k for m in metrics.values() for k in m})
    for k in keys:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in keys))
    Console().print(table)


# ---------------------------------------------------------------- train-adapter


@app.command("train-adapter")
def train_adapter_cli(
    ctx: typer.Context,
    kind: str = typer.Option(..., "--kind", help="fac (relation classification on trex-rc/) or lin (dependency heads on parsed/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Adapter name (default: the kind); written to <workdir>/adapters/<name>."),
    data: Optional[Path] = typer.Option(None, "--data", help="Input artifact (default: <workdir>/trex-rc for fac, <workdir>/parsed for lin)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <workdir>/adapters/<name>)."),
    backbone: str = typer.Option("roberta-large", "--backbone", help="Hugging Face model id or local folder of the frozen encoder."),
    taps: Optional[str] = typer.Option(None, "--taps", help="Backbone hidden states the adapter reads, e.g. 0,11,22 (default: same relative depths)."),
    adapter_width: Optional[int] = typer.Option(None, "--adapter-width", help="Adapter hidden size (default: 3/4 of the backbone's, multiple of 64)."),
    adapter_layers: Optional[int] = typer.Option(None, "--adapter-layers", help="Transformer layers per adapter layer (default 2)."),
    adapter_heads: Optional[int] = typer.Option(None, "--adapter-heads", help="Attention heads in the adapter (default width/64)."),
    mask_padding: bool = typer.Option(True, "--mask-padding/--attend-padding",
                                      help="Mask padded positions in the adapter (--attend-padding reproduces the original code)."),
    marker_style: str = typer.Option("spaced", "--marker-style",
                                     help="fac only: entity markers as words with their leading space (spaced, kadapter's) "
                                          "or the bare '@'/'#' ids (original, as the released fac adapter)."),
    lin_head: str = typer.Option("pointer", "--lin-head", help="lin only: pointer (biaffine, default) or original (classification over positions)."),
    epochs: Optional[int] = EPOCHS, max_steps: Optional[int] = MAX_STEPS, batch_size: Optional[int] = BATCH_SIZE,
    lr: Optional[float] = LR, warmup: Optional[float] = WARMUP, weight_decay: float = WEIGHT_DECAY,
    adam_eps: float = ADAM_EPS, adam_beta1: float = ADAM_BETA1, adam_beta2: float = ADAM_BETA2,
    grad_accum: int = GRAD_ACCUM, max_length: Optional[int] = MAX_LENGTH, seed: int = SEED,
    save_every: Optional[int] = SAVE_EVERY, eval_every: Optional[int] = EVAL_EVERY, log_every: int = LOG_EVERY,
    resume: bool = RESUME, overwrite: bool = OVERWRITE, device: str = DEVICE, precision: str = PRECISION,
    limit: Optional[int] = LIMIT, cache_features: str = CACHE, cache_budget: Optional[float] = CACHE_BUDGET,
    report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print the dev metrics as JSON."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Pretrain a knowledge adapter on the frozen backbone (fac: T-REx relations; lin: dependency heads)."""
    from kadapter_cli.pretrain import DEFAULT_INPUT, KIND_DEFAULTS, KINDS, AdapterTrainingSpec, train_adapter

    options = merged_config(ctx, config)
    kind = options["kind"]
    if kind not in KINDS:
        raise BadInput(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    workdir = get_workdir(ctx)
    train_config, resolved = _train_config(options, KIND_DEFAULTS[kind])
    name = options["name"] or kind
    if options["cache_features"] not in ("auto", "on", "off"):
        raise BadInput(f"--cache-features must be auto, on or off, got {options['cache_features']!r}")
    spec = AdapterTrainingSpec(
        kind=kind, name=name,
        data=Path(options["data"] or workdir / DEFAULT_INPUT[kind]),
        out=Path(options["out"] or workdir / "adapters" / name),
        backbone=str(options["backbone"]), max_length=int(resolved["max_length"]),
        tap_layers=_parse_taps(options["taps"]), adapter_width=options["adapter_width"],
        adapter_layers=options["adapter_layers"], adapter_heads=options["adapter_heads"],
        mask_padding=options["mask_padding"], marker_style=options["marker_style"], lin_head=options["lin_head"],
        cache_features=options["cache_features"], cache_budget_gb=options["cache_budget"],
    )
    summary = train_adapter(spec, train_config, resume=options["resume"], overwrite=options["overwrite"],
                            manifest_config=jsonable(resolved))
    if json_out:
        echo_json(summary)
    else:
        _print_metrics(f"adapter {name} ({kind}) → {spec.out}", {"dev": summary.get("dev", {})})


# ---------------------------------------------------------------- compose


@app.command("compose")
def compose_cli(
    ctx: typer.Context,
    adapters: list[str] = typer.Argument(..., help="Adapter names (under <workdir>/adapters) or folders, e.g. fac lin."),
    fusion: str = typer.Option("concat", "--fusion", help="concat (the paper's), add, or gated (learned per-token weights)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <workdir>/compositions/<a>+<b>)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Check that adapters share a backbone and write their composition."""
    from kadapter_cli.finetune import compose

    workdir = get_workdir(ctx)
    names = [Path(a).name for a in adapters]
    target = out or workdir / "compositions" / "+".join(names)
    comp = compose(adapters, workdir, target, fusion, overwrite=overwrite)
    typer.echo(f"composed {', '.join(names)} ({comp['fusion']}) → {target}")


# ---------------------------------------------------------------- finetune


@app.command("finetune")
def finetune_cli(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help="Task name: openentity, figer, tacred (kadapter_cli/tasks)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="fac,lin (names or folders), a composition, or none for the baseline."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="concat (default), add or gated."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder with train.json, dev.json, test.json (default <workdir>/tasks/<task>)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default <workdir>/finetuned/<task>-<a>+<b>, -base without adapters)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under <workdir>/finetuned/."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone id or folder (default: the adapters', else roberta-large)."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Freeze the backbone (the paper trains it); enables the feature cache."),
    max_negatives: Optional[int] = typer.Option(None, "--max-negatives", help="tacred: keep only the first N no_relation training examples (default: all)."),
    epochs: Optional[int] = EPOCHS, max_steps: Optional[int] = MAX_STEPS, batch_size: Optional[int] = BATCH_SIZE,
    lr: Optional[float] = LR, warmup: Optional[float] = WARMUP, weight_decay: float = WEIGHT_DECAY,
    adam_eps: float = ADAM_EPS, adam_beta1: float = ADAM_BETA1, adam_beta2: float = ADAM_BETA2,
    grad_accum: int = GRAD_ACCUM, max_length: Optional[int] = MAX_LENGTH, seed: int = SEED,
    save_every: Optional[int] = SAVE_EVERY, eval_every: Optional[int] = EVAL_EVERY, log_every: int = LOG_EVERY,
    resume: bool = RESUME, overwrite: bool = OVERWRITE, device: str = DEVICE, precision: str = PRECISION,
    limit: Optional[int] = LIMIT, cache_features: str = CACHE, cache_budget: Optional[float] = CACHE_BUDGET,
    report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print dev and test metrics as JSON."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Fine-tune a task on the backbone with frozen adapters (or none: the baseline); select on dev."""
    from kadapter_cli.finetune import FinetuneSpec, finetune, resolve_adapters
    from kadapter_cli.tasks import get_task

    options = merged_config(ctx, config)
    workdir = get_workdir(ctx)
    task_obj = get_task(options["task"])
    adapter_set = resolve_adapters(options["adapters"], workdir, options["fusion"])
    train_config, resolved = _train_config(options, task_obj.defaults_for(adapter_set.names))
    run_name = options["name"] or f"{task_obj.name}-{'+'.join(adapter_set.names) or 'base'}"
    task_options = {k: options[k] for k in ("max_negatives",) if k in task_obj.options}
    if options["max_negatives"] is not None and "max_negatives" not in task_obj.options:
        raise BadInput(f"--max-negatives applies to relation tasks with a no-relation label, not {task_obj.name}")
    spec = FinetuneSpec(
        task=task_obj.name, data=Path(options["data"] or workdir / "tasks" / task_obj.name),
        out=Path(options["out"] or workdir / "finetuned" / run_name), adapters=adapter_set,
        backbone=options["backbone"], freeze_backbone=options["freeze_backbone"],
        max_length=int(resolved["max_length"]), task_options=task_options,
        cache_features=options["cache_features"], cache_budget_gb=options["cache_budget"],
    )
    results = finetune(spec, train_config, overwrite=options["overwrite"], resume=options["resume"],
                       manifest_config=jsonable(resolved))
    if json_out:
        echo_json(results)
    else:
        _print_metrics(f"{run_name} → {spec.out}", results, list(task_obj.headline_metrics))


# ---------------------------------------------------------------- evaluate, predict


@app.command("evaluate")
def evaluate_cli(
    ctx: typer.Context,
    model_dir: Path = typer.Argument(..., help="A finetuned model folder."),
    data: Optional[Path] = typer.Option(None, "--data", help="Task data folder (default <workdir>/tasks/<task>)."),
    split: str = typer.Option("test", "--split", help="train, dev or test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write predictions and metrics (default <workdir>/evaluations/<run>-<split>)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per batch."),
    device: str = DEVICE,
    overwrite: bool = typer.Option(True, "--overwrite/--no-overwrite", help="Replace an earlier evaluation output."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Recompute a split's metrics from a saved finetuned model and write its predictions."""
    from kadapter_cli.artifacts import read_json
    from kadapter_cli.finetune import CONFIG as FT_CONFIG
    from kadapter_cli.finetune import evaluate_finetuned

    if split not in ("train", "dev", "test"):
        raise BadInput(f"--split must be train, dev or test, got {split!r}")
    workdir = get_workdir(ctx)
    task_name = read_json(model_dir / FT_CONFIG)["task"] if (model_dir / FT_CONFIG).is_file() else None
    if task_name is None:
        raise BadInput("not a finetuned model folder (no config.json)", model_dir)
    target = out or workdir / "evaluations" / f"{model_dir.name}-{split}"
    result = evaluate_finetuned(model_dir, data or workdir / "tasks" / task_name, split, target,
                                batch_size=batch_size, device=device, overwrite=overwrite)
    if json_out:
        echo_json(result["metrics"])
    else:
        _print_metrics(f"{model_dir.name} on {split} ({result['task']}) → {target}", {split: result["metrics"]},
                       result["headline"])


@app.command("predict")
def predict_cli(
    model_dir: Path = typer.Argument(..., help="A finetuned model folder."),
    input_path: Path = typer.Argument(..., metavar="INPUT", help="Records in the task's format (JSON list or JSON Lines)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write JSONL predictions here (default: stdout)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per batch."),
    device: str = DEVICE,
) -> None:
    """Label new records with a finetuned model; one JSON line per input record, in input order."""
    from kadapter_cli.finetune import predict_records

    rows = predict_records(model_dir, input_path, batch_size=batch_size, device=device)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out is None:
        sys.stdout.write(lines)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(lines, encoding="utf-8")
        tmp.replace(out)
        typer.echo(f"wrote {len(rows)} predictions → {out}", err=True)
