"""Training and evaluation commands: train-adapter, compose, finetune, evaluate, predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import echo_json, get_workdir, jsonable, merged_config, stdin_as_file
from kadapter_cli.data.encoding import SPACED_MARKERS
from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.backbone import DEFAULT_BACKBONE
from kadapter_cli.modeling.options import DEFAULT_FUSION, MASK_PADDING
from kadapter_cli.processes import is_main_process
from kadapter_cli.stages.options import DEFAULT_LIN_HEAD, EVAL_BATCH_SIZE, EVAL_SPLIT
from kadapter_cli.tasks import TASKS, parse_task_options, task_class, task_options_help
from kadapter_cli.training.config import (
    CACHE_MODES,
    DEFAULT_CACHE_FEATURES,
    KIND_DEFAULTS,
    PRECISION_HELP,
    TrainConfig,
    kind_defaults,
)
from kadapter_cli.training.setup import set_threads

# ---------------------------------------------------------------- shared training options
# Options left at None take the paper's value for the kind / task (`kadapter_cli.training.config`,
# `kadapter_cli.tasks`); --help spells those values out.


def _number(value: float) -> str:
    return f"{value:g}".replace("e-0", "e-")  # 5e-6, not 5e-06


def _kind_defaults(key: str) -> str:
    return "default: " + ", ".join(f"{kind} {_number(values[key])}" for kind, values in KIND_DEFAULTS.items())


def _task_defaults(key: str) -> str:
    """XX: the paper's value per task."""
    from kadapter_cli.tasks import TASKS

    parts = []
    for name, task in TASKS.items():
        variants: dict[Any, list[str]] = {}
        for adapters, values in task.adapter_defaults.items():
            if key in values:
                variants.setdefault(values[key], []).append(adapters)
        extra = ", ".join(f"{' and '.join(names)}: {_number(value)}" for value, names in variants.items())
        parts.append(f"{name} {_number(task().defaults_for()[key])}" + (f" ({extra})" if extra else ""))
    return "default: " + ", ".join(parts)


def _paper_options(defaults) -> dict[str, Any]:
    """The loop options whose defaults are the paper's, with those values in their help."""
    return {
        "epochs": typer.Option(None, "--epochs", help=f"Training epochs ({defaults('epochs')}).", metavar="N"),
        "batch_size": typer.Option(None, "--batch-size", metavar="N", help=(
            "Effective batch, the paper's number: examples per optimizer step = micro-batch × accumulation × "
            f"processes; must divide evenly over the processes ({defaults('batch_size')}).")),
        "micro_batch_size": typer.Option(None, "--micro-batch-size", metavar="N", help=(
            "Examples per process per forward/backward pass, what fits in memory; accumulation steps = "
            "batch / (micro-batch × processes), lowered to divide each process's share evenly; the split is "
            f"printed at start and recorded in the manifest ({defaults('micro_batch_size')}: sizes that fit "
            "one 24 GB GPU with roberta-large).")),
        "lr": typer.Option(None, "--lr", help=f"Peak learning rate of AdamW ({defaults('lr')}).", metavar="LR"),
        "warmup": typer.Option(None, "--warmup", metavar="STEPS|SHARE",
                               help=f"Warm-up: steps if ≥ 1, share of all steps if < 1 ({defaults('warmup')})."),
        "max_length": typer.Option(None, "--max-length", metavar="N",
                                   help=f"Longest input in sub-tokens, special tokens included ({defaults('max_length')})."),
    }


def _loop_default(name: str) -> Any:
    """`TrainConfig`'s default of a loop option: the flag's default is that one value."""
    return TrainConfig.__dataclass_fields__[name].default


ADAPTER = _paper_options(_kind_defaults)
TASK = _paper_options(_task_defaults)
# The same options for other training commands (train-probe), whose defaults their own help states.
EPOCHS = typer.Option(None, "--epochs", metavar="N", help="Training epochs.")
BATCH_SIZE = typer.Option(None, "--batch-size", metavar="N",
                          help="Effective batch: examples per optimizer step over all processes.")
LR = typer.Option(None, "--lr", metavar="LR", help="Peak learning rate of AdamW.")
WARMUP = typer.Option(None, "--warmup", metavar="STEPS|SHARE", help="Warm-up: steps if ≥ 1, share of all steps if < 1.")
MAX_LENGTH = typer.Option(None, "--max-length", metavar="N", help="Longest input in sub-tokens, special tokens included.")
MAX_STEPS = typer.Option(None, "--max-steps", metavar="N",
                         help="Train for exactly N optimizer steps, overriding --epochs (as the Hugging Face Trainer).")
WEIGHT_DECAY = typer.Option(_loop_default("weight_decay"), "--weight-decay", help="AdamW weight decay (not on biases and norms).")
ADAM_EPS = typer.Option(_loop_default("adam_eps"), "--adam-eps", help="AdamW epsilon.")
ADAM_BETA1 = typer.Option(_loop_default("adam_beta1"), "--adam-beta1", help="AdamW beta1.")
ADAM_BETA2 = typer.Option(_loop_default("adam_beta2"), "--adam-beta2", help="AdamW beta2 (0.9 as in Dozat & Manning's parser suits the lin pointer head).")
CLIP_MODE = typer.Option(_loop_default("clip_mode"), "--clip-mode", metavar="joint|separate", help=(
    "Gradient clipping to --max-grad-norm: joint (one norm over all trainable parameters) or separate "
    "(the backbone and the rest each on their own, as the original code)."))
MAX_GRAD_NORM = typer.Option(_loop_default("max_grad_norm"), "--max-grad-norm", help="Clip gradients to this norm (0: off).")
SEED = typer.Option(_loop_default("seed"), "--seed", help="Seed of initialisation, data order and dropout.")
SAVE_EVERY = typer.Option(None, "--save-every", help="Checkpoint every N steps (and at each epoch end).")
EVAL_EVERY = typer.Option(None, "--eval-every", help="Evaluate on dev every N steps (default: each epoch end).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
DEVICE = typer.Option(_loop_default("device"), "--device", metavar="auto|cpu|cuda", help="Where to run (auto: cuda when available).")
THREADS = typer.Option(None, "--threads", metavar="N",
                       help="CPU threads (default: OMP_NUM_THREADS if set, else the cores that are idle now).")
PRECISION = typer.Option(_loop_default("precision"), "--precision", metavar="auto|fp32|bf16|fp16", help=PRECISION_HELP)
DETERMINISTIC = typer.Option(_loop_default("deterministic"), "--deterministic", help=(
    "Deterministic CUDA kernels only (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG=:4096:8, "
    "cuDNN deterministic): a resumed GPU run then equals an uninterrupted one bit for bit; slower (docs: Speed). "
    "The CPU is deterministic without it."))
LIMIT = typer.Option(None, "--limit", help="Use only the first N examples of each split.")
CACHE = typer.Option(DEFAULT_CACHE_FEATURES, "--cache-features", metavar="auto|on|off",
                     help="Cache the frozen backbone's states across epochs: auto (when within budget), on, off.")
CACHE_BUDGET = typer.Option(None, "--cache-budget", help="Feature cache budget in GiB for this machine, shared by its processes (default: a share of RAM).")
CONFIG = typer.Option(None, "--config", help="YAML file of options (long names with _); flags override it.")
LOG_EVERY = typer.Option(_loop_default("log_every"), "--log-every", help="Write a train_log.jsonl line every N steps.")
SCORES = typer.Option(False, "--scores", help="Add each prediction's probability per predicted label (\"scores\").")
ALL_SCORES = typer.Option(False, "--all-scores", help="Add the probability of every label (implies --scores).")
ALLOW_MISMATCH = typer.Option(False, "--allow-backbone-mismatch",
                              help="Use adapters whose recorded backbone fingerprint differs from the backbone's.")
# Experiment tracking (kadapter_cli/training/tracking.py): a training command takes all three with one line,
#   report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
# and TrainConfig.from_options picks them up.
REPORT_TO = typer.Option(_loop_default("report_to"), "--report-to",
                         help="Trackers for losses, learning rate, throughput and dev metrics: tensorboard, wandb, "
                              "mlflow, aim, all (every installed one), none; comma-separated for several.")
RUN_NAME = typer.Option(None, "--run-name", help="The trackers' run name (default: the output folder's name).")
TRACKING_DIR = typer.Option(None, "--tracking-dir", help="The trackers' folder (default: <output>/tracking).")


def _train_config(options: dict[str, Any], defaults: dict[str, Any]):
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


def _scores_mode(scores: bool, all_scores: bool) -> str:
    return "all" if all_scores else "predicted" if scores else "none"


def _metric_text(value: Any) -> str:
    """Scores with 4 decimals, counts (`words`) as whole numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _print_metrics(title: str, metrics: dict[str, dict], headline: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("split")
    keys = headline or sorted({k for m in metrics.values() for k in m})
    for k in keys:
        table.add_column(k, justify="right")
    for split, m in metrics.items():
        table.add_row(split, *(_metric_text(m.get(k)) for k in keys))
    Console().print(table)


# ---------------------------------------------------------------- train-adapter


@app.command("train-adapter")
def train_adapter_cli(
    ctx: typer.Context,
    kind: str = typer.Option(..., "--kind", metavar="fac|lin", help="fac (relation classification on trex-rc/) or lin (dependency heads on parsed/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Adapter name (default: the kind); written to <workdir>/adapters/<name>."),
    data: Optional[Path] = typer.Option(None, "--data", help="Input artifact (default: <workdir>/trex-rc for fac, <workdir>/parsed for lin)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <workdir>/adapters/<name>)."),
    backbone: str = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Hugging Face model id or local folder of the frozen encoder."),
    taps: Optional[str] = typer.Option(None, "--taps", help="Backbone hidden states the adapter reads, e.g. 0,11,22 (default: same relative depths)."),
    adapter_width: Optional[int] = typer.Option(None, "--adapter-width", help="Adapter hidden size (default: 3/4 of the backbone's, multiple of 64)."),
    adapter_layers: Optional[int] = typer.Option(None, "--adapter-layers", help="Transformer layers per adapter layer (default 2)."),
    adapter_heads: Optional[int] = typer.Option(None, "--adapter-heads", help="Attention heads in the adapter (default width/64)."),
    mask_padding: bool = typer.Option(MASK_PADDING, "--mask-padding/--attend-padding",
                                      help="Mask padded positions in the adapter (--attend-padding reproduces the original code)."),
    marker_style: str = typer.Option(SPACED_MARKERS, "--marker-style", metavar="spaced|original",
                                     help="fac only: entity markers as words with their leading space (spaced, kadapter's) "
                                          "or the bare '@'/'#' ids (original, as the released fac adapter)."),
    lin_head: str = typer.Option(DEFAULT_LIN_HEAD, "--lin-head", metavar="pointer|original", help="lin only: pointer (biaffine, default) or original (classification over positions)."),
    arc_dim: Optional[int] = typer.Option(None, "--arc-dim", metavar="N", help=(
        "lin pointer head only: width of its dependent/head MLPs and biaffine (default: min(500, backbone width), "
        "Dozat & Manning's 500; 512 suits a GPU's tensor cores, docs: Speed). Recorded in the adapter's config.")),
    epochs: Optional[int] = ADAPTER["epochs"], max_steps: Optional[int] = MAX_STEPS,
    batch_size: Optional[int] = ADAPTER["batch_size"], lr: Optional[float] = ADAPTER["lr"],
    warmup: Optional[float] = ADAPTER["warmup"], weight_decay: float = WEIGHT_DECAY,
    adam_eps: float = ADAM_EPS, adam_beta1: float = ADAM_BETA1, adam_beta2: float = ADAM_BETA2,
    micro_batch_size: Optional[int] = ADAPTER["micro_batch_size"],
    max_grad_norm: float = MAX_GRAD_NORM, clip_mode: str = CLIP_MODE,
    max_length: Optional[int] = ADAPTER["max_length"], seed: int = SEED,
    save_every: Optional[int] = SAVE_EVERY, eval_every: Optional[int] = EVAL_EVERY, log_every: int = LOG_EVERY,
    resume: bool = RESUME, overwrite: bool = OVERWRITE, device: str = DEVICE, threads: Optional[int] = THREADS,
    precision: str = PRECISION, deterministic: bool = DETERMINISTIC,
    limit: Optional[int] = LIMIT, cache_features: str = CACHE, cache_budget: Optional[float] = CACHE_BUDGET,
    compile: bool = typer.Option(_loop_default("compile"), "--compile", help=(
        "torch.compile the adapter and its head, each batch padded to a multiple of 16 tokens (a few compiled "
        "shapes). Pays on a GPU; on a CPU it is slower (docs/speed.md).")),
    report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print the dev metrics as JSON."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Pretrain a knowledge adapter on the frozen backbone (fac: T-REx relations; lin: dependency heads)."""
    from kadapter_cli.artifacts.layout import adapter_dir, adapter_input_dir
    from kadapter_cli.stages.pretrain import AdapterTrainingSpec, train_adapter

    options = merged_config(ctx, config)
    set_threads(options["threads"])
    kind = options["kind"]
    workdir = get_workdir(ctx)
    train_config, resolved = _train_config(options, kind_defaults(kind))
    name = options["name"] or kind
    if options["cache_features"] not in CACHE_MODES:
        raise BadInput(f"--cache-features must be auto, on or off, got {options['cache_features']!r}")
    spec = AdapterTrainingSpec(
        kind=kind, name=name,
        data=Path(options["data"] or adapter_input_dir(workdir, kind)),
        out=Path(options["out"] or adapter_dir(workdir, name)),
        backbone=str(options["backbone"]), max_length=int(resolved["max_length"]),
        tap_layers=_parse_taps(options["taps"]), adapter_width=options["adapter_width"],
        adapter_layers=options["adapter_layers"], adapter_heads=options["adapter_heads"],
        mask_padding=options["mask_padding"], marker_style=options["marker_style"], lin_head=options["lin_head"],
        arc_dim=options["arc_dim"],
        cache_features=options["cache_features"], cache_budget=options["cache_budget"],
    )
    summary = train_adapter(spec, train_config, resume=options["resume"], overwrite=options["overwrite"],
                            manifest_config=jsonable(resolved))
    if not is_main_process():
        return
    if json_out:
        echo_json(summary)
    else:
        _print_metrics(f"adapter {name} ({kind}) → {spec.out}", {"dev": summary.get("dev", {})})


# ---------------------------------------------------------------- compose


@app.command("compose")
def compose_cli(
    ctx: typer.Context,
    adapters: list[str] = typer.Argument(..., help=(
        "Adapter names (under <workdir>/adapters), folders or Hugging Face Hub repository ids (org/name or org/name@revision), "
        "e.g. fac lin.")),
    fusion: str = typer.Option(DEFAULT_FUSION, "--fusion", metavar="concat|add|gated", help="concat (the paper's), add, or gated (learned per-token weights)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <workdir>/compositions/<a>+<b>)."),
    overwrite: bool = OVERWRITE,
    allow_backbone_mismatch: bool = ALLOW_MISMATCH,
) -> None:
    """Check that adapters share a backbone and write their composition."""
    from kadapter_cli.artifacts.layout import composition_dir
    from kadapter_cli.artifacts.sources import source_name
    from kadapter_cli.stages.compose import compose

    workdir = get_workdir(ctx)
    names = [source_name(a) for a in adapters]
    target = out or composition_dir(workdir, names)
    comp = compose(adapters, workdir, target, fusion, overwrite=overwrite,
                   allow_backbone_mismatch=allow_backbone_mismatch)
    typer.echo(f"composed {', '.join(names)} ({comp['fusion']}) → {target}")


# ---------------------------------------------------------------- finetune

# Task options the issues name as flags of their own; each is also `--task-option KEY=VALUE`, and a
# task that does not declare it refuses it (exit 2). evaluate and predict take those that change
# how a saved model reads and decodes data, over the ones it was trained with.
TASK_OPTION_FLAGS = ("max_negatives", "max_paragraphs", "no_answer", "max_answer_length", "skip_bad")
MAX_PARAGRAPHS = typer.Option(None, "--max-paragraphs",
                              help="Same as --task-option max_paragraphs=N (searchqa, quasart): paragraphs kept per question.")
SKIP_BAD = typer.Option(False, "--skip-bad",
                        help="Same as --task-option skip_bad=true (searchqa, quasart): skip bad questions, counted in the manifest.")
MAX_ANSWER_LENGTH = typer.Option(None, "--max-answer-length",
                                 help="Same as --task-option max_answer_length=N (searchqa, quasart): longest answer, in sub-tokens.")


def flag_task_options(task_cls, options: dict[str, Any]) -> dict[str, Any]:
    """The task options set by their own flags (`TASK_OPTION_FLAGS`; unset flags are None or False),
    checked against what the task declares as `parse_task_options` checks `--task-option`."""
    # `is`, not `in (None, False)`: 0 == False, and `--max-paragraphs 0` must be refused, not dropped
    given = [f"{key}={json.dumps(options[key])}" for key in TASK_OPTION_FLAGS
             if options.get(key) is not None and options.get(key) is not False]
    return parse_task_options(task_cls, given)


@app.command("finetune")
def finetune_cli(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help=f"Task name: {', '.join(TASKS)} (kadapter_cli/tasks)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=(
        "fac,lin (names, folders or Hub repository ids org/name or org/name@revision), a composition, or none for the baseline.")),
    fusion: Optional[str] = typer.Option(None, "--fusion", metavar="concat|add|gated", help="How adapters are fused (default: concat, or the composition's)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder with train.json, dev.json, test.json (or the task's own file names; default <workdir>/tasks/<task>)."),
    out: Optional[Path] = typer.Option(None, "--out", help=(
        "Output folder (default <workdir>/finetuned/<data>-<a>+<b>, -base without adapters; <data> is the task's name "
        "for the benchmark's data, the --data folder's name for your own labels).")),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under <workdir>/finetuned/."),
    labels: Optional[Path] = typer.Option(None, "--labels", metavar="FILE", help=(
        "The label set, a JSON list or one label a line (typing and relation tasks), or 'benchmark' for the "
        "benchmark's. Default: labels.json in the data folder, else the benchmark's labels when the data is "
        "recognisably the benchmark's (docs/tasks.md), else the labels of the training split.")),
    backbone: Optional[str] = typer.Option(None, "--backbone", help=f"Backbone id or folder (default: the adapters', else {DEFAULT_BACKBONE})."),
    freeze_backbone: bool = typer.Option(False, "--freeze-backbone", help="Freeze the backbone (the paper trains it); enables the feature cache."),
    task_option: list[str] = typer.Option([], "--task-option", metavar="KEY=VALUE",
                                          help=f"A task's own option (repeatable). {task_options_help()}."),
    max_negatives: Optional[int] = typer.Option(None, "--max-negatives", help="Same as --task-option max_negatives=N (tacred)."),
    max_paragraphs: Optional[int] = MAX_PARAGRAPHS, skip_bad: bool = SKIP_BAD, max_answer_length: Optional[int] = MAX_ANSWER_LENGTH,
    no_answer: Optional[str] = typer.Option(
        None, "--no-answer", metavar="skip|cls",
        help="Same as --task-option no_answer=... (searchqa, quasart): training windows without the answer are skipped, or point at <s>."),
    allow_backbone_mismatch: bool = ALLOW_MISMATCH,
    keep_adapter_dropout: bool = typer.Option(
        False, "--keep-adapter-dropout",
        help="Leave the frozen adapters' dropout on while fine-tuning (the original code; default: frozen parts in eval mode)."),
    epochs: Optional[int] = TASK["epochs"], max_steps: Optional[int] = MAX_STEPS,
    batch_size: Optional[int] = TASK["batch_size"], lr: Optional[float] = TASK["lr"],
    warmup: Optional[float] = TASK["warmup"], weight_decay: float = WEIGHT_DECAY,
    adam_eps: float = ADAM_EPS, adam_beta1: float = ADAM_BETA1, adam_beta2: float = ADAM_BETA2,
    micro_batch_size: Optional[int] = TASK["micro_batch_size"],
    max_grad_norm: float = MAX_GRAD_NORM, clip_mode: str = CLIP_MODE,
    max_length: Optional[int] = TASK["max_length"], seed: int = SEED,
    save_every: Optional[int] = SAVE_EVERY, eval_every: Optional[int] = EVAL_EVERY, log_every: int = LOG_EVERY,
    resume: bool = RESUME, overwrite: bool = OVERWRITE, device: str = DEVICE, threads: Optional[int] = THREADS,
    precision: str = PRECISION, deterministic: bool = DETERMINISTIC,
    limit: Optional[int] = LIMIT, cache_features: str = CACHE, cache_budget: Optional[float] = CACHE_BUDGET,
    report_to: str = REPORT_TO, run_name: Optional[str] = RUN_NAME, tracking_dir: Optional[Path] = TRACKING_DIR,
    json_out: bool = typer.Option(False, "--json", help="Print dev and test metrics as JSON."),
    config: Optional[Path] = CONFIG,
) -> None:
    """Fine-tune a task on the backbone with frozen adapters (or none: the baseline); select on dev."""
    from kadapter_cli.artifacts.layout import finetuned_dir, finetuned_run_name, task_data_dir
    from kadapter_cli.stages.compose import resolve_adapters
    from kadapter_cli.stages.finetune import FinetuneSpec, finetune

    options = merged_config(ctx, config)
    set_threads(options["threads"])
    workdir = get_workdir(ctx)
    task_cls = task_class(options["task"])
    task_options = {**parse_task_options(task_cls, options["task_option"] or []), **flag_task_options(task_cls, options)}
    task_obj = task_cls(**task_options)
    adapter_set = resolve_adapters(options["adapters"], workdir, options["fusion"])
    train_config, resolved = _train_config(options, task_obj.defaults_for(adapter_set.names))
    resolved["task_option"] = [f"{k}={json.dumps(v)}" for k, v in task_obj.option_values().items()]
    data_dir = Path(options["data"] or task_data_dir(workdir, task_obj.name))
    run_name = options["name"] or finetuned_run_name(task_obj.run_data_name(data_dir, options["labels"]),
                                                     adapter_set.names)
    spec = FinetuneSpec(
        task=task_obj, data=data_dir, labels=options["labels"],
        out=Path(options["out"] or finetuned_dir(workdir, run_name)), adapters=adapter_set,
        backbone=options["backbone"], freeze_backbone=options["freeze_backbone"],
        max_length=int(resolved["max_length"]),
        cache_features=options["cache_features"], cache_budget=options["cache_budget"],
        allow_backbone_mismatch=options["allow_backbone_mismatch"],
        keep_adapter_dropout=options["keep_adapter_dropout"],
    )
    results = finetune(spec, train_config, overwrite=options["overwrite"], resume=options["resume"],
                       manifest_config=jsonable(resolved))
    if not is_main_process():
        return
    if json_out:
        echo_json(results)
    else:
        _print_metrics(f"{run_name} → {spec.out}", results, list(task_obj.headline_metrics))


# ---------------------------------------------------------------- evaluate, predict


def _saved_config(model_dir: Path) -> tuple[dict[str, Any], Any]:
    """A finetuned folder's config.json and its task class, read once before loading the model."""
    from kadapter_cli.stages.finetune import finetuned_config

    saved = finetuned_config(model_dir)
    return saved, task_class(saved["task"])


def _reading_overrides(task_cls, max_paragraphs: Optional[int], skip_bad: bool,
                       max_answer_length: Optional[int]) -> dict[str, Any]:
    """The flags of evaluate and predict that override how a saved model reads and decodes data."""
    return flag_task_options(task_cls, {"max_paragraphs": max_paragraphs, "skip_bad": skip_bad,
                                          "max_answer_length": max_answer_length})


@app.command("evaluate")
def evaluate_cli(
    ctx: typer.Context,
    model_dir: Path = typer.Argument(..., help=(
        "A finetuned model folder, or its Hugging Face Hub repository id (org/name or org/name@revision).")),
    data: Optional[Path] = typer.Option(None, "--data", help="Task data folder (default <workdir>/tasks/<task>)."),
    split: str = typer.Option(EVAL_SPLIT, "--split", metavar="train|dev|test", help="The split to evaluate."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write predictions and metrics (default <workdir>/evaluations/<run>-<split>)."),
    batch_size: int = typer.Option(EVAL_BATCH_SIZE, "--batch-size", help="Examples per batch."),
    device: str = DEVICE,
    threads: Optional[int] = THREADS,
    overwrite: bool = OVERWRITE,
    scores: bool = SCORES, all_scores: bool = ALL_SCORES,
    max_paragraphs: Optional[int] = MAX_PARAGRAPHS, skip_bad: bool = SKIP_BAD, max_answer_length: Optional[int] = MAX_ANSWER_LENGTH,
    no_save: bool = typer.Option(False, "--no-save", help="Print the metrics and write nothing (no --out folder)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Recompute a split's metrics from a saved finetuned model and write its predictions.

    An existing output folder is refused before anything is computed (--overwrite replaces it);
    --no-save only prints the metrics."""
    from kadapter_cli.artifacts.layout import evaluation_dir, task_data_dir
    from kadapter_cli.artifacts.sources import source_name
    from kadapter_cli.stages.finetune import evaluate_finetuned

    if split not in ("train", "dev", "test"):
        raise BadInput(f"--split must be train, dev or test, got {split!r}")
    set_threads(threads)
    workdir = get_workdir(ctx)
    saved, task_cls = _saved_config(model_dir)
    overrides = _reading_overrides(task_cls, max_paragraphs, skip_bad, max_answer_length)
    if no_save and out is not None:
        raise BadInput("--no-save writes nothing: leave out --out")
    target = None if no_save else out or evaluation_dir(workdir, source_name(model_dir), split)
    result = evaluate_finetuned(model_dir, data or task_data_dir(workdir, task_cls.name), split, target,
                                batch_size=batch_size, device=device, overwrite=overwrite,
                                scores=_scores_mode(scores, all_scores), task_options=overrides, config=saved)
    if json_out:
        echo_json(result["metrics"])
    else:
        where = "" if target is None else f" → {target}"
        _print_metrics(f"{source_name(model_dir)} on {split} ({result['task']}){where}", {split: result["metrics"]},
                       result["headline"])


@app.command("predict")
def predict_cli(
    model_dir: Path = typer.Argument(..., help=(
        "A finetuned model folder, or its Hugging Face Hub repository id (org/name or org/name@revision).")),
    input_path: Path = typer.Argument(..., metavar="INPUT",
                                      help="Records in the task's format (JSON list or JSON Lines); - reads stdin."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write JSONL predictions here (default: stdout)."),
    batch_size: int = typer.Option(EVAL_BATCH_SIZE, "--batch-size", help="Examples per batch."),
    device: str = DEVICE,
    threads: Optional[int] = THREADS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the --out file if it exists."),
    scores: bool = SCORES, all_scores: bool = ALL_SCORES,
    max_paragraphs: Optional[int] = MAX_PARAGRAPHS, skip_bad: bool = SKIP_BAD, max_answer_length: Optional[int] = MAX_ANSWER_LENGTH,
) -> None:
    """Label new records with a finetuned model; one JSON line per input record, in input order."""
    from kadapter_cli.artifacts.output import check_output
    from kadapter_cli.stages.finetune import predict_records

    if out is not None:
        check_output(out, overwrite=overwrite)
    set_threads(threads)
    saved, task_cls = _saved_config(model_dir)
    overrides = _reading_overrides(task_cls, max_paragraphs, skip_bad, max_answer_length)
    with stdin_as_file(input_path) as path:
        rows = predict_records(model_dir, path, batch_size=batch_size, device=device,
                               scores=_scores_mode(scores, all_scores), task_options=overrides, config=saved)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out is None:
        sys.stdout.write(lines)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(lines, encoding="utf-8")
        tmp.replace(out)
        typer.echo(f"wrote {len(rows)} predictions → {out}", err=True)
