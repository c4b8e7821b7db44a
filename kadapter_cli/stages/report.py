"""`kadapter report`: every finetuned run and adapter under some folders, in the paper's layout.

Rows are adapter sets (base, fac, lin, fac+lin, …), columns each task's `headline_metrics` on one
split; runs that share a row and task (several seeds) give mean ± sample std. Runs of one adapter
set that differ in a setting other than the seed (lr, epochs, backbone, …) get rows of their own,
labelled with what differs. The paper's numbers (`resources/paper_results.json`, from the paper's tables) can
stand beside them. Only artifacts are read — `manifest.json`, `config.json`, `metrics.json`,
`train_log.jsonl` — so a report never needs a model loaded.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from kadapter_cli.artifacts.io import read_json
from kadapter_cli.artifacts.layout import ADAPTER_CONFIG, adapter_file
from kadapter_cli.artifacts.manifest import MANIFEST
from kadapter_cli.errors import BadInput, BadParameter
from kadapter_cli.training.log import LOG_FILE

# Settings that make two runs different experiments (the seed does not: its runs are averaged).
RUN_SETTINGS = ("backbone", "fusion", "freeze_backbone", "epochs", "max_steps", "batch_size", "lr", "warmup",
                "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "max_grad_norm", "clip_mode",
                "keep_adapter_dropout", "max_length", "limit", "max_negatives", "data")
ADAPTER_METRICS = {"fac": ("accuracy", "macro_f1"), "lin": ("uas",)}  # what the pretraining scorers report
ADAPTER_PRIMARY = {"fac": "accuracy", "lin": "uas"}
KIND_ORDER = {"fac": 0, "lin": 1}
SHORT = {"precision": "P", "recall": "R", "f1": "F1", "strict_acc": "Acc", "macro_f1": "Ma-F1",
         "micro_f1": "Mi-F1", "accuracy": "Acc", "em": "EM", "uas": "UAS", "p_at_1": "P@1"}
CURVE_SIZE = (12.0, 4.5)  # inches at PLOT_DPI: 1200 × 450 pixels
BAR_PANEL_SIZE = (4.5, 4.0)  # one panel per task: 450 × 400 pixels each
PLOT_DPI = 100


@dataclass
class Run:
    """One artifact: a finetuned run (`task` set) or an adapter (`kind` set)."""

    path: Path
    adapters: list[str]  # adapter names (finetuned) or [its own name] (adapter)
    kinds: list[str]
    metrics: dict[str, dict[str, Any]]  # {"dev": …, "test": …}
    config: dict[str, Any]
    task: str | None = None
    kind: str | None = None

    @property
    def label(self) -> str:
        return "+".join(self.adapters) or "base"

    @property
    def paper_key(self) -> str:
        """The paper's row with the same knowledge (kinds), whatever the adapters were called."""
        return "+".join(sorted(self.kinds, key=lambda k: KIND_ORDER.get(k, 9))) or "base"


@dataclass
class Row:
    label: str
    paper_key: str
    sort_key: tuple
    cells: dict[str, list[Run]] = field(default_factory=dict)  # task (or kind) → runs


# ---------------------------------------------------------------- collecting


def find_artifacts(folders: Iterable[Path]) -> list[Path]:
    """Artifact folders under `folders` (themselves included), outermost only: the adapters a
    composition holds are its own, not runs. Hidden folders (`.x.partial`, scratch) are skipped."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise BadInput("no such folder", folder)
        for root, dirs, files in os.walk(folder):
            if MANIFEST in files:
                found.append(Path(root))
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(dict.fromkeys(found))


def load_run(folder: Path) -> Run | None:
    """The finetuned run or adapter in `folder`; None for other artifacts (data, compositions, …)."""
    manifest = read_json(folder / MANIFEST)
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in ("finetuned", "adapter") or not (folder / "metrics.json").is_file():
        return None
    metrics = read_json(folder / "metrics.json")
    config = manifest.get("config") or {}
    if kind == "finetuned":
        model_config = read_json(folder / "config.json")
        adapters = model_config.get("adapters", [])
        return Run(folder, [a["name"] for a in adapters], [a["config"].get("kind", a["name"]) for a in adapters],
                   {s: metrics.get(s) or {} for s in ("dev", "test")},
                   {**config, "fusion": model_config.get("fusion") if adapters else None}, task=model_config["task"])
    adapter_config = read_json(adapter_file(folder, ADAPTER_CONFIG))
    return Run(folder, [adapter_config.get("name", folder.name)], [adapter_config["kind"]],
               {"dev": metrics.get("dev") or {}}, config, kind=adapter_config["kind"])


def collect(folders: Iterable[Path]) -> list[Run]:
    runs = [load_run(f) for f in find_artifacts(folders)]
    return [r for r in runs if r is not None]


# ---------------------------------------------------------------- the table


def task_columns(runs: list[Run]) -> dict[str, tuple[str, ...]]:
    """Each task present → its headline metrics (the task registry's), tasks in first-seen order."""
    from kadapter_cli.tasks import TASKS

    columns: dict[str, tuple[str, ...]] = {}
    for run in runs:
        if run.task and run.task not in columns:
            task_class = TASKS.get(run.task)
            columns[run.task] = tuple(task_class.headline_metrics) if task_class else tuple(run.metrics["test"])
    return columns


def group_rows(runs: list[Run], group: str) -> list[Row]:
    """Runs → rows by adapter set (`group` = "task" or "kind" says which cells they fill)."""
    rows: dict[str, Row] = {}
    for run in runs:
        cell = getattr(run, group)
        label = run.label + _variant(run, [r for r in runs if r.label == run.label and getattr(r, group) == cell])
        order = (len(run.adapters), [KIND_ORDER.get(k, 9) for k in run.kinds], label)
        rows.setdefault(label, Row(label, run.paper_key, order)).cells.setdefault(cell, []).append(run)
    return sorted(rows.values(), key=lambda r: r.sort_key)


def _variant(run: Run, same_cell: list[Run]) -> str:
    """` (lr=0.001)` for the settings in which this cell's runs differ (empty when only seeds do)."""
    differing = [k for k in RUN_SETTINGS if len({json.dumps(r.config.get(k), sort_keys=True) for r in same_cell}) > 1]
    return f" ({', '.join(f'{k}={run.config.get(k)}' for k in differing)})" if differing else ""


def summarize(values: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _summary(members: list[Run], split: str, name: str) -> dict[str, Any] | None:
    """`summarize` of the runs' numeric `split` values of metric `name`; None when none has one."""
    values = [float(r.metrics[split][name]) for r in members if _is_number(r.metrics[split].get(name))]
    return summarize(values) if values else None


def paper_results() -> dict[str, Any]:
    return json.loads(resources.files("kadapter_cli").joinpath("resources/paper_results.json").read_text("utf-8"))


def build_report(runs: list[Run], split: str = "test", paper: bool = False) -> dict[str, Any]:
    """The report as plain data (what `--json` prints); scores are fractions, as in metrics.json."""
    if split not in ("dev", "test"):
        raise BadParameter("{split} must be dev or test, got {value!r}", split)
    finetuned = [r for r in runs if r.task]
    columns = task_columns(finetuned)
    reference = paper_results() if paper else None
    rows = []
    for row in group_rows(finetuned, "task"):
        cells = {}
        for task, metric_names in columns.items():
            members = row.cells.get(task, [])
            metrics = {}
            for name in metric_names:
                metrics[name] = _summary(members, split, name)
                if reference is not None:
                    paper_value = reference["results"].get(row.paper_key, {}).get(task, {}).get(name)
                    paper_fraction = None if paper_value is None else round(paper_value / 100, 6)
                    metrics[name] = {**(metrics[name] or {}), "paper": paper_fraction}
            cells[task] = {"runs": [str(r.path) for r in members], "metrics": metrics}
        entry = {"adapters": row.label, "cells": cells}
        if reference is not None:
            entry["paper_row"] = reference["rows"].get(row.paper_key)
        rows.append(entry)
    adapters = []
    for row in group_rows([r for r in runs if r.kind], "kind"):
        for kind, members in row.cells.items():
            names = ADAPTER_METRICS.get(kind) or tuple(k for k, v in members[0].metrics["dev"].items() if _is_number(v))
            metrics = {}
            for name in names:
                metrics[name] = _summary(members, "dev", name)
            adapters.append({"adapter": row.label, "kind": kind, "runs": [str(r.path) for r in members],
                             "metrics": metrics})
    report = {"split": split, "tasks": {t: list(m) for t, m in columns.items()}, "rows": rows, "adapters": adapters}
    if reference is not None:
        report["paper_source"] = reference["source"]
    return report


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_cell(metric: dict[str, Any] | None, with_paper: bool) -> str:
    """`93.76`, `93.76 ± 0.41` over seeds, `(77.61)` after it for the paper; percentages as the paper."""
    if metric is None:
        return "–"
    text = "–"
    if "mean" in metric:
        text = f"{100 * metric['mean']:.2f}" + (f" ± {100 * metric['std']:.2f}" if metric["n"] > 1 else "")
    if with_paper and metric.get("paper") is not None:
        text += f" ({100 * metric['paper']:.2f})"
    return text


def _headers(report: dict[str, Any], separator: str = " ") -> list[str]:
    return [f"{task}{separator}{SHORT.get(m, m)}" for task, metrics in report["tasks"].items() for m in metrics]


def _row_cells(report: dict[str, Any], row: dict[str, Any]) -> list[str]:
    with_paper = "paper_source" in report
    return [format_cell(row["cells"][task]["metrics"][m], with_paper)
            for task, metrics in report["tasks"].items() for m in metrics]


def _runs_count(row: dict[str, Any]) -> str:
    counts = sorted({len(cell["runs"]) for cell in row["cells"].values() if cell["runs"]})
    return "/".join(map(str, counts))


def print_tables(report: dict[str, Any], console=None, adapters: bool = True) -> None:
    """The rich tables: finetuned runs in the paper's layout, then (`adapters`) the adapters' dev scores."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if report["rows"]:
        caption = "scores ×100, mean ± std over seeds"
        if "paper_source" in report:
            caption += "; (in brackets) the paper's: Findings of ACL 2021, RoBERTa-large"
        tasks = list(report["tasks"])
        # One task: its name in the title and the metric alone in each header, so narrow terminals fit.
        title = f"Fine-tuned runs: {tasks[0]}, {report['split']} split" if len(tasks) == 1 else \
            f"Fine-tuned runs, {report['split']} split"
        table = Table(title=title, caption=caption)
        table.add_column("adapters", no_wrap=True)
        table.add_column("runs", justify="right")
        headers = [SHORT.get(m, m) for m in report["tasks"][tasks[0]]] if len(tasks) == 1 else _headers(report, "\n")
        for header in headers:
            table.add_column(header, justify="right")
        for row in report["rows"]:
            table.add_row(row["adapters"], _runs_count(row), *_row_cells(report, row))
        console.print(table)
    if adapters and report["adapters"]:
        table = Table(title="Knowledge adapters, dev split")
        for col in ("adapter", "kind", "runs", "metric", "value"):
            table.add_column(col, justify="right" if col in ("runs", "value") else "left", no_wrap=True)
        for entry in report["adapters"]:
            for i, (metric, value) in enumerate(entry["metrics"].items()):
                first = i == 0
                table.add_row(entry["adapter"] if first else "", entry["kind"] if first else "",
                              str(len(entry["runs"])) if first else "", SHORT.get(metric, metric),
                              format_cell(value, False))
        console.print(table)
    if not report["rows"] and not report["adapters"]:
        console.print("no finetuned runs or adapters found")


def markdown(report: dict[str, Any]) -> str:
    lines = []
    if report["rows"]:
        headers = ["adapters", "runs", *_headers(report)]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join([row["adapters"], _runs_count(row), *_row_cells(report, row)]) + " |"
                  for row in report["rows"]]
    if report["adapters"]:
        lines += ([""] if lines else []) + ["| adapter | kind | runs | metric | value |", "|---|---|---|---|---|"]
        for entry in report["adapters"]:
            lines += [f"| {entry['adapter']} | {entry['kind']} | {len(entry['runs'])} | {SHORT.get(m, m)} | "
                      f"{format_cell(v, False)} |" for m, v in entry["metrics"].items()]
    return "\n".join(lines) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    """One line per row of the paper-style table; `<task>.<metric>` (mean, a fraction), `.std`, `.n`
    and, with `--paper`, `.paper`. The adapters' table is in `--json`."""
    with_paper = "paper_source" in report
    fields = ["adapters"]
    for task, metrics in report["tasks"].items():
        for m in metrics:
            fields += [f"{task}.{m}", f"{task}.{m}.std", f"{task}.{m}.n"] + ([f"{task}.{m}.paper"] if with_paper else [])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        line: dict[str, Any] = {"adapters": row["adapters"]}
        for task, metrics in report["tasks"].items():
            for m in metrics:
                value = row["cells"][task]["metrics"][m] or {}
                line.update({f"{task}.{m}": value.get("mean", ""), f"{task}.{m}.std": value.get("std", ""),
                             f"{task}.{m}.n": value.get("n", 0)})
                if with_paper:
                    line[f"{task}.{m}.paper"] = "" if value.get("paper") is None else value["paper"]
        writer.writerow(line)
    return out.getvalue()


# ---------------------------------------------------------------- figures


def read_curves(run: Run) -> tuple[list[tuple[int, float]], list[tuple[int, float]], str]:
    """(training loss by step, primary dev metric by step, that metric's name) from train_log.jsonl."""
    from kadapter_cli.tasks import TASKS

    primary = TASKS[run.task].primary_metric if run.task in TASKS else ADAPTER_PRIMARY.get(run.kind or "", "")
    loss, dev = [], []
    path = run.path / LOG_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in record and "step" in record:
                loss.append((record["step"], record["loss"]))
            elif isinstance(record.get("dev"), dict) and _is_number(record["dev"].get(primary)):
                dev.append((record["step"], record["dev"][primary]))
    return loss, dev, primary


def plot(runs: list[Run], out: Path, report: dict[str, Any]) -> list[Path]:
    """Writes `curves-<task or kind>.png` (loss and dev metric against step, runs overlaid) and
    `headline.png` (each task's primary metric per adapter set); returns the files written."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend (Agg)

    out.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.task or run.kind or "other", []).append(run)
    for name, members in groups.items():
        fig = Figure(figsize=CURVE_SIZE, dpi=PLOT_DPI)
        loss_ax, dev_ax = fig.subplots(1, 2)
        metric = ""
        for run in members:
            loss, dev, metric = read_curves(run)
            label = run.path.name
            if loss:
                loss_ax.plot(*zip(*loss), label=label, linewidth=1.4)
            if dev:
                dev_ax.plot(*zip(*dev), marker="o", markersize=3, label=label, linewidth=1.4)
        what = "pretraining" if members[0].kind else "fine-tuning"
        loss_ax.set(title=f"{name}: training loss ({what})", xlabel="optimizer step", ylabel="loss")
        dev_ax.set(title=f"{name}: dev {metric}", xlabel="optimizer step", ylabel=metric)
        for ax in (loss_ax, dev_ax):
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / f"curves-{name}.png"))
    if report["rows"]:
        written.append(_save(_headline_figure(report), out / "headline.png"))
    return written


def _headline_figure(report: dict[str, Any]):
    from matplotlib.figure import Figure

    from kadapter_cli.tasks import TASKS

    tasks = list(report["tasks"])
    fig = Figure(figsize=(BAR_PANEL_SIZE[0] * len(tasks), BAR_PANEL_SIZE[1]), dpi=PLOT_DPI)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    with_paper = "paper_source" in report
    for ax, task in zip(axes, tasks):
        metric = TASKS[task].primary_metric if task in TASKS else report["tasks"][task][0]
        labels, means, stds, papers = [], [], [], []
        for row in report["rows"]:
            value = row["cells"][task]["metrics"].get(metric) or {}
            if "mean" not in value:
                continue
            labels.append(row["adapters"])
            means.append(100 * value["mean"])
            stds.append(100 * value["std"])
            papers.append(100 * value["paper"] if value.get("paper") is not None else math.nan)
        xs = list(range(len(labels)))
        width = 0.4 if with_paper else 0.6
        shift = width / 2 if with_paper else 0.0
        errors = stds if any(stds) else None  # no error bars for single runs
        bars = ax.bar([x - shift for x in xs], means, width, yerr=errors, capsize=3, label="kadapter", color="#4C72B0")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        if with_paper:
            ax.bar([x + shift for x in xs], papers, width, label="paper", color="#DD8452", hatch="//", alpha=0.8)
            ax.legend(fontsize=8)
        ax.set_xticks(xs, labels, rotation=20, fontsize=8)
        short = SHORT.get(metric, metric)
        ax.set(title=f"{task}: {report['split']} {short}", ylabel=f"{short} (×100)",
               ylim=(0, 100))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    """Written under a temporary name and renamed: a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=PLOT_DPI)
    os.replace(tmp, path)
    return path
