"""Length-bucketed batch orders: seeded, resumable, shardable across processes.

Padding every example to `max_length` (what the original code does) wastes most of the compute on
pad tokens when sentences average 23 words. Instead each epoch's order is:

1. a permutation of all examples seeded by `(seed, epoch)`;
2. cut into pools of `bucket_size × batch_size` examples, each pool sorted by length and cut into
   batches (so a batch holds examples of similar length and pads little);
3. the batch order shuffled with the same generator, so long and short batches alternate.

The order is a pure function of `(lengths, batch_size, bucket_size, seed, epoch)`: a resumed run
recomputes it and skips the batches it already did. Training cuts the epoch into effective batches
(one per optimizer step, over all processes) and `step_micro_batches` splits each into the
micro-batches of every process and accumulation step, so N processes see exactly the examples one
process would see in the same step. Evaluation uses `sequential_batches`: sorted by length, not
shuffled, spread over the processes with `shard`, with the indices to put outputs back in input order.
"""

from __future__ import annotations

from typing import Sequence

import torch

Batch = list[int]  # indices into the example list


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    bucket_size: int = 100,
) -> list[Batch]:
    """The batches (lists of example indices) of one training epoch, deterministic in `(seed, epoch)`.

    `bucket_size` is the number of batches whose examples are sorted together; 1 gives plain
    shuffled batches, a huge value sorts the whole epoch (least padding, least randomness).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be at least 1, got {bucket_size}")
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = bucket_size * batch_size
    batches: list[Batch] = []
    for start in range(0, len(order), pool):
        # Stable sort: ties keep the permutation's order, so equal lengths still mix.
        bucket = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches.extend(bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def sequential_batches(lengths: Sequence[int], batch_size: int, batch_overhead: int | None = None) -> list[Batch]:
    """Evaluation order: all examples sorted by length (stable), cut into batches; no randomness.

    With `batch_overhead` (a forward pass's fixed cost, in tokens' worth of compute) a batch is also
    cut before an example that would add more padding to the examples already in it (each padded up
    to its length) than starting a new batch costs. A large evaluation set has many examples of
    each length and pads little either way; a small one (a few questions' windows) has lengths
    spread out, and fixed-size batches would pad a sixth of the tokens or more.

    Concatenating the batches gives a permutation of `range(len(lengths))`; an output computed for
    `batches[b][j]` belongs to example `batches[b][j]` (see `restore_order`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if batch_overhead is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[Batch] = []
    current: Batch = []
    for i in order:
        # sorted: the batch's longest so far is its last example
        if current and (len(current) >= batch_size
                        or len(current) * (lengths[i] - lengths[current[-1]]) > batch_overhead):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def shard(batches: Sequence[Batch], rank: int, world_size: int) -> list[Batch]:
    """This process's share of evaluation batches: `rank, rank + world_size, ...` (none twice)."""
    return list(batches[rank::world_size])


def step_micro_batches(step: Batch, processes: int, grad_accum: int, rank: int) -> list[tuple[Batch, float]]:
    """The `grad_accum` micro-batches process `rank` computes for one optimizer step, each with its
    share of the step: `[(indices, share)]`.

    The step's examples are cut into `processes × grad_accum` consecutive, near-equal parts (the
    step is length-sorted inside its bucket, so each part pads little); part k goes to process
    `k % processes`. A loss weighted by `share × processes` (DDP averages over processes) makes the
    summed gradient the mean over the step's examples, whatever the split: N processes with
    micro-batch b give the weights of one process with micro-batch N·b. A short last step with
    fewer examples than parts gives some parts no example: they are computed on the step's first
    example with share 0, so every process still takes part in every gradient reduction.
    """
    parts = processes * grad_accum
    n = len(step)
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    mine = []
    for k in range(rank, parts, processes):
        indices = list(step[bounds[k]:bounds[k + 1]])
        mine.append((indices, len(indices) / n) if indices else ([step[0]], 0.0))
    return mine


def restore_order(indices: Sequence[int], outputs: Sequence, n: int) -> list:
    """Outputs listed in batch order → a list in input order (`indices[k]` is the input of `outputs[k]`)."""
    if len(indices) != len(outputs):
        raise ValueError(f"{len(indices)} indices for {len(outputs)} outputs")
    ordered: list = [None] * n
    seen = [False] * n
    for i, out in zip(indices, outputs):
        if seen[i]:
            raise ValueError(f"example {i} has two outputs")
        ordered[i] = out
        seen[i] = True
    if not all(seen):
        raise ValueError(f"{seen.count(False)} of {n} examples have no output")
    return ordered


def _epoch_seed(seed: int, epoch: int) -> int:
    # A fixed affine mix keeps (seed, epoch) pairs apart without Python's salted hash().
    return (seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1)
