"""Length-bucketed batch orders: what training relies on for padding, resume and multi-process runs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadapter_cli.training.batching import epoch_batches, restore_order, sequential_batches, shard, step_micro_batches


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 200) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 17), bucket_size=st.integers(1, 8), seed=st.integers(0, 99))
def test_every_example_appears_exactly_once_per_epoch(n, batch_size, bucket_size, seed):
    batches = epoch_batches(_lengths(n, seed), batch_size, seed, epoch=0, bucket_size=bucket_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # Only the last batch of each pool may be short.
    assert sum(len(b) < batch_size for b in batches) <= -(-n // (batch_size * bucket_size))


def test_order_is_a_function_of_seed_and_epoch():
    lengths = _lengths(500)
    assert epoch_batches(lengths, 8, seed=42, epoch=3) == epoch_batches(list(lengths), 8, seed=42, epoch=3)
    assert epoch_batches(lengths, 8, seed=42, epoch=3) != epoch_batches(lengths, 8, seed=42, epoch=4)
    assert epoch_batches(lengths, 8, seed=42, epoch=3) != epoch_batches(lengths, 8, seed=43, epoch=3)


def test_bucketing_pads_far_less_than_random_batches():
    lengths = _lengths(2000)

    def padded_tokens(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    bucketed = padded_tokens(epoch_batches(lengths, 32, seed=1, epoch=0, bucket_size=50))
    unsorted = padded_tokens(epoch_batches(lengths, 32, seed=1, epoch=0, bucket_size=1))
    assert bucketed < 0.7 * unsorted
    # Batches of a pool hold neighbouring lengths: the spread inside a batch is small.
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
              for b in epoch_batches(lengths, 32, seed=1, epoch=0, bucket_size=50)]
    assert sorted(spread)[len(spread) // 2] <= 10


def test_batch_order_is_shuffled_not_sorted():
    lengths = list(range(1000))
    batches = epoch_batches(lengths, 10, seed=0, epoch=0, bucket_size=1000)
    first_lengths = [lengths[b[0]] for b in batches]
    assert first_lengths != sorted(first_lengths)


def test_sequential_batches_sort_by_length_and_restore_input_order():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = sequential_batches(lengths, batch_size=3)
    assert [[lengths[i] for i in b] for b in batches] == [[1, 2, 3], [3, 5, 7], [9]]
    indices = [i for b in batches for i in b]
    outputs = [f"out-{i}" for i in indices]
    assert restore_order(indices, outputs, len(lengths)) == [f"out-{i}" for i in range(len(lengths))]


def test_sequential_batches_cut_where_padding_costs_more_than_a_batch():
    lengths = [40, 10, 90, 11, 41, 10, 12]
    plain = sequential_batches(lengths, batch_size=4)
    cut = sequential_batches(lengths, batch_size=4, batch_overhead=8)
    assert [[lengths[i] for i in b] for b in plain] == [[10, 10, 11, 12], [40, 41, 90]]
    # 90 would pad 40 and 41 by 99 tokens, more than the 8 a batch costs; no batch grows past 4
    assert [[lengths[i] for i in b] for b in cut] == [[10, 10, 11, 12], [40, 41], [90]]
    assert sorted(i for b in cut for i in b) == list(range(len(lengths)))
    assert sequential_batches(lengths, batch_size=4, batch_overhead=10**6) == plain
    assert [len(b) for b in sequential_batches([5] * 9, batch_size=4, batch_overhead=0)] == [4, 4, 1]


def test_restore_order_refuses_missing_or_duplicate_outputs():
    with pytest.raises(ValueError, match="no output"):
        restore_order([0, 1], ["a", "b"], 3)
    with pytest.raises(ValueError, match="two outputs"):
        restore_order([0, 0, 1], ["a", "b", "c"], 2)


def test_evaluation_shards_do_not_repeat_batches():
    batches = [[i] for i in range(10)]
    shares = [shard(batches, rank, 3) for rank in range(3)]
    assert sorted(b[0] for s in shares for b in s) == list(range(10))
    assert shares[0][:2] == [[0], [3]] and shares[1][:2] == [[1], [4]]


def test_a_step_splits_into_every_process_and_accumulation_step_once():
    step = list(range(100, 112))  # 12 examples, 2 processes × 3 accumulation steps of 2
    shares = [step_micro_batches(step, 2, 3, rank) for rank in range(2)]
    assert [[len(ix) for ix, _ in mine] for mine in shares] == [[2, 2, 2], [2, 2, 2]]
    assert sorted(i for mine in shares for ix, _ in mine for i in ix) == step
    assert shares[0][0][0] == [100, 101] and shares[1][0][0] == [102, 103]  # consecutive parts, alternating
    assert sum(share for mine in shares for _, share in mine) == pytest.approx(1.0)


def test_a_short_last_step_gives_every_process_its_micro_batches_and_zero_weight_stand_ins():
    step = [7, 8, 9]  # 3 examples for 2 processes × 2 accumulation steps
    shares = [step_micro_batches(step, 2, 2, rank) for rank in range(2)]
    assert [len(mine) for mine in shares] == [2, 2]  # every process joins every reduction
    real = [(ix, share) for mine in shares for ix, share in mine if share > 0]
    assert sorted(i for ix, _ in real for i in ix) == step
    assert sum(share for _, share in real) == pytest.approx(1.0)
    stand_ins = [ix for mine in shares for ix, share in mine if share == 0]
    assert stand_ins == [[7]]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches([1, 2], 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="bucket_size"):
        epoch_batches([1, 2], 2, seed=0, epoch=0, bucket_size=0)
