"""A toy run of the training loop, small enough for tests, real enough to exercise it.

Task: sequences of 3–14 token ids from a 24-word vocabulary; the label says whether most tokens are
below 12. The model has a frozen part (embedding and a fixed projection), dropout, and a trainable
classifier, so checkpoints must restore RNG state and skip frozen weights.

Used two ways:
- imported by tests (`ToyModel`, `ToyObjective`, `toy_examples`) for in-process runs;
- run as a script (`python tests/helpers/train_toy.py RUN_DIR ...`, also under `accelerate launch`) by the
  kill -9 and multi-process tests; it writes `RUN_DIR/final.safetensors` (the weights `train()`
  left in the model) and prints the `TrainResult` as JSON on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

VOCAB = 24


def toy_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        ids = [rng.randrange(VOCAB) for _ in range(rng.randint(3, 14))]
        examples.append({"id": i, "ids": ids, "label": int(sum(t < VOCAB // 2 for t in ids) * 2 > len(ids))})
    return examples


class ToyModel(nn.Module):
    def __init__(self, hidden: int = 16, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.frozen_projection = nn.Linear(hidden, hidden)
        for p in [*self.embed.parameters(), *self.frozen_projection.parameters()]:
            p.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        x = self.frozen_projection(self.embed(input_ids))
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(self.dropout(torch.relu(self.hidden(self.dropout(pooled)))))


class ToyObjective:
    """Classification of toy sequences; `step_delay` slows each step so a test can kill it mid-run."""

    primary_metric = "accuracy"

    def __init__(self, step_delay: float = 0.0):
        self.step_delay = step_delay

    def length(self, example: dict) -> int:
        return len(example["ids"])

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["ids"]) for e in examples)
        ids = torch.zeros(len(examples), longest, dtype=torch.long)
        mask = torch.zeros(len(examples), longest, dtype=torch.long)
        for row, e in enumerate(examples):
            ids[row, :len(e["ids"])] = torch.tensor(e["ids"])
            mask[row, :len(e["ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([e["label"] for e in examples]),
                "example_ids": torch.tensor([e["id"] for e in examples])}

    def loss(self, model, batch) -> torch.Tensor:
        if self.step_delay:
            time.sleep(self.step_delay)
        logits = model(batch["input_ids"], batch["attention_mask"])
        return nn.functional.cross_entropy(logits.float(), batch["labels"])

    def predict(self, model, batch) -> list:
        logits = model(batch["input_ids"], batch["attention_mask"])
        return [{"id": i, "pred": p} for i, p in zip(batch["example_ids"].tolist(), logits.argmax(-1).tolist())]

    def score(self, outputs: list, examples: list) -> dict[str, float]:
        correct = sum(o["pred"] == e["label"] for o, e in zip(outputs, examples))
        return {"accuracy": correct / max(len(examples), 1), "n": float(len(outputs)),
                "in_order": float(all(o["id"] == e["id"] for o, e in zip(outputs, examples)))}


def build_model(seed: int, dropout: float = 0.2) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(dropout=dropout)


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.loop import train

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-dev", type=int, default=60)
    parser.add_argument("--step-delay", type=float, default=0.0)
    for name in ("epochs", "batch_size", "micro_batch_size", "save_every", "eval_every", "log_every", "seed", "max_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--report-to", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    options = {k: v for k, v in vars(args).items() if v is not None}
    config = TrainConfig.from_options({"epochs": 3, "batch_size": 8, "log_every": 5, **options})
    model = build_model(config.seed, args.dropout)
    result = train(model, ToyObjective(args.step_delay), toy_examples(args.n_train, 1), toy_examples(args.n_dev, 2),
                   config, args.run_dir, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, args.run_dir / "final.safetensors")
        print(json.dumps(dataclasses.asdict(result)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
    from kadapter_cli.processes import end_processes, exit_now

    if end_processes():  # launched: leave the process group as the CLI does, or teardown may abort
        exit_now(0)
