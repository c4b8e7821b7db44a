"""What the one training loop optimises: fac pretraining, lin pretraining, task fine-tuning.

An objective turns encoded examples into padded batches, computes the loss and the predictions of a
model on a batch, and scores predictions (`kadapter_cli.training.config.Objective`). Examples are plain
dicts made by `kadapter_cli.data.encoding` / a task's `encode`; when the frozen backbone's features are
cached, an example also carries `_cache` (a `FeatureCache`) and `_row` (its row there), and the
batch carries the gathered `features` so the model skips the backbone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kadapter_cli.data.padding import pad_ids
from kadapter_cli.tasks import metrics

IGNORE = -100
# BERT's dynamic masking: 15 % of the tokens, of them 80 % the mask token, 10 % a random token.
MASK_SHARE, MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.15, 0.8, 0.1


def base_batch(examples: Sequence[dict], pad_id: int, pad_to: int | None = None, multiple: int = 1) -> dict[str, Any]:
    """`multiple`: pad to the next multiple of it (`--compile`: a compiled graph per length bucket)."""
    if pad_to is None and multiple > 1:
        longest = max(len(e["input_ids"]) for e in examples)
        pad_to = -(-longest // multiple) * multiple
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
    length_multiple = 1  # pad each batch to a multiple of this many tokens (`setup.compile_trainable`)

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
        batch = base_batch(examples, self.pad_id, self.pad_to, self.length_multiple)
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
        batch = base_batch(examples, self.pad_id, self.pad_to, self.length_multiple)
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
        return {"uas": sum(c for c, _ in outputs) / words if words else 0.0, "words": words}


class TaskObjective(_Objective):
    """Fine-tuning on a downstream task from the registry (`kadapter_cli.tasks`): the task batches,
    computes the loss from its head's outputs, decodes and scores; this only adds cached features."""

    def __init__(self, pad_id: int, task, labels: Sequence[str], pad_to: int | None = None):
        super().__init__(pad_id, pad_to)
        self.task = task
        self.labels = list(labels)
        self.primary_metric = task.primary_metric

    def length(self, example: dict) -> int:
        return self.task.length(example)

    def collate(self, examples: Sequence[dict]) -> dict[str, Any]:
        batch = self.task.collate(examples, self.pad_id, self.pad_to)
        cache = examples[0].get("_cache")
        if cache is not None:  # candidates have a row each: gathered flat, as the model runs them
            rows = [r for e in examples for r in (e["_row"] if isinstance(e["_row"], list) else [e["_row"]])]
            batch["features"] = cache.gather(rows, batch["input_ids"].shape[-1])
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        return self.task.loss(model(batch), batch)

    def predict(self, model, batch) -> list[dict]:
        return self.task.decode(model(batch), batch, self.labels)

    def score(self, outputs: list[dict], examples: Sequence[dict]) -> dict[str, float]:
        return self.task.score(outputs, examples)

# ---------------------------------------------------------------- the training objective


class MaskedLMObjective:
    """Dynamic masking (BERT's 15 %, 80/10/10) and cross-entropy at the masked rows only."""

    primary_metric = "accuracy"
    collate_draws_random = True  # the loop never makes its batches ahead (the RNG state is checkpointed)

    def __init__(self, pad_id: int, mask_id: int, vocab_size: int, pad_to: int | None = None):
        self.pad_id, self.mask_id, self.vocab_size = pad_id, mask_id, vocab_size
        self.pad_to = pad_to  # adapters that attend to padding: every batch to this length (`padded_length`)

    def length(self, example: dict) -> int:
        return len(example["input_ids"])

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Masks afresh at every call from `generator` (default: torch's global RNG, which the loop
        seeds and checkpoints): a new mask each epoch, the same after `--resume`."""
        seqs, chosen, targets = [], [], []
        for e in examples:
            ids = torch.tensor(e["input_ids"], dtype=torch.long)
            maskable = torch.tensor(e["maskable"], dtype=torch.long)
            pick = torch.rand(len(maskable), generator=generator) < MASK_SHARE
            if not pick.any():  # every sequence teaches something
                pick[torch.randint(len(maskable), (1,), generator=generator)] = True
            positions = maskable[pick]
            targets.append(ids[positions].clone())
            action = torch.rand(len(positions), generator=generator)
            random_ids = torch.randint(self.vocab_size, (len(positions),), generator=generator)
            as_mask = action < MASK_TOKEN_SHARE
            as_random = (action >= MASK_TOKEN_SHARE) & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
            ids[positions[as_mask]] = self.mask_id
            ids[positions[as_random]] = random_ids[as_random]
            seqs.append(ids.tolist())
            chosen.append(positions)
        input_ids, attention_mask = pad_ids(seqs, self.pad_id, self.pad_to)
        width = max(len(p) for p in chosen)
        positions = torch.zeros(len(examples), width, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for i, (p, t) in enumerate(zip(chosen, targets)):
            positions[i, : len(p)], labels[i, : len(t)] = p, t
        valid = labels != IGNORE
        # The masked rows as indices, found here on the host: a boolean mask applied on the device
        # waits for it to count the rows (a sync per use).
        rows = valid.flatten().nonzero().squeeze(1)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions,
                "valid": valid, "labels": labels, "rows": rows, "targets": labels.flatten()[rows],
                "masked": valid.sum(-1)}

    def loss(self, model, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch).float(), batch["targets"])

    def predict(self, model, batch) -> list[tuple[int, int]]:
        """(masked tokens predicted right, masked tokens) per example."""
        valid = batch["valid"]
        hits = torch.zeros(valid.numel(), dtype=torch.long, device=valid.device)
        hits[batch["rows"]] = (model(batch).argmax(-1) == batch["targets"]).long()
        return list(zip(hits.view(valid.shape).sum(-1).tolist(), batch["masked"].tolist()))

    def score(self, outputs: list[tuple[int, int]], examples: list) -> dict[str, float]:
        masked = sum(n for _, n in outputs)
        return {"accuracy": sum(c for c, _ in outputs) / masked if masked else 0.0, "masked_tokens": float(masked)}
