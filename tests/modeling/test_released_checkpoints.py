"""Released (imported) checkpoints behave as in the original: adapters that attend to padding see
every sequence padded to its max length with the backbone's pad-token states, so the same record
gets the same outputs alone, in a batch with a long record, and from the feature cache
(docs/differences.md)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.original_checkpoint import original_state_dict

from kadapter_cli.data.encoding import encode_relation
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
from kadapter_cli.modeling.backbone import backbone_shape, load_backbone, load_tokenizer, padding_position_ids
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.pretrainer import AdapterPretrainer
from kadapter_cli.stages.finetune import build_task_model
from kadapter_cli.tasks import get_task
from kadapter_cli.training.feature_cache import attach_cache
from kadapter_cli.training.objectives import RelationObjective, TaskObjective

MAX_LENGTH = 40
SENTENCES = [
    ("Paris is nice .", 0, 5),
    ("The old city of Rome lies on seven hills and has been a capital for a very long time indeed .", 16, 20),
    ("Anna Smith works at the bank .", 0, 10),
]


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    return load_backbone(tiny_backbone), load_tokenizer(tiny_backbone)


def _task_model(backbone, mask_padding: bool):
    """A typing model on the tiny backbone with one adapter whose weights are far from the identity."""
    task = get_task("openentity")
    labels = ["person", "location", "organization", "entity"]
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", mask_padding=mask_padding, init_std=0.3,
                                        dropout=0.0, max_length=MAX_LENGTH)
    torch.manual_seed(0)
    model = build_task_model(task, labels, {"fac": KnowledgeAdapter(config)}, "concat", backbone)
    model.body.freeze_adapters()
    model.body.freeze_backbone()
    model.eval()
    return model, task, labels


def _examples(task, tokenizer, labels):
    index = {label: i for i, label in enumerate(labels)}
    return [task.encode(tokenizer, {"sent": s, "start": a, "end": b, "labels": []}, index, MAX_LENGTH)
            for s, a, b in SENTENCES]


def _logits(model, objective, examples) -> torch.Tensor:
    with torch.no_grad():
        return model(objective.collate(examples))


def _alone_batched_cached(model, task, labels, tokenizer, pad_to):
    examples = _examples(task, tokenizer, labels)
    objective = TaskObjective(tokenizer.pad_token_id, task, labels, pad_to)
    alone = torch.cat([_logits(model, objective, [ex]) for ex in examples])
    batched = _logits(model, objective, examples)  # the short ones padded past the long one's length
    cached_examples = [dict(ex) for ex in examples]
    body = model.body

    def compute(ids, mask):
        tapped, last = body.backbone_features(ids, mask)
        return [*tapped, last]

    attach_cache([cached_examples], compute, n_states=len(body.tap_layers) + 1, hidden=body.hidden,
                 pad_id=tokenizer.pad_token_id, batch_size=2, mode="on", budget_gib=1.0, folder=None, pad_to=pad_to)
    cached = _logits(model, objective, cached_examples)  # features from the cache, batched together
    return alone, batched, cached


def test_adapter_attending_to_padding_gives_the_same_outputs_alone_batched_and_cached(tiny):
    backbone, tokenizer = tiny
    model, task, labels = _task_model(backbone, mask_padding=False)
    assert model.body.attends_to_padding and model.body.padded_length(MAX_LENGTH) == MAX_LENGTH
    alone, batched, cached = _alone_batched_cached(model, task, labels, tokenizer, model.body.padded_length(MAX_LENGTH))
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached, alone, atol=2e-2, rtol=1e-2)  # fp16 cache


def test_padding_each_batch_to_its_longest_would_make_outputs_depend_on_the_batch(tiny):
    # What the fix is for: the same adapter, batches padded only to their own longest record.
    backbone, tokenizer = tiny
    model, task, labels = _task_model(backbone, mask_padding=False)
    alone, batched, cached = _alone_batched_cached(model, task, labels, tokenizer, pad_to=None)
    assert (batched - alone).abs().max() > 1e-2  # the short records see the long one's pads
    assert (cached - alone).abs().max() > 1e-2  # zero-padded cache rows are not pad states


def test_masked_adapters_keep_per_batch_padding_and_the_encoder_s_position_ids(tiny):
    backbone, tokenizer = tiny
    model, task, labels = _task_model(backbone, mask_padding=True)
    assert not model.body.attends_to_padding and model.body.padded_length(MAX_LENGTH) is None
    alone, batched, cached = _alone_batched_cached(model, task, labels, tokenizer, pad_to=None)
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached, alone, atol=2e-2, rtol=1e-2)


def test_pad_positions_are_numbered_as_pytorch_transformers_1_2_did(tiny, minilm):
    backbone, tokenizer = tiny
    ids = torch.tensor([[0, 50, 2, 1, 1]])
    # RoBERTa: padding_idx + 1 onwards for every position, pads included (transformers gives pads 1).
    assert padding_position_ids(backbone, ids).tolist() == [[2, 3, 4, 5, 6]]
    assert padding_position_ids(load_backbone(minilm), ids) is None  # BERT numbers every position itself


# ---------------------------------------------------------------- through the command line


@pytest.fixture(scope="module")
def imported_model(tmp_path_factory, shared_data):
    """An original fac checkpoint imported with `import-original`, fine-tuned on a 1024-wide tiny
    backbone with `--freeze-backbone` (the feature cache path), as the README's recipe."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app
    from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone

    root = tmp_path_factory.mktemp("released")
    workdir = root / "work"

    def cli(*args):
        result = CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    wide = make_tiny_backbone(root / "wide", hidden_size=1024, num_layers=2, num_heads=16)
    # Weights large enough that the adapter's attention is far from uniform: pads then matter.
    torch.save(original_state_dict("fac", 1, scale=0.1), root / "pytorch_model.bin")
    cli("import-original", "--fac", root / "pytorch_model.bin", "--taps", "0,1,2")
    records = json.loads((shared_data / "openentity" / "ernie-format" / "dev.json").read_text())
    data = root / "openentity"  # a slice of OpenEntity, in a folder named after it
    data.mkdir()
    for split, part in (("train", records[:8]), ("dev", records[8:20]), ("test", records[20:32])):
        (data / f"{split}.json").write_text(json.dumps(part))
    cli("finetune", "--task", "openentity", "--adapters", "fac", "--backbone", wide, "--data", data,
        "--freeze-backbone", "--max-steps", "1", "--batch-size", "4", "--max-length", "48", "--lr", "1e-3")
    return cli, workdir / "finetuned" / "openentity-fac", data


def test_imported_adapter_predictions_do_not_depend_on_the_batch_size(imported_model):
    # (Cached = uncached is checked on logits above: fp16 cache rows may flip a threshold here.)
    cli, run, data = imported_model
    config = json.loads((run / "config.json").read_text())
    assert config["adapters"][0]["config"]["mask_padding"] is False
    predictions = {}
    for batch_size in (1, 12):
        cli("evaluate", run, "--data", data, "--split", "dev", "--batch-size", batch_size,
            "--out", run.parent / f"eval-{batch_size}")
        predictions[batch_size] = (run.parent / f"eval-{batch_size}" / "predictions-dev.jsonl").read_text()
    assert predictions[1] == predictions[12]
    assert any(json.loads(line)["pred"] for line in predictions[1].splitlines())  # not all empty


def test_pretraining_an_adapter_that_attends_to_padding_pads_like_the_original(tiny, tiny_backbone, shared_data,
                                                                              tmp_path):
    """`train-adapter --attend-padding`: every batch padded to --max-length, so a record's logits
    do not depend on its batch (library), and the command runs with the cache (CLI)."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    backbone, tokenizer = tiny
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", mask_padding=False, init_std=0.3, dropout=0.0,
                                        head={"type": "relation", "num_labels": 3, "com_dense": True})
    torch.manual_seed(0)
    model = AdapterPretrainer(backbone, KnowledgeAdapter(config), build_head(config.head, 64), "relation").eval()
    examples = [{**encode_relation(tokenizer, words.split(), (0, 0), (2, 2), MAX_LENGTH), "label": 0}
                for words in ("Anna likes Rome", "The old city of Rome lies on seven hills and is very old indeed .")]
    objective = RelationObjective(tokenizer.pad_token_id, ["a", "b", "c"], pad_to=MAX_LENGTH)
    with torch.no_grad():
        alone = torch.cat([model(objective.collate([ex])) for ex in examples])
        batched = model(objective.collate(examples))
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)

    workdir = tmp_path / "work"
    for args in (("prepare-trex", shared_data / "trex", "--min-count", "1"),
                 ("train-adapter", "--kind", "fac", "--attend-padding", "--backbone", tiny_backbone,
                  "--max-steps", "2", "--limit", "16", "--batch-size", "8", "--max-length", "48",
                  "--cache-features", "on")):
        result = CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert json.loads((workdir / "adapters" / "fac" / "kadapter_adapter.json").read_text())["mask_padding"] is False
    assert json.loads((workdir / "adapters" / "fac" / "metrics.json").read_text())["feature_cache"] == "memory"
