"""A cache of the frozen backbone's tapped hidden states, computed once and reused every epoch.

When the backbone is frozen (adapter pretraining), its hidden states for an example never change,
yet a plain loop recomputes them every epoch — for RoBERTa-large that is most of the compute. The
cache runs the backbone once over all examples (length-sorted batches, `inference_mode`) and keeps
each example's states unpadded, one `(total_tokens, hidden)` array per state plus row offsets:

- `memory`: torch tensors in RAM;
- `disk`: `.npy` files in a folder, memory-mapped (the OS pages in what a batch needs).

States are stored in fp16 by default (half the bytes; adapters consume them in fp32). `gather` gives
a batch back zero-padded to the batch's length: positions past an example's end hold zeros, not the
backbone's pad-token states, so a consumer must mask padding — unless the cache is built with
`pad_to`: then every example is run padded to that length and its states are kept at every position,
the backbone's pad-token states included, for adapters that attend to padding
(`KAdapterModel.padded_length`).

`decide_cache` picks memory, disk or no cache from the estimated size and a memory budget.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, Sequence

from kadapter_cli.data.padding import is_choices, pad_ids
from kadapter_cli.errors import BadParameter
from kadapter_cli.processes import is_main_process, process_count, process_index
from kadapter_cli.progress import progress
from kadapter_cli.training.batching import sequential_batches

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kadapter_cli.training.config import TrainConfig

Compute = Callable[["torch.Tensor", "torch.Tensor"], Sequence["torch.Tensor"]]

GiB = 2**30
MAX_DEFAULT_BUDGET = 8 * GiB


class FeatureCache:
    """Per-example hidden states of a fixed encoder; build with `FeatureCache.build`."""

    def __init__(self, states: list, offsets: "torch.Tensor", dtype: "torch.dtype", storage: str,
                 folder: Path | None = None):
        self._states = states  # per state: torch tensor (memory) or numpy memmap (disk), (total_tokens, hidden)
        self._offsets = offsets  # (n_examples + 1,) int64: example i owns rows offsets[i]:offsets[i+1]
        self.dtype = dtype
        self.storage = storage
        self.folder = folder

    @classmethod
    def build(
        cls,
        compute: Compute,
        examples_input_ids: Sequence[Sequence[int]],
        pad_id: int,
        batch_size: int,
        storage: str = "memory",
        folder: str | Path | None = None,
        dtype: "torch.dtype | None" = None,
        description: str = "caching features",
        pad_to: int | None = None,
    ) -> "FeatureCache":
        """Runs `compute(input_ids (B, L), attention_mask (B, L)) -> [states (B, L, H), ...]` over
        every example once and stores the states of its real tokens — or, with `pad_to`, of all
        `pad_to` positions of the example padded to that length.

        Batches are sorted by length (little padding). `storage="disk"` writes into `folder`; two
        processes building at once need different folders.
        """
        import torch

        dtype = torch.float16 if dtype is None else dtype
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage must be 'memory' or 'disk', got {storage!r}")
        if storage == "disk" and folder is None:
            raise ValueError("a disk cache needs a folder")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"unsupported cache dtype {dtype}; use float16, bfloat16 or float32")
        lengths = [len(ids) for ids in examples_input_ids]
        if not lengths:
            raise ValueError("no examples to cache")
        if min(lengths) == 0:
            raise ValueError(f"example {lengths.index(0)} has no tokens")
        if pad_to is not None and max(lengths) > pad_to:
            raise ValueError(f"example {lengths.index(max(lengths))} has {max(lengths)} tokens, over pad_to={pad_to}")
        stored = lengths if pad_to is None else [pad_to] * len(lengths)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(stored, dtype=torch.long), 0)
        total = int(offsets[-1])
        folder = Path(folder) if folder is not None else None

        states: list = []
        batches = sequential_batches(lengths, batch_size)
        with progress() as bar:
            task = bar.add_task(description, total=len(lengths), unit="examples")
            for indices in batches:
                ids, mask = pad_ids([examples_input_ids[i] for i in indices], pad_id, pad_to)
                with torch.inference_mode():
                    outputs = list(compute(ids, mask))
                _check_outputs(outputs, ids.shape, states)
                if not states:
                    states = [_allocate(total, out.shape[-1], dtype, storage, folder, k) for k, out in enumerate(outputs)]
                rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in indices])
                kept = mask if pad_to is None else torch.ones_like(mask)
                real = kept.bool().to(outputs[0].device)
                for store, out in zip(states, outputs):
                    # Row-major over (example, position): the same order as `rows`.
                    _write_rows(store, rows, out[real].to("cpu", dtype))
                bar.advance(task, len(indices))
        cache = cls(states, offsets, dtype, storage, folder)
        if storage == "disk":
            for store in states:
                store.flush()
            (folder / "cache.json").write_text(json.dumps({
                "examples": len(lengths), "tokens": total, "padded_to": pad_to, "states": len(states),
                "hidden": cache.hidden,
                "dtype": str(dtype).removeprefix("torch."),
                "files": [f"state-{k}.npy" for k in range(len(states))]}, indent=2) + "\n", encoding="utf-8")
        return cache

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def n_states(self) -> int:
        return len(self._states)

    @property
    def hidden(self) -> int:
        return int(self._states[0].shape[1])

    @property
    def nbytes(self) -> int:
        return estimate_bytes(int(self._offsets[-1]), self.n_states, self.hidden, self.dtype)

    def length(self, index: int) -> int:
        """Tokens cached for example `index`."""
        return int(self._offsets[index + 1] - self._offsets[index])

    def gather(self, indices: Sequence[int], length: int) -> list["torch.Tensor"]:
        """The states of examples `indices` as float32 `(B, length, H)` tensors, zero-padded
        (and cut to `length` if an example is longer)."""
        import torch

        starts = self._offsets[list(indices)]
        kept = torch.clamp(self._offsets[[i + 1 for i in indices]] - starts, max=length)
        batch_pos = torch.repeat_interleave(torch.arange(len(indices)), kept)
        # Position of each kept row inside its example: 0, 1, ... restarting at every example.
        first_row = torch.repeat_interleave(torch.cumsum(kept, 0) - kept, kept)
        token_pos = torch.arange(int(kept.sum())) - first_row
        rows = torch.repeat_interleave(starts, kept) + token_pos
        gathered = []
        for store in self._states:
            out = torch.zeros(len(indices), length, self.hidden, dtype=torch.float32)
            out[batch_pos, token_pos] = _read_rows(store, rows, self.dtype).float()
            gathered.append(out)
        return gathered


# ---------------------------------------------------------------- sizing and the cache decision


def estimate_bytes(n_tokens: int, n_states: int, hidden: int, dtype: "torch.dtype | None" = None) -> int:
    """Bytes a cache of `n_tokens` tokens × `n_states` states × `hidden` takes (fp16 by default)."""
    import torch

    itemsize = torch.empty((), dtype=torch.float16 if dtype is None else dtype).element_size()
    return int(n_tokens) * int(n_states) * int(hidden) * itemsize


def default_budget_bytes() -> int:
    """The default memory budget of a cache: a quarter of the machine's RAM, at most 8 GiB."""
    import psutil

    return min(psutil.virtual_memory().total // 4, MAX_DEFAULT_BUDGET)


def decide_cache(mode: str, n_bytes: int, budget_bytes: int | None = None, folder: str | Path | None = None,
                 free_bytes: int | None = None, processes: int = 1) -> str | None:
    """Where to keep a cache of `n_bytes`: "memory", "disk" or None (no cache).

    - `off`: None.
    - `auto`: memory within `budget_bytes` (default `default_budget_bytes()`); else disk when
      `folder` is given and the cache takes at most half its free space (checkpoints and outputs
      need the rest); else None — training still works, just recomputing the backbone.
    - `on`: as auto, but `BadInput` instead of None.

    `free_bytes`: this process's share of the free space under `folder` (default: all of it);
    `processes` > 1 says, in the refusal, that the budget and the disk are shares (`cache_limits`).
    """
    if mode not in ("auto", "on", "off"):
        raise BadParameter("{cache_features} must be auto, on or off, got {value!r}", mode)
    if mode == "off":
        return None
    budget = default_budget_bytes() if budget_bytes is None else budget_bytes
    if n_bytes <= budget:
        return "memory"
    free = 0 if folder is None else free_bytes if free_bytes is not None else _free_disk_bytes(Path(folder))
    if n_bytes <= free // 2:
        return "disk"
    if mode == "on":
        shares = f" per process, {processes} processes" if processes > 1 else ""
        raise BadParameter(
            "{cache_features:{value}}: the cache needs {need:.2f} GiB, over the memory budget "
            "({budget:.2f} GiB" + shares + ") and half the free disk ({free:.2f} GiB free"
            + (" under {folder}" if folder is not None else "") + shares + "); raise {cache_budget}, free disk space, "
            "or use {cache_features:auto}", mode, need=n_bytes / GiB, budget=budget / GiB, free=free / GiB,
            folder=folder,
        )
    return None


FAKE_FREE_DISK = "KADAPTER_TEST_FREE_DISK"  # tests only: "RANK:BYTES[,RANK:BYTES]", the free disk a rank sees


def _free_disk_bytes(folder: Path) -> int:
    fake = dict(item.split(":") for item in os.environ.get(FAKE_FREE_DISK, "").split(",") if ":" in item)
    if str(process_index()) in fake:
        return int(fake[str(process_index())])
    probe = folder
    while not probe.exists() and probe != probe.parent:  # the cache folder may not exist yet
        probe = probe.parent
    return shutil.disk_usage(probe).free


def local_process_count() -> int:
    """The processes of this run on this machine (`LOCAL_WORLD_SIZE`, as the launchers set it)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cache_limits(budget_gib: float | None, folder: Path) -> tuple[int, int | None, int]:
    """`(budget bytes, free disk bytes, processes)`: what one process's cache may take, the same
    answer in every process of the run.

    The memory budget (`budget_gib`, or the default a share of this machine's RAM) is a machine's:
    its processes share it. A process's share of the free disk under `folder` (its disk cache's
    place) is that space divided by the processes whose caches go on the same disk: every process
    that sees the main process's `folder` (the main process's machine, and others where the output
    folder is on a shared file system) or, where a machine writes to a folder of its own, that
    machine's processes. Under several processes each one's shares are gathered and all take the
    smallest, so they all decide alike (`decide_cache`): one process that cached while another did
    not would hold a model of another shape, and their first collective would never match.
    """
    budget = default_budget_bytes() if budget_gib is None else int(budget_gib * GiB)
    local = local_process_count()
    if process_count() == 1 or not _distributed():
        return budget // local, _free_disk_bytes(folder) // local, local
    import socket

    import torch.distributed as dist

    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)  # removed with the run's scratch when the artifact is written
    dist.barrier()
    mine = {"budget": budget // local, "free": _free_disk_bytes(folder), "sees_main": folder.is_dir(),
            "host": socket.gethostname()}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    beside_main = sum(1 for r in everyone if r["sees_main"])

    def sharing(row: dict) -> int:
        return beside_main if row["sees_main"] else sum(1 for r in everyone if not r["sees_main"] and r["host"] == row["host"])

    return (min(r["budget"] for r in everyone), min(r["free"] // sharing(r) for r in everyone), len(everyone))


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


# ---------------------------------------------------------------- storage


def _numpy_dtypes() -> dict:
    import numpy as np
    import torch

    # numpy has no bfloat16: its bits are kept as int16 and viewed back as bfloat16 on reading.
    return {torch.float16: np.float16, torch.float32: np.float32, torch.bfloat16: np.int16}


def _allocate(total: int, hidden: int, dtype: "torch.dtype", storage: str, folder: Path | None, k: int):
    import numpy as np
    import torch

    if storage == "memory":
        return torch.empty(total, hidden, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(folder / f"state-{k}.npy", mode="w+", dtype=_numpy_dtypes()[dtype],
                                     shape=(total, hidden))


def _write_rows(store, rows: "torch.Tensor", values: "torch.Tensor") -> None:
    import torch

    if isinstance(store, torch.Tensor):
        store[rows] = values
    else:
        store[rows.numpy()] = (values.view(torch.int16) if values.dtype == torch.bfloat16 else values).numpy()


def _read_rows(store, rows: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    import torch

    if isinstance(store, torch.Tensor):
        return store[rows]
    values = torch.from_numpy(store[rows.numpy()])
    return values.view(torch.bfloat16) if dtype == torch.bfloat16 else values


def _check_outputs(outputs: list, shape: "torch.Size", states: list) -> None:
    if not outputs:
        raise ValueError("compute returned no states")
    for k, out in enumerate(outputs):
        if out.dim() != 3 or tuple(out.shape[:2]) != tuple(shape):
            raise ValueError(f"compute returned state {k} of shape {tuple(out.shape)}; expected "
                             f"({shape[0]}, {shape[1]}, hidden)")
    if states and (len(outputs) != len(states) or any(o.shape[-1] != s.shape[1] for o, s in zip(outputs, states))):
        raise ValueError("compute returned a different number or width of states than for the first batch")


# ---------------------------------------------------------------- attaching a cache to examples


def attach_cache(
    splits: Sequence[list[dict]],
    compute: Compute,
    *,
    n_states: int,
    hidden: int,
    pad_id: int,
    batch_size: int,
    mode: str,
    budget_gib: float | None,
    folder: Path,
    names: Sequence[str] | None = None,
    pad_to: int | None = None,
) -> str | None:
    """Caches the frozen backbone's states of every example of every split, when the budget allows.

    Each example (a dict with `input_ids`) then carries `_cache` (its split's `FeatureCache`) and
    `_row`, so collate functions can gather `features` for a batch. Returns where the cache lives
    ("memory" / "disk") or None when it is off. `pad_to`: see `FeatureCache.build`. Each process of a
    multi-process run builds its own cache with `compute` on its own device; disk caches go under
    `folder/<rank>/<split>`. The memory budget (given or default) is shared by the processes of one
    machine, the free disk by the processes that write to it, and every process takes the same
    decision (`cache_limits`).
    `names` name the splits in the progress bars.
    """
    if mode == "off":
        return None
    n_tokens = sum(len(ex["input_ids"]) if pad_to is None else pad_to for split in splits for ex in split)
    budget, free, processes = cache_limits(budget_gib, folder)
    storage = decide_cache(mode, estimate_bytes(n_tokens, n_states, hidden), budget, folder, free, processes)
    if storage is None:
        return None
    rank = str(process_index())
    for i, examples in enumerate(splits):
        if not examples:
            continue
        cache = FeatureCache.build(compute, [ex["input_ids"] for ex in examples], pad_id=pad_id,
                                   batch_size=batch_size, storage=storage,
                                   folder=folder / rank / str(i) if storage == "disk" else None, pad_to=pad_to,
                                   description=f"caching features ({names[i]})" if names else "caching features")
        for row, ex in enumerate(examples):
            ex["_cache"], ex["_row"] = cache, row
    return storage


FEATURE_CACHE_DIR = "feature-cache"  # under a training run's folder; removed when the artifact is written


class ReadsFrozenBackbone(Protocol):
    """A model that reads a frozen backbone's states (`AdapterPretrainer`, `KAdapterModel`)."""

    backbone: "nn.Module"
    tap_layers: list[int]
    attends_to_padding: bool
    hidden: int


def attach_backbone_cache(model: ReadsFrozenBackbone, splits: Mapping[str, list[dict]], pad_id: int,
                          config: "TrainConfig", run_dir: Path, device: "torch.device", mode: str = "auto",
                          budget_gib: float | None = None, pad_to: int | None = None) -> str | None:
    """Caches what `model` reads from its frozen backbone — the states at its taps and the last one,
    computed by `backbone_states` as the model computes them — for every example of `splits` (by name),
    on this process's `device`, when the budget allows (`attach_cache`); pretraining and fine-tuning
    attach it alike. An example with candidates gets one cache row per candidate (`_row` is then
    their list, in candidate order). Returns where the cache lives, or None.
    """
    from kadapter_cli.modeling.backbone import backbone_states

    names = list(splits)
    examples = list(splits.values())
    sequences = [[{"input_ids": seq} for ex in split for seq in ex["input_ids"]]
                 if split and is_choices(split[0]["input_ids"]) else split for split in examples]
    if mode != "off":
        model.backbone.to(device)

    def compute(input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> list["torch.Tensor"]:
        tapped, last = backbone_states(model.backbone, input_ids.to(device), attention_mask.to(device),
                                       model.tap_layers, model.attends_to_padding)
        return [*tapped, last]

    storage = attach_cache(sequences, compute, n_states=len(model.tap_layers) + 1, hidden=model.hidden, pad_id=pad_id,
                           batch_size=max(config.forward_batch_size, 32), mode=mode, budget_gib=budget_gib,
                           folder=run_dir / FEATURE_CACHE_DIR, pad_to=pad_to, names=names)
    for split, seqs in zip(examples, sequences):
        if storage is None or seqs is split:
            continue
        rows = iter(seqs)
        for ex in split:
            candidates = [next(rows) for _ in ex["input_ids"]]
            ex["_cache"], ex["_row"] = candidates[0]["_cache"], [c["_row"] for c in candidates]
    return storage
