"""`kadapter encode`: features of a file of texts from a trained model (kadapter_cli/api/features_file.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kadapter_cli.api.options import ENCODE_BATCH_SIZE, ENCODE_POOL
from kadapter_cli.commands import app
from kadapter_cli.progress import info
from kadapter_cli.training.config import TrainConfig


@app.command("encode")
def encode_cli(
    model: str = typer.Argument(..., metavar="MODEL", help=(
        "A finetuned model folder (its fine-tuned fused representation), or a composition folder, an "
        "adapter folder, or adapter folders separated by commas (the K-Adapter output: the backbone's last "
        "hidden state and each adapter's output side by side). Each may be a Hugging Face Hub repository id "
        "(org/name or org/name@revision).")),
    texts: Path = typer.Argument(..., metavar="TEXTS", help=(
        "JSON Lines of {\"text\": ..., \"id\": ...} (id optional: the 0-based position), a JSON list, or "
        "plain text (one text a line).")),
    out: Path = typer.Option(..., "--out", help=(
        "Output file: .safetensors (keys features, offsets with --pool none; metadata ids, parts) or .npy "
        "(pooled only).")),
    pool: str = typer.Option(ENCODE_POOL, "--pool", metavar="cls|mean|none", help=(
        "One vector per text: the first token's (cls: <s> / [CLS]) or the mean over its tokens; none: every "
        "token's.")),
    backbone: Optional[str] = typer.Option(None, "--backbone", help=(
        "Backbone for adapters (default: the one they were trained on).")),
    batch_size: int = typer.Option(ENCODE_BATCH_SIZE, "--batch-size", help="Texts per batch (the features do not depend on it)."),
    device: str = typer.Option(TrainConfig.device, "--device", metavar="auto|cpu|cuda", help="Where to run (auto: cuda when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help=(
        "CPU threads (default: OMP_NUM_THREADS if set, else the cores that are idle now).")),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the --out file if it exists."),
) -> None:
    """Write the features of every text in TEXTS to one file, in input order, streaming."""
    from kadapter_cli.api.features_file import encode_file
    from kadapter_cli.errors import BadInput
    from kadapter_cli.training.setup import set_threads

    if pool not in ("cls", "mean", "none"):
        raise BadInput(f"--pool must be cls, mean or none, got {pool!r}")
    set_threads(threads)
    parts = [p.strip() for p in model.split(",") if p.strip()]
    result = encode_file(parts[0] if len(parts) == 1 else parts, texts, out, None if pool == "none" else pool,
                         batch_size=batch_size, device=device, backbone=backbone, overwrite=overwrite)
    rows, width = result["shape"]
    info(f"wrote {result['texts']:,} texts ({result['tokens']:,} tokens) as {rows:,} × {width} features → {out}")
