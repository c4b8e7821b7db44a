"""The frozen-backbone feature cache: what it gives back must be what the backbone computes."""

from __future__ import annotations

import json
import random
import shutil
from collections import namedtuple

import pytest
import torch

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.backbone import load_backbone, load_tokenizer
from kadapter_cli.stages.finetune import build_task_model, encode_split
from kadapter_cli.tasks import get_task
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.feature_cache import (
    FeatureCache,
    GiB,
    attach_cache,
    decide_cache,
    default_budget_bytes,
    estimate_bytes,
)
from kadapter_cli.training.loop import train
from kadapter_cli.training.objectives import TaskObjective

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


# ---------------------------------------------------------------- The feature cache gives every example its own states, seen from where they are used:
# examples with the cache attached collate into batches whose features are those examples' backbone
# states, and training with the cache follows the run without it (library and `--cache-features`).
#
# The cache stores fp16, so "equal" is up to fp16 rounding; an example given another example's
# states is off by the size of the states themselves, hundreds of times more.

FP16 = {"atol": 3e-3, "rtol": 2e-3}


def _task_setup(tiny_backbone, shared_data, n: int = 24):
    task = get_task("openentity")
    path = shared_data / "openentity" / "ernie-format" / "train.json"
    records = task.read(path)[:n]
    tokenizer = load_tokenizer(str(tiny_backbone))
    labels = list(task.label_set(records, path.parent, "benchmark").labels)  # OpenEntity's 9, as `finetune` takes
    examples = encode_split(task, tokenizer, records, labels, 48, path, "encoding")
    assert len({len(e["input_ids"]) for e in examples}) > 3  # lengths differ: batches are padded
    return task, labels, examples, tokenizer.pad_token_id


def _frozen_model(task, labels, tiny_backbone, seed: int = 0):
    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
    from kadapter_cli.modeling.backbone import backbone_shape

    backbone = load_backbone(str(tiny_backbone))
    torch.manual_seed(seed)
    # Projection init std 0.2 (not the default 0.0002): the adapter's output then matters to the loss.
    adapter = KnowledgeAdapter(AdapterConfig.for_backbone(backbone_shape(backbone), "fac", init_std=0.2))
    model = build_task_model(task, labels, {"fac": adapter}, "concat", backbone)
    model.body.freeze_adapters()
    model.body.freeze_backbone()
    for module in model.modules():  # dropout off: the two runs may then differ only by the cache
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _attach(model, splits, pad_id, tmp_path, mode="on"):
    body = model.body

    def compute(input_ids, attention_mask):
        tapped, last = body.backbone_features(input_ids, attention_mask)
        return [t.clone() for t in (*tapped, last)]

    return attach_cache(splits, compute, n_states=len(body.tap_layers) + 1, hidden=body.hidden, pad_id=pad_id,
                        batch_size=5, mode=mode, budget_gib=None, folder=tmp_path / "cache")


def test_collated_features_are_each_examples_own_states(tiny_backbone, shared_data, tmp_path):
    task, labels, examples, pad_id = _task_setup(tiny_backbone, shared_data)
    model = _frozen_model(task, labels, tiny_backbone)
    dev = [dict(e) for e in examples[:7]]
    assert _attach(model, [examples, dev], pad_id, tmp_path) == "memory"
    objective = TaskObjective(pad_id, task, labels)

    order = list(range(len(examples)))
    random.Random(1).shuffle(order)
    for split in (examples, dev):
        for start in range(0, len(split), 6):
            picked = [split[i] for i in order if i < len(split)][start:start + 6]
            if not picked:
                continue
            batch = objective.collate(picked)
            features = batch["features"]
            assert len(features) == len(model.body.tap_layers) + 1
            for row, example in enumerate(picked):
                n = len(example["input_ids"])
                ids = torch.tensor([example["input_ids"]])
                tapped, last = model.body.backbone_features(ids, torch.ones_like(ids))
                for cached, direct in zip(features, (*tapped, last)):
                    torch.testing.assert_close(cached[row, :n], direct[0], **FP16)
                    assert not cached[row, n:].any()  # padding rows are zeros

            # The model's output from the cached features is the output from the backbone.
            with torch.no_grad():
                from_cache = model(batch)
                from_backbone = model({k: v for k, v in batch.items() if k != "features"})
            torch.testing.assert_close(from_cache, from_backbone, **FP16)


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_training_with_the_cache_equals_training_without(tiny_backbone, shared_data, tmp_path):
    task, labels, examples, pad_id = _task_setup(tiny_backbone, shared_data)
    objective = TaskObjective(pad_id, task, labels)
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, log_every=1, seed=3, device="cpu")
    runs = {}
    for mode in ("on", "off"):
        model = _frozen_model(task, labels, tiny_backbone)
        train_split, dev_split = [dict(e) for e in examples[:16]], [dict(e) for e in examples[16:]]
        used = _attach(model, [train_split, dev_split], pad_id, tmp_path / mode, mode)
        assert used == ("memory" if mode == "on" else None)
        result = train(model, objective, train_split, dev_split, config, tmp_path / mode / "run")
        runs[mode] = (model, result, _losses(tmp_path / mode / "run"))

    (with_cache, result_on, losses_on), (without, result_off, losses_off) = runs["on"], runs["off"]
    assert len(losses_on) == len(losses_off) == result_on.steps == 8
    assert losses_on == pytest.approx(losses_off, rel=2e-3)
    assert result_on.best_step == result_off.best_step
    for (name, a), (_, b) in zip(with_cache.named_parameters(), without.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, atol=5e-3, rtol=1e-2, msg=name)


def test_cli_cache_features_on_and_off_train_alike(cli, tiny_backbone, shared_data):
    data = shared_data / "openentity" / "ernie-format"
    runs = {}
    for mode in ("on", "off"):
        result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tiny_backbone,
                     "--freeze-backbone", "--cache-features", mode, "--limit", "16", "--epochs", "2",
                     "--batch-size", "4", "--lr", "1e-2", "--warmup", "0", "--max-length", "48", "--log-every", "1",
                     "--seed", "5", "--name", f"cache-{mode}")
        assert result.exit_code == 0, result.output
        runs[mode] = cli.workdir / "finetuned" / f"cache-{mode}"
    on, off = runs["on"], runs["off"]
    assert json.loads((on / "manifest.json").read_text())["stats"]["feature_cache"] == "memory"
    assert json.loads((off / "manifest.json").read_text())["stats"]["feature_cache"] == "off"
    assert _losses(on) == pytest.approx(_losses(off), rel=2e-3) and len(_losses(on)) == 8
    m_on, m_off = (json.loads((r / "metrics.json").read_text()) for r in (on, off))
    for split in ("dev", "test"):
        assert m_on[split] == pytest.approx(m_off[split], abs=0.05)
