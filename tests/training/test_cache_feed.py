"""How the feature cache feeds a CUDA device: kept on the device when it fits a stated share of the
free device memory (gathered there), else gathered in fp16 into pinned host memory on a background
thread and copied without blocking; its build split over the processes of a run.

No GPU here: the device is stood in for by the CPU (`storage="device"` on a CPU tensor), and CUDA's
memory query and pinned allocation by recording stand-ins."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from helpers.launching import free_port

from kadapter_cli.processes import end_processes
from kadapter_cli.training import feature_cache
from kadapter_cli.training.feature_cache import DEVICE_CACHE_SHARE, FeatureCache, attach_cache, fits_on_device

IDS = [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5], [3], [4, 4, 4, 4], [7, 7]]
HIDDEN = 3


def compute(input_ids, attention_mask):
    """Deterministic 'states' of the ids: two states of width 3."""
    base = input_ids.float().unsqueeze(-1) * torch.tensor([1.0, 0.5, -0.25])
    return [base, base + attention_mask.unsqueeze(-1)]


def test_a_cache_is_kept_on_a_cuda_device_only_within_the_stated_share_of_its_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    cuda = torch.device("cuda")
    assert DEVICE_CACHE_SHARE == 0.5
    assert fits_on_device(500, cuda) and not fits_on_device(501, cuda)
    assert not fits_on_device(1, torch.device("cpu")) and not fits_on_device(1, None)


def _recorded_builds(monkeypatch) -> list[dict]:
    builds: list[dict] = []
    build = FeatureCache.build.__func__

    def recording(cls, compute, ids, **kwargs):
        builds.append(kwargs)
        kwargs = {**kwargs, "device": torch.device("cpu")}  # the CPU stands in for the CUDA device
        return build(cls, compute, ids, **kwargs)

    monkeypatch.setattr(FeatureCache, "build", classmethod(recording))
    monkeypatch.setattr(feature_cache, "_pinned_zeros", lambda shape, dtype: torch.zeros(shape, dtype=dtype))
    return builds


@pytest.mark.parametrize("free, storage, pinned", [(10**9, "device", False), (10, "memory", True)])
def test_attach_keeps_it_on_the_device_when_it_fits_else_pinned_in_host_memory(monkeypatch, tmp_path, free, storage,
                                                                               pinned):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 8 * free))
    builds = _recorded_builds(monkeypatch)
    examples = [{"input_ids": ids} for ids in IDS]
    got = attach_cache([examples], compute, n_states=2, hidden=HIDDEN, pad_id=0, batch_size=2, mode="auto",
                       budget_gib=1.0, folder=tmp_path, device=torch.device("cuda"))
    assert got == storage and builds[0]["storage"] == storage
    assert examples[0]["_cache"].pinned is pinned


def test_a_cpu_run_keeps_its_cache_in_memory_unpinned(tmp_path):
    examples = [{"input_ids": ids} for ids in IDS]
    assert attach_cache([examples], compute, n_states=2, hidden=HIDDEN, pad_id=0, batch_size=2, mode="auto",
                        budget_gib=1.0, folder=tmp_path, device=torch.device("cpu")) == "memory"
    assert examples[0]["_cache"].pinned is False


def test_a_device_cache_and_a_pinned_one_gather_what_the_host_cache_gathers(monkeypatch):
    monkeypatch.setattr(feature_cache, "_pinned_zeros", lambda shape, dtype: torch.zeros(shape, dtype=dtype))
    host = FeatureCache.build(compute, IDS, pad_id=0, batch_size=2)
    on_device = FeatureCache.build(compute, IDS, pad_id=0, batch_size=2, storage="device", device=torch.device("cpu"))
    pinned = FeatureCache.build(compute, IDS, pad_id=0, batch_size=2)
    pinned.pinned = True
    for indices, length in (([2, 0, 5], 5), ([1, 3], 2), ([4], 3)):
        expected = host.gather(indices, length)
        for got in on_device.gather(indices, length):
            assert got.dtype == torch.float32
        assert all(torch.equal(a, b) for a, b in zip(on_device.gather(indices, length), expected))
        rows = pinned.gather(indices, length)
        assert all(r.dtype == torch.float16 for r in rows)  # fp16 rows cross the bus, cast on the device
        assert all(torch.equal(a.float(), b) for a, b in zip(rows, expected))


def test_the_pretrainer_computes_from_fp16_features_in_its_own_dtype():
    from benchmarks.workloads import BenchShape, adapter_config, adapter_pretrainer, build_backbone, fac_examples
    from kadapter_cli.training.objectives import RelationObjective

    shape = BenchShape(layers=2, hidden=32, heads=2, ffn=64, vocab=100, max_length=16, batch_size=3)
    backbone = build_backbone(shape, 0)
    model = adapter_pretrainer(backbone, adapter_config(backbone)).eval()
    objective = RelationObjective(1, adapter_config(backbone).labels)
    batch = objective.collate(fac_examples([6, 8, 5], shape.vocab, 0))
    with torch.no_grad():
        features = model.backbone_features(batch["input_ids"], batch["attention_mask"])
        half = [f.half() for f in features]
        expected = model({**batch, "features": [h.float() for h in half]})
        assert torch.equal(model({**batch, "features": half}), expected)


# ---------------------------------------------------------------- the loop's background feeder


def test_on_cuda_the_loop_makes_batches_ahead_on_a_thread_and_the_run_is_the_same(tmp_path, monkeypatch):
    from kadapter_cli.training import loop
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.objectives import RelationObjective

    class Objective(RelationObjective):
        threads: list[str] = []

        def collate(self, examples):
            self.threads.append(threading.current_thread().name)
            return super().collate(examples)

    def run(folder, prefetch: bool):
        from benchmarks.workloads import BenchShape, adapter_config, adapter_pretrainer, build_backbone, fac_examples

        monkeypatch.setattr(loop._Loop, "_prefetches", lambda self: prefetch)  # as on a CUDA device
        shape = BenchShape(layers=2, hidden=32, heads=2, ffn=64, vocab=100, max_length=16, batch_size=4)
        torch.manual_seed(0)
        backbone = build_backbone(shape, 0)
        model = adapter_pretrainer(backbone, adapter_config(backbone))
        examples = fac_examples([6, 8, 5, 7, 9, 6, 5, 8, 7, 6], shape.vocab, 0)
        objective = Objective(1, adapter_config(backbone).labels)
        Objective.threads = []
        config = TrainConfig(device="cpu", epochs=2, batch_size=4, micro_batch_size=2, lr=1e-3)
        loop.train(model, objective, examples, None, config, folder)
        return {k: v.clone() for k, v in model.state_dict().items()}, list(Objective.threads)

    plain, plain_threads = run(tmp_path / "a", False)
    ahead, ahead_threads = run(tmp_path / "b", True)
    assert all(torch.equal(plain[k], ahead[k]) for k in plain)
    assert plain_threads and all(not t.startswith("kadapter-feeder") for t in plain_threads)
    assert ahead_threads and all(t.startswith("kadapter-feeder") for t in ahead_threads)


def test_objectives_that_draw_random_numbers_in_collation_are_never_made_ahead():
    from kadapter_cli.training.objectives import MaskedLMObjective, RelationObjective

    assert MaskedLMObjective.collate_draws_random is True
    assert getattr(RelationObjective, "collate_draws_random", False) is False


# ---------------------------------------------------------------- the build split over processes


def _sharded_build(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    calls = []

    def counting(ids, mask):
        calls.append(len(ids))
        return compute(ids, mask)

    shard = feature_cache.build_shard("memory")
    cache = FeatureCache.build(counting, IDS, pad_id=0, batch_size=2, shard=shard)
    torch.save({"shard": shard, "calls": calls, "states": cache._states}, f"{out}/{rank}.pt")
    end_processes()  # a barrier, then the group ended: no process tears it down while another talks


def _spawn_two(worker, out) -> None:
    """`worker(rank, 2, port, out)` in two processes joined over gloo on loopback."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2)


def test_each_process_computes_its_share_of_the_batches_and_all_hold_the_whole_cache(tmp_path):
    _spawn_two(_sharded_build, tmp_path)
    whole = FeatureCache.build(compute, IDS, pad_id=0, batch_size=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert [r["shard"] for r in results] == [(0, 2), (1, 2)]
    assert sum(len(r["calls"]) for r in results) == 3 and all(r["calls"] for r in results)  # 3 batches in all
    for r in results:
        assert all(torch.equal(a, b) for a, b in zip(r["states"], whole._states))


def _agreement(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    got = feature_cache._all_agree(rank == 0, torch.device("cuda"))  # gloo: the flags meet on the CPU
    torch.save(got, f"{out}/agree-{rank}.pt")
    end_processes()  # a barrier, then the group ended: no process tears it down while another talks


def test_processes_agree_on_keeping_the_cache_on_their_devices(tmp_path):
    _spawn_two(_agreement, tmp_path)
    # One process's device has room, the other's not: neither keeps it there (their builds would not meet).
    assert [torch.load(tmp_path / f"agree-{rank}.pt") for rank in (0, 1)] == [False, False]
