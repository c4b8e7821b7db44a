"""Cases found by mutation testing (docs/MUTATION.md) for `attach_cache` and the cache decision:
where the cache goes (memory, disk per process and split, nothing), and the disk probed for space."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.training.feature_cache import GiB, attach_cache, decide_cache

Usage = namedtuple("Usage", "total used free")


def _splits():
    return [[{"input_ids": [2, 3, 4]}, {"input_ids": [5, 6]}], [{"input_ids": [7]}]]


def _compute(calls):
    def compute(ids, mask):
        calls.append(ids.shape[0])
        return [ids.float().unsqueeze(-1).expand(-1, -1, 4).clone()]
    return compute


def _attach(splits, calls, tmp_path, **kw):
    options = dict(n_states=1, hidden=4, pad_id=1, batch_size=8, mode="on", budget_gib=None, folder=tmp_path / "fc")
    return attach_cache(splits, _compute(calls), **{**options, **kw})


def test_off_caches_nothing_and_never_runs_the_backbone(tmp_path):
    splits, calls = _splits(), []
    assert _attach(splits, calls, tmp_path, mode="off") is None
    assert calls == [] and not any("_cache" in ex for split in splits for ex in split)


def test_within_the_budget_the_cache_is_in_memory(tmp_path):
    splits, calls = _splits(), []
    assert _attach(splits, calls, tmp_path, budget_gib=1.0) == "memory"
    assert not (tmp_path / "fc").exists() and sum(calls) == 3
    first, second = splits
    assert first[0]["_cache"] is first[1]["_cache"] is not second[0]["_cache"]  # one cache per split
    assert [ex["_row"] for ex in first] == [0, 1] and second[0]["_row"] == 0
    assert first[1]["_cache"].gather([1], 2)[0][0, :, 0].tolist() == [5.0, 6.0]


@pytest.mark.parametrize("env, rank", [({}, "0"), ({"LOCAL_RANK": "2"}, "2"), ({"RANK": "3", "LOCAL_RANK": "1"}, "3")])
def test_over_the_budget_each_process_and_split_gets_its_own_disk_folder(tmp_path, monkeypatch, env, rank):
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    splits, calls = _splits(), []
    # 6 tokens × 1 state × 4 wide × 2 bytes = 48 bytes, over a budget of 40 bytes.
    assert _attach(splits, calls, tmp_path, budget_gib=40 / GiB) == "disk"
    assert sorted(p.name for p in (tmp_path / "fc" / rank).iterdir()) == ["0", "1"]
    assert (tmp_path / "fc" / rank / "1" / "cache.json").is_file()
    assert splits[1][0]["_cache"].gather([0], 1)[0][0, 0, 0].item() == 7.0
    assert _attach(_splits(), [], tmp_path / "b", budget_gib=48 / GiB) == "memory"  # exactly the budget fits


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path, monkeypatch):
    probed = []

    def disk_usage(path):
        probed.append(path)
        return Usage(100 * GiB, 0, 100 * GiB)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    assert decide_cache("auto", 3 * GiB, 2 * GiB, tmp_path / "not-yet" / "made") == "disk"
    assert probed == [tmp_path]
    assert decide_cache("auto", 3 * GiB, 2 * GiB, tmp_path) == "disk" and probed[-1] == tmp_path


def test_an_empty_split_is_skipped_and_the_later_ones_still_cached(tmp_path):
    splits = [[{"input_ids": [2, 3]}], [], [{"input_ids": [4]}]]
    assert _attach(splits, [], tmp_path) == "memory"
    assert splits[2][0]["_cache"].gather([0], 1)[0][0, 0, 0].item() == 4.0


def test_disk_is_used_up_to_exactly_half_its_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * GiB, 0, 10 * GiB))
    assert decide_cache("auto", 5 * GiB, 1 * GiB, tmp_path) == "disk"
    assert decide_cache("auto", 5 * GiB + 1, 1 * GiB, tmp_path) is None
    assert decide_cache("auto", 1 * GiB, 1 * GiB, tmp_path) == "memory"  # exactly the budget fits in memory


def test_default_budget_is_whole_bytes(monkeypatch):
    import psutil

    from kadapter_cli.training.feature_cache import default_budget_bytes

    monkeypatch.setattr(psutil, "virtual_memory", lambda: namedtuple("Memory", "total")(4 * GiB + 3))
    assert default_budget_bytes() == GiB and isinstance(default_budget_bytes(), int)


def test_cache_on_refusal_message_in_full(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * GiB, 0, 10 * GiB))
    with pytest.raises(BadInput) as caught:
        decide_cache("on", 30 * GiB, 2 * GiB, tmp_path)
    assert str(caught.value) == (
        "cache_features=on: the cache needs 30.00 GiB, over the memory budget (2.00 GiB) and half the free "
        f"disk (10.00 GiB free under {tmp_path}); raise cache_budget, free disk space, or use cache_features=auto")
    with pytest.raises(BadInput) as caught:
        decide_cache("on", 3 * GiB, 2 * GiB)
    assert str(caught.value) == (
        "cache_features=on: the cache needs 3.00 GiB, over the memory budget (2.00 GiB) and half the free "
        "disk (0.00 GiB free); raise cache_budget, free disk space, or use cache_features=auto")


def test_disk_cache_describes_itself_in_cache_json(tmp_path):
    import json

    from kadapter_cli.training.feature_cache import FeatureCache

    def compute(ids, mask):
        return [ids.float().unsqueeze(-1).expand(-1, -1, 3).clone()] * 2

    cache = FeatureCache.build(compute, [[2, 3], [4]], pad_id=1, batch_size=4, storage="disk", folder=tmp_path)
    text = (tmp_path / "cache.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"examples": 2, "tokens": 3, "states": 2, "hidden": 3, "dtype": "float16",
                                "files": ["state-0.npy", "state-1.npy"], "padded_to": None}
    assert text.startswith('{\n  "examples": 2,') and text.endswith("}\n")
    assert (cache.storage, cache.folder) == ("disk", tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"storage": "gpu"}, "storage must be 'memory', 'disk' or 'device', got 'gpu'"),
    ({"storage": "disk"}, "a disk cache needs a folder"),
    ({"dtype": torch.int8}, "unsupported cache dtype torch.int8; use float16, bfloat16 or float32"),
])
def test_build_refusals_in_full(kwargs, message):
    from kadapter_cli.training.feature_cache import FeatureCache

    with pytest.raises(ValueError) as caught:
        FeatureCache.build(lambda ids, mask: [], [[2]], pad_id=1, batch_size=1, **kwargs)
    assert str(caught.value) == message
    with pytest.raises(ValueError) as caught:
        FeatureCache.build(lambda ids, mask: [], [], pad_id=1, batch_size=1)
    assert str(caught.value) == "no examples to cache"
    with pytest.raises(ValueError) as caught:
        FeatureCache.build(lambda ids, mask: [], [[2], [], []], pad_id=1, batch_size=1)
    assert str(caught.value) == "example 1 has no tokens"


# -- what `FeatureCache.build` refuses from `compute`, and the bar it shows

def _build(compute, ids=([2, 3, 4], [5, 6], [7]), batch_size=2):
    from kadapter_cli.training.feature_cache import FeatureCache

    return FeatureCache.build(compute, [list(x) for x in ids], pad_id=1, batch_size=batch_size)


def _states(ids, width=4):
    return ids.float().unsqueeze(-1).expand(-1, -1, width).clone()


@pytest.mark.parametrize("returned, message", [
    (lambda ids: [], "compute returned no states"),
    (lambda ids: [_states(ids), _states(ids)[:, :, 0]],
     "compute returned state 1 of shape ({b}, {l}); expected ({b}, {l}, hidden)"),
    (lambda ids: [_states(ids)[:, :-1]], "compute returned state 0 of shape ({b}, {l1}, 4); expected ({b}, {l}, hidden)"),
    (lambda ids: [_states(ids)[:1]], "compute returned state 0 of shape (1, {l}, 4); expected ({b}, {l}, hidden)"),
])
def test_build_refuses_states_of_the_wrong_shape_naming_it(returned, message):
    shapes = []

    def compute(ids, mask):
        shapes.append(tuple(ids.shape))
        return returned(ids)

    with pytest.raises(ValueError) as caught:
        _build(compute)
    b, l = shapes[0]
    assert str(caught.value) == message.format(b=b, l=l, l1=l - 1)


@pytest.mark.parametrize("later", [
    lambda ids: [_states(ids), _states(ids)],  # one state more than for the first batch
    lambda ids: [_states(ids, width=5)],  # another width
])
def test_build_refuses_later_batches_that_differ_from_the_first(later):
    calls = []

    def compute(ids, mask):
        calls.append(1)
        return [_states(ids)] if len(calls) == 1 else later(ids)

    with pytest.raises(ValueError) as caught:
        _build(compute)
    assert str(caught.value) == "compute returned a different number or width of states than for the first batch"
    # The same states in every batch are accepted (two batches of the three examples).
    assert len(_build(lambda ids, mask: [_states(ids), _states(ids, width=5)])) == 3


def test_building_shows_a_bar_of_the_examples_cached_on_a_terminal(monkeypatch):
    import io
    import re

    from rich.console import Console

    import kadapter_cli.progress

    screen = io.StringIO()
    monkeypatch.setenv("KADAPTER_PROGRESS", "1")
    monkeypatch.setattr(kadapter_cli.progress, "console", Console(file=screen, force_terminal=True, width=200))
    _build(lambda ids, mask: [_states(ids)])
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert re.search(r"caching features [━╺╸ ]+ 3/3 ([\d,.]+|–) examples/s", plain), plain


def test_build_refuses_an_example_longer_than_pad_to_naming_the_first():
    from kadapter_cli.training.feature_cache import FeatureCache

    examples = [[2, 3, 4], [5, 6, 7, 8, 9], [2], [3, 4, 5, 6, 7]]
    with pytest.raises(ValueError) as caught:
        FeatureCache.build(lambda ids, mask: [_states(ids)], examples, pad_id=1, batch_size=2, pad_to=4)
    assert str(caught.value) == "example 1 has 5 tokens, over pad_to=4"
    # As long as pad_to is fine: every example is stored padded to it (pad id 1 here).
    cache = FeatureCache.build(lambda ids, mask: [_states(ids)], examples, pad_id=1, batch_size=2, pad_to=5)
    assert cache.gather([2], 5)[0][0, :, 0].tolist() == [2.0, 1.0, 1.0, 1.0, 1.0]


def test_attach_with_pad_to_budgets_and_stores_every_example_padded(tmp_path):
    splits, calls = _splits(), []
    # Padded to 5: 3 examples × 5 positions × 4 wide × 2 bytes = 120 bytes, over a budget of 100
    # that the 6 real tokens (48 bytes) would fit.
    assert _attach(splits, calls, tmp_path, budget_gib=100 / GiB, pad_to=5) == "disk"
    splits = _splits()
    assert _attach(splits, calls, tmp_path, budget_gib=120 / GiB, pad_to=5) == "memory"
    second = splits[0][1]  # input ids [5, 6]
    assert second["_cache"].gather([second["_row"]], 5)[0][0, :, 0].tolist() == [5.0, 6.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("local_processes, storage", [(None, "memory"), ("1", "memory"), ("2", "disk")])
def test_the_default_memory_budget_is_shared_by_the_processes_of_a_machine(tmp_path, monkeypatch, local_processes,
                                                                          storage):
    import kadapter_cli.training.feature_cache

    monkeypatch.setattr(kadapter_cli.training.feature_cache, "default_budget_bytes", lambda: 80)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    # 48 bytes: within 80, not within 80 // 2.
    assert _attach(_splits(), [], tmp_path, budget_gib=None) == storage


def test_decide_cache_without_a_budget_uses_the_default_one(monkeypatch):
    import kadapter_cli.training.feature_cache

    monkeypatch.setattr(kadapter_cli.training.feature_cache, "default_budget_bytes", lambda: 80)
    assert decide_cache("auto", 80) == "memory"
    assert decide_cache("auto", 81) is None


@pytest.mark.parametrize("names, labels", [(["train", "dev"], ["caching features (train)", "caching features (dev)"]),
                                           (None, ["caching features", "caching features"])])
def test_each_split_s_bar_is_labelled_with_its_name(tmp_path, monkeypatch, names, labels):
    import rich.progress

    started = []
    add_task = rich.progress.Progress.add_task

    def recording(self, description, **fields):
        started.append(description)
        return add_task(self, description, **fields)

    monkeypatch.setattr(rich.progress.Progress, "add_task", recording)
    _attach(_splits(), [], tmp_path, budget_gib=1.0, names=names)
    assert started == labels
