"""The feature cache gives every example its own states (issue 16), seen from where they are used:
examples with the cache attached collate into batches whose features are those examples' backbone
states, and training with the cache follows the run without it (library and `--cache-features`).

The cache stores fp16, so "equal" is up to fp16 rounding; an example given another example's
states is off by the size of the states themselves, hundreds of times more.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from kadapter_cli.modeling.backbone import load_backbone, load_tokenizer
from kadapter_cli.stages.finetune import build_task_model, encode_split
from kadapter_cli.tasks import get_task
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.feature_cache import attach_cache
from kadapter_cli.training.loop import train
from kadapter_cli.training.objectives import TaskObjective

FP16 = {"atol": 3e-3, "rtol": 2e-3}


def _task_setup(tiny_backbone, shared_data, n: int = 24):
    task = get_task("openentity")
    path = shared_data / "openentity" / "ernie-format" / "train.json"
    records = task.read(path)[:n]
    tokenizer = load_tokenizer(str(tiny_backbone))
    labels = task.label_vocab(records, path.parent)
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
