"""Texts → the features of a loaded model, in batches that never change the result.

`EncodesText` is what the public models share: a tokenizer, a length limit and `feature_parts`
(token ids → named per-token features). Texts are tokenized one by one (truncated to
`max_length`), cut into batches in input order and padded with the model's rule: each batch to its
own longest sequence, or every batch to `padded_length` when an adapter attends to padding
(`KAdapterModel.padded_length` of the body). So a text's features do not depend on the batch it
lands in, up to float rounding. Padded positions of per-token features are zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from kadapter_cli.api.options import ENCODE_BATCH_SIZE
from kadapter_cli.data.padding import pad_ids
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.modeling.pooling import check_pooling, pool_features

if TYPE_CHECKING:
    import torch

Texts = str | Sequence[str]


class EncodesText:
    """`tokenize`, `encode` and `iter_features` over a subclass's `feature_parts`."""

    tokenizer: Any
    max_length: int

    # ------------------------------------------------------------ what a model supplies

    def feature_parts(self, input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        """Named per-token features, each (B, L, H_part), in the order they are concatenated."""
        raise NotImplementedError

    def padded_length(self) -> int | None:
        """The length every batch is padded to, or None (each batch to its own longest sequence)."""
        return None

    # ------------------------------------------------------------ inputs

    def sequences(self, inputs: Texts | Mapping[str, Any]) -> list[list[int]]:
        """Token ids of each input: texts are tokenized (special tokens added, truncated to
        `max_length`); a tokenized batch (`input_ids` and `attention_mask`, tensors or lists) gives
        its real tokens (mask 1)."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if isinstance(inputs, Mapping):
            if "input_ids" not in inputs:
                raise BadInput("a tokenized batch needs 'input_ids' (and 'attention_mask' when it is padded)")
            ids = _rows(inputs["input_ids"])
            mask = _rows(inputs["attention_mask"]) if "attention_mask" in inputs else [[1] * len(r) for r in ids]
            seqs = [[i for i, m in zip(row, row_mask) if m] for row, row_mask in zip(ids, mask)]
            too_long = [i for i, s in enumerate(seqs) if len(s) > self.max_length]
            if too_long:
                raise BadInput(ParamText("inputs[{i}] holds {n} tokens, more than {max_length} ({limit})",
                                         i=too_long[0], n=len(seqs[too_long[0]]), limit=self.max_length))
        else:
            texts = list(inputs)
            bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
            if bad:
                raise BadInput(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, expected a string")
            seqs = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        if any(not s for s in seqs):
            raise BadInput(f"inputs[{next(i for i, s in enumerate(seqs) if not s)}] has no tokens")
        return [list(map(int, s)) for s in seqs]

    def tokenize(self, texts: Texts) -> dict[str, "torch.Tensor"]:
        """`{"input_ids", "attention_mask"}` (N, L) as `encode` builds them: truncated to `max_length`,
        padded with the model's rule (`padded_length`). `encode(model.tokenize(texts))` equals
        `encode(texts)`."""
        ids, mask = pad_ids(self.sequences(texts), self._pad_id(), self.padded_length())
        return {"input_ids": ids, "attention_mask": mask}

    # ------------------------------------------------------------ features

    def iter_features(self, sequences: Sequence[Sequence[int]], pool: str | None = None, parts: bool = False,
                      batch_size: int = ENCODE_BATCH_SIZE) -> Iterator[tuple[dict[str, "torch.Tensor"] | "torch.Tensor", list[int]]]:
        """Per batch of `batch_size` sequences, in input order: `(features, lengths)` on the CPU.
        `features` is (b, L_batch, D) per token (L_batch = the batch's longest sequence; padded
        positions zero) or (b, D) pooled; with `parts`, a dict of them by part name."""
        import torch

        check_pooling(pool)
        if batch_size < 1:
            raise BadParameter("{batch_size} must be at least 1, got {value}", batch_size)
        device = self._device()
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            lengths = [len(s) for s in chunk]
            ids, mask = pad_ids(chunk, self._pad_id(), self.padded_length())
            with torch.no_grad():
                named = self.feature_parts(ids.to(device), mask.to(device))
            longest = max(lengths)
            mask = mask[:, :longest].to(device)
            out = {}
            for name, part in named.items():
                part = part[:, :longest] * mask.unsqueeze(-1).to(part.dtype)
                out[name] = (pool_features(part, mask, pool) if pool else part).cpu()
            yield (out if parts else self._joined(out)), lengths

    def encode(self, inputs: Texts | Mapping[str, Any], pool: str | None = None, parts: bool = False,
               batch_size: int = ENCODE_BATCH_SIZE) -> "torch.Tensor | dict[str, torch.Tensor]":
        """Features of `inputs` (a text, a list of N texts, or a tokenized batch of N), on the CPU.

        - per token (`pool=None`): (N, L, D), L = the longest input in tokens; positions past a
          text's end are zero (`tokenize(texts)["attention_mask"]` marks the real ones);
        - `pool="cls"`: the first token's features (`<s>` / `[CLS]`), (N, D);
        - `pool="mean"`: the mean over each input's real tokens, (N, D);
        - `parts=True`: a dict `{part name: (N, L, H) or (N, H)}` instead of their concatenation
          (`feature_parts` says what D is made of).

        The same inputs give the same features on every call and at every `batch_size` (batches
        are padded by the model's rule; different padding changes results by float rounding only).
        """
        import torch

        chunks = list(self.iter_features(self.sequences(inputs), pool, parts, batch_size))
        if not chunks:
            raise BadInput("nothing to encode: no inputs")
        named = [c if parts else {"features": c} for c, _ in chunks]
        longest = max(max(lengths) for _, lengths in chunks)
        joined = {}
        for name in named[0]:
            pieces = [n[name] for n in named]
            if pool is None:  # each batch is as long as its own longest input: pad to the overall longest
                pieces = [torch.nn.functional.pad(p, (0, 0, 0, longest - p.shape[1])) for p in pieces]
            joined[name] = torch.cat(pieces)
        return joined if parts else joined["features"]

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _joined(named: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        import torch

        return torch.cat(list(named.values()), dim=-1) if len(named) > 1 else next(iter(named.values()))

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _device(self) -> "torch.device":
        return next(self.parameters()).device  # type: ignore[attr-defined]  # the nn.Module it is mixed into


def _rows(value: Any) -> list[list[int]]:
    """A (N, L) tensor, array or nested list → a list of N lists; one sequence (L,) → [it]."""
    rows = value.tolist() if hasattr(value, "tolist") else list(value)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    return [list(r) for r in rows]
