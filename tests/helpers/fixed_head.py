"""A finetuned model whose predictions are known by hand: one CLI fine-tuning step, then the head's
last layer set to output a fixed bias whatever the input (the typing and relation heads end in
`out_proj`)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file


def finetune_then_fix_head(cli, backbone, task: str, data_dir, bias: list[float]):
    """The `finetuned/<task>-base` folder of a one-step `kadapter finetune`, its head's output set to `bias`."""
    result = cli("finetune", "--task", task, "--data", data_dir, "--backbone", backbone, "--max-steps", "1",
                 "--batch-size", "2", "--max-length", "32")
    assert result.exit_code == 0, result.output
    return fix_head(cli.workdir / "finetuned" / f"{task}-base", bias)


def fix_head(run, bias: list[float]):
    """The finetuned folder `run`, its head's output set to `bias` (one value per label)."""
    weights = load_file(run / "model.safetensors")
    weights["head.out_proj.weight"] = torch.zeros_like(weights["head.out_proj.weight"])
    weights["head.out_proj.bias"] = torch.tensor(bias, dtype=weights["head.out_proj.bias"].dtype)
    save_file(weights, str(run / "model.safetensors"), metadata={"format": "pt"})
    return run
