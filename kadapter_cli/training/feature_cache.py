"""A cache of the frozen backbone's tapped hidden states, computed once and reused every epoch.

When the backbone is frozen (adapter pretraining), its hidden states for an example never change,
yet a plain loop recomputes them every epoch — for RoBERTa-large that is most of the compute. The
cache runs the backbone once over all examples (length-sorted batches, `inference_mode`) and keeps
each example's states unpadded, one `(total_tokens, hidden)` array per state plus row offsets:

- `device`: torch tensors in the training device's memory (a CUDA GPU), when the cache takes at
  most `DEVICE_CACHE_SHARE` of its free memory: a batch is gathered on the device, nothing crosses
  the bus in the hot loop;
- `memory`: torch tensors in RAM;
- `disk`: `.npy` files in a folder, memory-mapped (the OS pages in what a batch needs).

A `memory` or `disk` cache feeding a CUDA device is `pinned`: a batch's rows are gathered in the
cache's dtype (fp16, not new fp32 tensors) into pinned host memory, which the loop copies to the
device without blocking, from a background thread (`loop._Feeder`).

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
from kadapter_cli.training.config import CACHE_MODES

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kadapter_cli.training.config import TrainConfig

Compute = Callable[["torch.Tensor", "torch.Tensor"], Sequence["torch.Tensor"]]

GiB = 2**30
MAX_DEFAULT_BUDGET = 8 * GiB
# A cache is kept on the device when it takes at most this share of the device's free memory (read
# once the backbone is loaded): the rest is for the steps' activations, AdamW's state and the
# allocator's fragmentation.
DEVICE_CACHE_SHARE = 0.5


class FeatureCache:
    """Per-example hidden states of a fixed encoder; build with `FeatureCache.build`."""

    def __init__(self, states: list, offsets: "torch.Tensor", dtype: "torch.dtype", storage: str,
                 folder: Path | None = None):
        self._states = states  # per state: torch tensor (memory, device) or numpy memmap (disk), (total_tokens, hidden)
        self._offsets = offsets  # (n_examples + 1,) int64: example i owns rows offsets[i]:offsets[i+1]
        self.dtype = dtype
        self.storage = storage
        self.folder = folder
        # Feeding a CUDA device from the host: `gather` gives the cache's dtype in pinned memory.
        self.pinned = False

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
        device: "torch.device | None" = None,
        shard: tuple[int, int] = (0, 1),
    ) -> "FeatureCache":
        """Runs `compute(input_ids (B, L), attention_mask (B, L)) -> [states (B, L, H), ...]` over
        every example once and stores the states of its real tokens — or, with `pad_to`, of all
        `pad_to` positions of the example padded to that length.

        Batches are sorted by length (little padding). `storage="disk"` writes into `folder`; two
        processes building at once need different folders. `storage="device"` keeps the states on
        `device`. `shard=(rank, processes)` (memory and device storage, under an initialised
        process group): each process computes every `processes`-th batch and the processes then sum
        their zero-filled stores (`all_reduce`), so every one holds the whole cache for a
        `processes`-th of the backbone passes — each row is written by one process, and x + 0 is x.
        """
        import torch

        dtype = torch.float16 if dtype is None else dtype
        if storage not in ("memory", "disk", "device"):
            raise ValueError(f"storage must be 'memory', 'disk' or 'device', got {storage!r}")
        if storage == "device" and device is None:
            raise ValueError("a device cache needs a device")
        rank, processes = shard
        if processes > 1 and storage == "disk":
            raise ValueError("a disk cache is built whole by each process")
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
        batches = sequential_batches(lengths, batch_size)[rank::processes]
        where = device if storage == "device" else None
        with progress() as bar:
            task = bar.add_task(description, total=sum(len(b) for b in batches), unit="examples")
            for indices in batches:
                ids, mask = pad_ids([examples_input_ids[i] for i in indices], pad_id, pad_to)
                with torch.inference_mode():
                    outputs = list(compute(ids, mask))
                _check_outputs(outputs, ids.shape, states)
                if not states:
                    states = [_allocate(total, out.shape[-1], dtype, storage, folder, k, where, zeroed=processes > 1)
                              for k, out in enumerate(outputs)]
                rows = torch.cat([torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in indices])
                kept = mask if pad_to is None else torch.ones_like(mask)
                real = kept.bool().to(outputs[0].device)
                for store, out in zip(states, outputs):
                    # Row-major over (example, position): the same order as `rows`.
                    _write_rows(store, rows, out[real].to(where or "cpu", dtype))
                bar.advance(task, len(indices))
        if processes > 1:
            states = _sum_shards(states, total, dtype, storage, where)
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
        (and cut to `length` if an example is longer). A `device` cache gathers on its device; a
        `pinned` one gives the cache's dtype in pinned host memory (the consumer casts on the device)."""
        import torch

        starts = self._offsets[list(indices)]
        kept = torch.clamp(self._offsets[[i + 1 for i in indices]] - starts, max=length)
        batch_pos = torch.repeat_interleave(torch.arange(len(indices)), kept)
        # Position of each kept row inside its example: 0, 1, ... restarting at every example.
        first_row = torch.repeat_interleave(torch.cumsum(kept, 0) - kept, kept)
        token_pos = torch.arange(int(kept.sum())) - first_row
        rows = torch.repeat_interleave(starts, kept) + token_pos
        if self.storage == "device":
            device = self._states[0].device
            batch_pos, token_pos, rows = (t.to(device, non_blocking=True) for t in (batch_pos, token_pos, rows))
            gathered = []
            for store in self._states:
                out = torch.zeros(len(indices), length, self.hidden, dtype=torch.float32, device=device)
                out[batch_pos, token_pos] = store[rows].float()
                gathered.append(out)
            return gathered
        gathered = []
        for store in self._states:
            if self.pinned:
                out = _pinned_zeros((len(indices), length, self.hidden), self.dtype)
                out[batch_pos, token_pos] = _read_rows(store, rows, self.dtype)
            else:
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
    if mode not in CACHE_MODES:
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


def fits_on_device(n_bytes: int, device: "torch.device | None") -> bool:
    """Whether a cache of `n_bytes` stays on `device`: a CUDA device whose free memory (now, the
    backbone loaded) is at least `n_bytes / DEVICE_CACHE_SHARE`. Never a CPU."""
    import torch

    if device is None or device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return n_bytes <= DEVICE_CACHE_SHARE * free


def _all_agree(flag: bool, device: "torch.device | None") -> bool:
    """`flag` where every process of an initialised process group has it (all_reduce MIN: on
    `device` under NCCL, which reduces CUDA tensors only); `flag` itself for a process started alone."""
    import torch
    import torch.distributed as dist

    if device is None or device.type != "cuda" or not (dist.is_available() and dist.is_initialized()):
        return flag
    if dist.get_world_size() == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


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


def cache_limits(budget_gib: float | None, folder: Path | None) -> tuple[int, int | None, int]:
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
        return budget // local, (_free_disk_bytes(folder) // local if folder is not None else 0), local
    import socket

    import torch.distributed as dist

    if is_main_process() and folder is not None:
        folder.mkdir(parents=True, exist_ok=True)  # removed with the run's scratch when the artifact is written
    dist.barrier()
    mine = {"budget": budget // local, "free": _free_disk_bytes(folder) if folder is not None else 0,
            "sees_main": folder is not None and folder.is_dir(),
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


def _allocate(total: int, hidden: int, dtype: "torch.dtype", storage: str, folder: Path | None, k: int,
              device: "torch.device | None" = None, zeroed: bool = False):
    import numpy as np
    import torch

    if storage in ("memory", "device"):
        return (torch.zeros if zeroed else torch.empty)(total, hidden, dtype=dtype, device=device)
    folder.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(folder / f"state-{k}.npy", mode="w+", dtype=_numpy_dtypes()[dtype],
                                     shape=(total, hidden))


def _write_rows(store, rows: "torch.Tensor", values: "torch.Tensor") -> None:
    import torch

    if isinstance(store, torch.Tensor):
        store[rows] = values
    else:
        store[rows.numpy()] = (values.view(torch.int16) if values.dtype == torch.bfloat16 else values).numpy()


def _pinned_zeros(shape: tuple[int, ...], dtype: "torch.dtype") -> "torch.Tensor":
    """Zeros in pinned (page-locked) host memory: the device copies from it without blocking.
    PyTorch's caching host allocator reuses freed pinned blocks, so this is cheap after the first steps."""
    import torch

    return torch.zeros(shape, dtype=dtype, pin_memory=True)


def _sum_shards(states: list, total: int, dtype: "torch.dtype", storage: str, device) -> list:
    """Every process's zero-filled store summed over the process group: the whole cache everywhere.
    A process that computed no batch (fewer batches than processes) has no store yet: it joins with zeros."""
    import torch
    import torch.distributed as dist

    # [number of states, hidden]: the same on every process that computed a batch.
    shape = torch.tensor([len(states), states[0].shape[1] if states else 0], dtype=torch.long, device=device)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    if not states:
        states = [_allocate(total, int(shape[1]), dtype, storage, None, k, device, zeroed=True)
                  for k in range(int(shape[0]))]
    for store in states:
        dist.all_reduce(store)
    return states


def build_shard(storage: str) -> tuple[int, int]:
    """`(rank, processes)` for `FeatureCache.build`: the processes of an initialised process group
    split the backbone passes of a device cache, and of a memory cache where they reduce over gloo
    (CPU processes); a disk cache, or a host cache under NCCL, is built whole by each process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0, 1
    if storage == "device" or (storage == "memory" and dist.get_backend() == "gloo"):
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    folder: Path | None,
    names: Sequence[str] | None = None,
    pad_to: int | None = None,
    device: "torch.device | None" = None,
) -> str | None:
    """Caches the frozen backbone's states of every example of every split, when the budget allows.

    Each example (a dict with `input_ids`) then carries `_cache` (its split's `FeatureCache`) and
    `_row`, so collate functions can gather `features` for a batch. Returns where the cache lives
    ("device" / "memory" / "disk") or None when it is off. `pad_to`: see `FeatureCache.build`.

    On a CUDA `device` a cache that fits the memory budget stays on the device when it takes at
    most `DEVICE_CACHE_SHARE` of its free memory (`fits_on_device`); a host cache feeding it is
    `pinned`. Each process of a multi-process run holds the whole cache, its backbone passes split
    over the processes where they can sum their stores (`build_shard`); disk caches go under
    `folder/<rank>/<split>`. The memory budget (given or default) is shared by the processes of one
    machine, the free disk by the processes that write to it, and every process takes the same
    decision (`cache_limits`).
    `names` name the splits in the progress bars.
    """
    if mode == "off":
        return None
    n_tokens = sum(len(ex["input_ids"]) if pad_to is None else pad_to for split in splits for ex in split)
    budget, free, processes = cache_limits(budget_gib, folder)
    n_bytes = estimate_bytes(n_tokens, n_states, hidden)
    storage = decide_cache(mode, n_bytes, budget, folder, free, processes)
    # Every process must keep it in the same place (a device cache's build is split over them).
    if _all_agree(storage == "memory" and fits_on_device(n_bytes, device), device):
        storage = "device"
    if storage is None:
        return None
    rank = str(process_index())
    shard = build_shard(storage)
    for i, examples in enumerate(splits):
        if not examples:
            continue
        cache = FeatureCache.build(compute, [ex["input_ids"] for ex in examples], pad_id=pad_id,
                                   batch_size=batch_size, storage=storage,
                                   folder=folder / rank / str(i) if storage == "disk" else None, pad_to=pad_to,
                                   description=f"caching features ({names[i]})" if names else "caching features",
                                   device=device, shard=shard)
        cache.pinned = storage != "device" and device is not None and device.type == "cuda"
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
    from kadapter_cli.training.setup import autocast, resolve_precision

    names = list(splits)
    examples = list(splits.values())
    sequences = [[{"input_ids": seq} for ex in split for seq in ex["input_ids"]]
                 if split and is_choices(split[0]["input_ids"]) else split for split in examples]
    if mode != "off":
        model.backbone.to(device)

    # Under the autocast training runs in: the cached states are the ones the backbone would give there.
    precision = resolve_precision(config.precision, device.type)

    def compute(input_ids: "torch.Tensor", attention_mask: "torch.Tensor") -> list["torch.Tensor"]:
        with autocast(precision, device):
            tapped, last = backbone_states(model.backbone, input_ids.to(device), attention_mask.to(device),
                                           model.tap_layers, model.attends_to_padding)
        return [*tapped, last]

    storage = attach_cache(sequences, compute, n_states=len(model.tap_layers) + 1, hidden=model.hidden, pad_id=pad_id,
                           batch_size=max(config.forward_batch_size, 32), mode=mode, budget_gib=budget_gib,
                           folder=run_dir / FEATURE_CACHE_DIR, pad_to=pad_to, names=names, device=device)
    for split, seqs in zip(examples, sequences):
        if storage is None or seqs is split:
            continue
        rows = iter(seqs)
        for ex in split:
            candidates = [next(rows) for _ in ex["input_ids"]]
            ex["_cache"], ex["_row"] = candidates[0]["_cache"], [c["_row"] for c in candidates]
    return storage
