"""The frozen-backbone feature cache: what it gives back must be what the backbone computes."""

from __future__ import annotations

import json
import random
import shutil
from collections import namedtuple

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.training.feature_cache import FeatureCache, GiB, decide_cache, default_budget_bytes, estimate_bytes

PAD = 1


class ToyEncoder(torch.nn.Module):
    """A masked self-attention layer: its states at real tokens do not depend on padding."""

    def __init__(self, vocab: int = 50, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.attention = torch.nn.MultiheadAttention(hidden, 2, batch_first=True)
        self.calls: list[tuple[int, int, bool]] = []

    def forward(self, input_ids, attention_mask):
        self.calls.append((*input_ids.shape, torch.is_inference_mode_enabled()))
        x = self.embed(input_ids)
        attended, _ = self.attention(x, x, x, key_padding_mask=attention_mask == 0)
        return [x, x + attended]


def _examples(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, 50) for _ in range(rng.randint(1, 12))] for _ in range(n)]


def _direct(encoder, ids: list[int]) -> list[torch.Tensor]:
    with torch.no_grad():
        return encoder(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_gathered_states_equal_direct_computation(tmp_path, storage):
    encoder, examples = ToyEncoder(), _examples(40)
    cache = FeatureCache.build(encoder, examples, pad_id=PAD, batch_size=7, storage=storage,
                               folder=tmp_path / "cache" if storage == "disk" else None)
    assert (len(cache), cache.n_states, cache.hidden) == (40, 2, 8)
    picked = [5, 0, 31, 5]
    length = max(len(examples[i]) for i in picked)
    gathered = cache.gather(picked, length)
    assert [tuple(g.shape) for g in gathered] == [(4, length, 8)] * 2
    assert all(g.dtype == torch.float32 for g in gathered)
    for row, i in enumerate(picked):
        n = len(examples[i])
        for state, expected in zip(gathered, _direct(encoder, examples[i])):
            torch.testing.assert_close(state[row, :n], expected[0], atol=2e-3, rtol=1e-3)  # fp16 storage
            assert torch.count_nonzero(state[row, n:]) == 0  # zero padding past the example


def test_memory_and_disk_caches_hold_the_same_values(tmp_path):
    examples = _examples(25)
    memory = FeatureCache.build(ToyEncoder(), examples, pad_id=PAD, batch_size=4, storage="memory")
    disk = FeatureCache.build(ToyEncoder(), examples, pad_id=PAD, batch_size=9, storage="disk", folder=tmp_path / "c")
    indices = list(range(25))
    for a, b in zip(memory.gather(indices, 12), disk.gather(indices, 12)):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["cache.json", "state-0.npy", "state-1.npy"]
    described = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert described["examples"] == 25 and described["tokens"] == sum(map(len, examples))
    assert described["dtype"] == "float16"
    # The disk files hold the unpadded tokens only: total_tokens × hidden × 2 bytes (+ a small header).
    size = (tmp_path / "c" / "state-0.npy").stat().st_size
    assert 0 <= size - described["tokens"] * 8 * 2 <= 256


def test_backbone_runs_once_per_example_in_length_sorted_batches_without_grad():
    encoder, examples = ToyEncoder(), _examples(30)
    FeatureCache.build(encoder, examples, pad_id=PAD, batch_size=8, storage="memory")
    assert sum(b for b, _, _ in encoder.calls) == 30
    assert all(inference for _, _, inference in encoder.calls)
    widths = [width for _, width, _ in encoder.calls]
    assert widths == sorted(widths)  # sorted by length: each batch pads only to its own longest
    assert widths[-1] == max(map(len, examples))


def test_gather_cuts_examples_longer_than_the_requested_length():
    encoder, examples = ToyEncoder(), [[3, 4, 5, 6, 7], [8, 9]]
    cache = FeatureCache.build(encoder, examples, pad_id=PAD, batch_size=2, storage="memory")
    first = cache.gather([0, 1], 3)[0]
    torch.testing.assert_close(first[0], _direct(encoder, examples[0])[0][0, :3], atol=2e-3, rtol=1e-3)
    assert cache.length(0) == 5 and cache.length(1) == 2


def test_bfloat16_disk_cache_round_trips(tmp_path):
    encoder, examples = ToyEncoder(), _examples(10)
    cache = FeatureCache.build(encoder, examples, pad_id=PAD, batch_size=3, storage="disk", folder=tmp_path,
                               dtype=torch.bfloat16)
    got = cache.gather([2], len(examples[2]))[1][0]
    expected = _direct(encoder, examples[2])[1][0]
    assert torch.equal(got, expected.to(torch.bfloat16).float())


def test_compute_returning_the_wrong_shape_is_a_clear_error():
    def flat(ids, mask):
        return [torch.zeros(ids.shape[0], 4)]

    with pytest.raises(ValueError, match=r"state 0 of shape \(2, 4\); expected \(2, 3, hidden\)"):
        FeatureCache.build(flat, [[2, 3, 4], [5]], pad_id=PAD, batch_size=2)


def test_estimate_bytes_counts_every_state_and_token():
    assert estimate_bytes(1000, 4, 1024) == 1000 * 4 * 1024 * 2  # fp16 by default
    assert estimate_bytes(1000, 4, 1024, torch.float32) == 1000 * 4 * 1024 * 4


def test_default_budget_is_a_quarter_of_ram_at_most_8_gib():
    import psutil

    assert default_budget_bytes() == min(psutil.virtual_memory().total // 4, 8 * GiB)


def _disk_with_free(monkeypatch, free: int) -> None:
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(free * 4, free * 3, free))


def test_decide_cache_prefers_memory_then_disk_then_nothing(tmp_path, monkeypatch):
    _disk_with_free(monkeypatch, 100 * GiB)
    assert decide_cache("auto", 1 * GiB, 2 * GiB, tmp_path) == "memory"
    assert decide_cache("auto", 3 * GiB, 2 * GiB, tmp_path / "not-yet" / "made") == "disk"
    assert decide_cache("auto", 60 * GiB, 2 * GiB, tmp_path) is None  # more than half the free disk
    assert decide_cache("auto", 3 * GiB, 2 * GiB) is None  # no folder: disk not an option
    assert decide_cache("off", 1, 2 * GiB, tmp_path) is None
    assert decide_cache("on", 3 * GiB, 2 * GiB, tmp_path) == "disk"


def test_decide_cache_on_refuses_when_nothing_fits(tmp_path, monkeypatch):
    _disk_with_free(monkeypatch, 10 * GiB)
    with pytest.raises(BadInput, match=r"needs 30.00 GiB, over the memory budget \(2.00 GiB\).*raise cache_budget"):
        decide_cache("on", 30 * GiB, 2 * GiB, tmp_path)
    with pytest.raises(BadInput, match="cache_features must be auto, on or off"):
        decide_cache("always", 1, 2 * GiB, tmp_path)
