"""`kadapter encode`: the features of a file of texts, written to one file read with one call.

The input is streamed twice — once to count tokens and collect ids, once to encode; a JSON list is
parsed one item at a time, as JSON Lines are — and the output is written batch by batch, so memory
holds one batch of texts and features (and every input's id and token count), never the whole
input or output.

Output formats (by the file's extension):

- `.safetensors` (`safetensors.torch.load_file(path)`):
  - pooled (`pool="cls"` or `"mean"`): `features` (N, D) float32, row i = input i;
  - per token (`pool=None`): `features` (T, D) float32, every input's real tokens one after the
    other, and `offsets` (N + 1,) int64: input i is `features[offsets[i]:offsets[i + 1]]`;
  - metadata (`safe_open(path, "pt").metadata()`): `ids` (JSON list, input order), `parts` (JSON
    `[[name, size], …]`: the blocks of D), `pool`, `model`.
- `.npy` (`numpy.load(path)`), pooled only: `features` (N, D) float32, row i = input i.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator, Sequence

from kadapter_cli import __version__
from kadapter_cli.api.features import EncodesText
from kadapter_cli.api.options import ENCODE_BATCH_SIZE, ENCODE_POOL
from kadapter_cli.artifacts.io import iter_json_list, iter_text_lines
from kadapter_cli.artifacts.manifest import read_manifest
from kadapter_cli.artifacts.sources import model_folder
from kadapter_cli.errors import BadInput, BadParameter, OutputExists, ParamText
from kadapter_cli.modeling.pooling import check_pooling
from kadapter_cli.progress import progress
from kadapter_cli.tasks.base import detect_format

FORMATS = (".safetensors", ".npy")
READ_CHUNK = 1024  # texts tokenized at once while counting


def load_encoder(model: str | Path | Sequence[str | Path], backbone: str | None = None) -> EncodesText:
    """A finetuned folder → `KAdapterForTask` (its fused representation); adapters or a composition
    → `KAdapterModel` (the K-Adapter output: backbone and adapters side by side)."""
    from kadapter_cli.api.encoder import KAdapterModel
    from kadapter_cli.api.for_task import KAdapterForTask

    if isinstance(model, (str, Path)):
        folder = model_folder(model)
        if (folder / "manifest.json").is_file() and read_manifest(folder).get("kind") == "finetuned":
            if backbone is not None:
                raise BadParameter("{backbone}: a finetuned model carries its own (fine-tuned) backbone", backbone,
                                   folder)
            return KAdapterForTask.from_pretrained(folder)
    return KAdapterModel.from_pretrained(model, backbone)


def iter_texts(path: str | Path) -> Iterator[tuple[Any, str]]:
    """`(id, text)` of each input: JSON Lines or a JSON list of `{"text", "id"?}` objects (or bare
    strings), or plain text, one text a line. An input without an `id` gets its 0-based position."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "text":
        position = 0
        for _, line in iter_text_lines(path):
            text = line.rstrip("\r\n")
            if text.strip():
                yield position, text
                position += 1
        return
    if kind == "json":  # parsed one item at a time, as JSON Lines are
        items = ((i, value, f"record {i}") for i, value in iter_json_list(path))
    else:
        from kadapter_cli.artifacts.io import iter_jsonl

        items = ((i, value, f"line {lineno}") for i, (lineno, value) in enumerate(iter_jsonl(path)))
    for position, value, where in items:
        if isinstance(value, str):
            yield position, value
            continue
        text = value.get("text") if isinstance(value, dict) else None
        if not isinstance(text, str):
            raise BadInput("expected a \"text\" string", path, where)
        yield value.get("id", position), text


def encode_file(model: str | Path | Sequence[str | Path], texts: str | Path, out: str | Path,
                pool: str | None = ENCODE_POOL, batch_size: int = ENCODE_BATCH_SIZE, device: str = "auto", backbone: str | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Writes the features of every text in `texts` to `out` (`.safetensors`, or `.npy` when pooled;
    the module docstring gives the keys). `model`: a finetuned folder, a composition, an adapter
    folder or a list of them (`load_encoder`). Returns `{"texts", "tokens", "shape", "out"}`."""
    import torch

    check_pooling(pool)
    out = Path(out)
    if out.suffix not in FORMATS:
        raise BadParameter("{out} must end in {formats}", out, out, formats=" or ".join(FORMATS))
    if out.suffix == ".npy" and pool is None:
        raise BadInput(ParamText("per-token features ({pool:none}) vary in length: write them to a .safetensors "
                                 "file"), out)
    if out.exists() and not overwrite:
        raise OutputExists(ParamText("already exists; pass {overwrite:True} to replace it"), out)
    encoder = load_encoder(model, backbone)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder.to(device)

    ids, lengths = [], []
    with progress() as bar:
        counting = bar.add_task("reading", total=None, unit="texts")
        for chunk in _chunks(iter_texts(texts), READ_CHUNK):
            ids += [i for i, _ in chunk]
            lengths += [len(s) for s in encoder.sequences([t for _, t in chunk])]
            bar.advance(counting, len(chunk))
        bar.update(counting, total=len(ids))  # counted: the bar ends full (12/12), not open-ended (12/?)
    if not ids:
        raise BadInput("no texts", texts)
    sizes = encoder.part_sizes
    width = sum(sizes.values())
    shape = (len(ids), width) if pool else (sum(lengths), width)
    meta = {"ids": json.dumps(ids, ensure_ascii=False), "parts": json.dumps(list(sizes.items())),
            "pool": pool or "none", "model": str(model), "kadapter_version": __version__}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _writer(tmp, out.suffix, shape, lengths if pool is None else None, meta) as write:
            with progress() as bar:
                encoding = bar.add_task("encoding", total=len(ids), unit="texts")
                for chunk in _chunks(iter_texts(texts), batch_size):
                    sequences = encoder.sequences([t for _, t in chunk])
                    for features, chunk_lengths in encoder.iter_features(sequences, pool, batch_size=batch_size):
                        write(features.float() if pool else torch.cat(
                            [f[:n] for f, n in zip(features.float(), chunk_lengths)]))
                    bar.advance(encoding, len(chunk))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"texts": len(ids), "tokens": sum(lengths), "shape": list(shape), "out": str(out)}


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _writer:
    """Rows of float32 features appended in order to a `.npy` (memory-mapped) or a `.safetensors`
    file whose header is written first (shapes are known from the counting pass)."""

    def __init__(self, path: Path, suffix: str, shape: tuple[int, int], lengths: list[int] | None,
                 metadata: dict[str, str]):
        self.path, self.suffix, self.shape, self.lengths, self.metadata = path, suffix, shape, lengths, metadata
        self.row = 0

    def __enter__(self):
        import numpy as np

        if self.suffix == ".npy":
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=self.shape)
            self.file = None
        else:
            self.array = None
            self.file = open(self.path, "wb")
            self._safetensors_header(np)
        return self.write

    def _safetensors_header(self, np) -> None:
        rows, width = self.shape
        tensors: dict[str, Any] = {}
        start = 0
        if self.lengths is not None:  # offsets first: int64 keeps the float32 block 8-byte aligned
            offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype("<i8")
            tensors["offsets"] = {"dtype": "I64", "shape": [len(offsets)], "data_offsets": [0, offsets.nbytes]}
            start = offsets.nbytes
        tensors["features"] = {"dtype": "F32", "shape": [rows, width], "data_offsets": [start, start + rows * width * 4]}
        header = json.dumps({"__metadata__": self.metadata, **tensors}, ensure_ascii=False).encode("utf-8")
        header += b" " * (-len(header) % 8)
        self.file.write(struct.pack("<Q", len(header)) + header)
        if self.lengths is not None:
            self.file.write(offsets.tobytes())

    def write(self, rows) -> None:
        values = rows.contiguous().numpy().astype("<f4", copy=False)
        if self.array is not None:
            self.array[self.row:self.row + len(values)] = values
        else:
            self.file.write(values.tobytes())
        self.row += len(values)

    def __exit__(self, kind, error, trace) -> None:
        if self.array is not None:
            self.array.flush()
            del self.array
        else:
            self.file.close()
        if kind is None and self.row != self.shape[0]:
            raise RuntimeError(f"wrote {self.row} rows of {self.shape[0]}")
