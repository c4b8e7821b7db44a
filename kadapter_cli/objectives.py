"""What the one training loop optimises: fac pretraining, lin pretraining, task fine-tuning.

An objective turns encoded examples into padded batches, computes the loss and the predictions of a
model on a batch, and scores predictions (`kadapter_cli.train_config.Objective`). Examples are plain
dicts made by `kadapter_cli.encoding` / a task's `encode`; when the frozen backbone's features are
cached, an example also carries `_cache` (a `FeatureCache`) and `_row` (its row there), and the
batch carries the gathered `features` so the model skips the backbone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kadapter_cli import metrics

IGNORE = -100


def pad_ids(seqs: Sequence[Sequence[int]], pad: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads to `length` (default: the longest sequence in the batch): `(input_ids, attention_mask)`."""
    longest = max(len(s) for s in seqs)
    if length is not None and length < longest:
        raise ValueError(f"a sequence of {longest} tokens does not fit the padded length {length}")
    length = longest if length is None else length
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def base_batch(examples: Sequence[dict], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
    ids, mask = pad_ids([e["input_ids"] for e in examples], pad_id, pad_to)
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    cache = examples[0].get("_cache")
    if cache is not None:
        batch["features"] = cache.gather([e["_row"] for e in examples], ids.shape[1])
    return batch


class _Objective:
    """`pad_to`: pad every batch to this length (for adapters that attend to padding,
    `KAdapterModel.padded_length`); None pads each batch to its longest example."""

    primary_metric = "loss"

    def __init__(self, pad_id: int, pad_to: int | None = None):
        self.pad_id = pad_id
        self.pad_to = pad_to

    def length(self, example: dict) -> int:
        return len(example["input_ids"])


class RelationObjective(_Objective):
    """Single-label classification of an entity pair (fac pretraining on T-REx)."""

    primary_metric = "accuracy"

    def __init__(self, pad_id: int, labels: Sequence[str], pad_to: int | None = None):
        super().__init__(pad_id, pad_to)
        self.labels = list(labels)

    def collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        batch = base_batch(examples, self.pad_id, self.pad_to)
        batch["subj_pos"] = torch.tensor([e["subj_pos"] for e in examples])
        batch["obj_pos"] = torch.tensor([e["obj_pos"] for e in examples])
        batch["labels"] = torch.tensor([e["label"] for e in examples])
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch).float(), batch["labels"])

    def predict(self, model, batch) -> list[int]:
        return model(batch).argmax(-1).tolist()

    def score(self, outputs: list[int], examples: Sequence[dict]) -> dict[str, float]:
        gold = [self.labels[e["label"]] for e in examples]
        pred = [self.labels[o] for o in outputs]
        return metrics.classification_metrics(gold, pred)


class DependencyObjective(_Objective):
    """Dependency-head prediction (lin pretraining): at each word's first sub-token, the position
    of its head word's first sub-token (0 = the root, the `<s>` slot)."""

    primary_metric = "uas"

    def collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        batch = base_batch(examples, self.pad_id, self.pad_to)
        targets = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
        for i, e in enumerate(examples):
            targets[i, : len(e["head_targets"])] = torch.as_tensor(e["head_targets"], dtype=torch.long)
        batch["head_targets"] = targets
        if all("word_starts" in e for e in examples):
            # Only <s> (the root) and first sub-tokens of words can be heads.
            candidates = torch.zeros(batch["input_ids"].shape, dtype=torch.long)
            candidates[:, 0] = 1
            for i, e in enumerate(examples):
                candidates[i, e["word_starts"]] = 1
            batch["candidates"] = candidates
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        scores = model(batch).float()  # (B, L, C): C = L candidate positions (pointer) or max_length (original)
        return F.cross_entropy(scores.flatten(0, 1), batch["head_targets"].flatten(), ignore_index=IGNORE)

    def predict(self, model, batch) -> list[tuple[int, int]]:
        pred = model(batch).argmax(-1)
        gold = batch["head_targets"]
        scored = gold != IGNORE
        correct = ((pred == gold) & scored).sum(-1)
        return list(zip(correct.tolist(), scored.sum(-1).tolist()))

    def score(self, outputs: list[tuple[int, int]], examples: Sequence[dict]) -> dict[str, float]:
        words = sum(n for _, n in outputs)
        return {"uas": sum(c for c, _ in outputs) / words if words else 0.0, "words": float(words)}


class TaskObjective(_Objective):
    """Fine-tuning on a downstream task from the registry (`kadapter_cli.tasks`)."""

    def __init__(self, pad_id: int, task, labels: Sequence[str], pad_to: int | None = None):
        super().__init__(pad_id, pad_to)
        self.task = task
        self.labels = list(labels)
        self.primary_metric = task.primary_metric

    def collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        batch = base_batch(examples, self.pad_id, self.pad_to)
        for key in self.task.position_keys:
            batch[key] = torch.tensor([e[key] for e in examples])
        if self.task.multilabel:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.float)
        else:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        return self.task.loss(model(batch).float(), batch["labels"])

    def predict(self, model, batch) -> list[list[str]]:
        return self.task.predict(model(batch).float(), self.labels)

    def score(self, outputs: list[list[str]], examples: Sequence[dict]) -> dict[str, float]:
        return self.task.metrics([e["gold"] for e in examples], outputs)
