"""Token-id lists → padded tensors: (B, L) for one sequence per example, (B, C, L) for C candidates.

Every batch is padded to its own longest sequence (or a fixed length, for adapters that attend to
padding) with the tokenizer's pad id; the attention mask is 1 on real tokens. torch is imported inside the functions, so task modules that use these stay
cheap to import (`kadapter --help`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def pad_ids(seqs: Sequence[Sequence[int]], pad: int, length: int | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Pads to `length` (default: the longest sequence in the batch): `(input_ids, attention_mask)`,
    each (B, L)."""
    import torch

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


def pad_choices(choices: Sequence[Sequence[Sequence[int]]], pad: int,
                length: int | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Examples of C candidate sequences each → `(input_ids, attention_mask)`, each (B, C, L),
    L = `length` or the longest candidate of the batch. Every example must have the same number of
    candidates."""
    counts = {len(c) for c in choices}
    if len(counts) != 1:
        raise ValueError(f"examples in one batch have different numbers of candidates: {sorted(counts)}")
    ids, mask = pad_ids([seq for example in choices for seq in example], pad, length)
    shape = (len(choices), counts.pop(), ids.shape[-1])
    return ids.view(shape), mask.view(shape)


def is_choices(input_ids: Sequence) -> bool:
    """Whether an example's `input_ids` holds candidates (a list of id lists) rather than one sequence."""
    return bool(input_ids) and isinstance(input_ids[0], (list, tuple))
