"""`KAdapterModel` and `KAdapterForTask` from Python (docs/python-api.md): predictions equal `kadapter predict`'s,
features are the same on every call and in any batch, padding never leaks, every loader returns
eval mode, mistakes are one-line `BadInput`s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kadapter import BadInput, KAdapterForTask, KAdapterModel, load_adapter
from kadapter_cli.artifacts.layout import DEMO_DATA

# Features of one text computed in batches of different sizes (so padded to different lengths) differ
# by float rounding only: on 64 demo sentences through MiniLM + fac (fp32, CPU, features up to ~20 in
# size) at most 1e-5 per token and 2e-6 pooled; the bounds leave room for other CPUs' kernels.
BATCH_TOLERANCE = 5e-5
POOLED_TOLERANCE = 1e-5
TEXTS = ["Paris is the capital of France .", "Hi", "The Seine flows through Paris and then, after many a bend "
         "through Normandy, into the English Channel at Le Havre .", "Berlin ."]


@pytest.fixture(scope="module")
def finetuned(trained_work) -> Path:
    return trained_work / "finetuned" / "openentity-fac+lin"


@pytest.fixture(scope="module")
def model(finetuned) -> KAdapterForTask:
    return KAdapterForTask.from_pretrained(finetuned)


@pytest.fixture(scope="module")
def encoder(trained_work) -> KAdapterModel:
    return KAdapterModel.from_pretrained(trained_work / "compositions" / "fac+lin")


def _records(n: int = 12) -> list[dict]:
    records = json.loads((DEMO_DATA / "typing" / "test.json").read_text())[:n]
    records[1] = {**records[1], "labels": ["no-such-type"]}  # a label the model never saw: shown in gold only
    return records


@pytest.mark.parametrize("scores, flags", [(False, []), (True, ["--scores"]), ("all", ["--all-scores"])])
def test_predict_equals_the_command_at_any_batch_size(model, finetuned, cli, tmp_path, scores, flags):
    records = _records()
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    printed = {}
    for batch_size in (1, 5, 32):
        result = cli("predict", finetuned, path, *flags, "--batch-size", str(batch_size))
        printed[batch_size] = [json.loads(x) for x in result.stdout.splitlines()]
        assert model.predict(records, scores=scores, batch_size=batch_size) == printed[batch_size]
    assert printed[32][1]["gold"] == ["no-such-type"]
    # Across batch sizes: the same labels; probabilities (6 decimals) within float rounding.
    for line, other in zip(printed[32], printed[1]):
        assert line["pred"] == other["pred"] and line.keys() == other.keys()
        for label, p in line.get("scores", {}).items():
            assert abs(p - other["scores"][label]) <= 2e-6


def test_predict_leaves_the_model_in_eval_mode(model):
    model.predict(_records(2))
    assert not model.training and not any(m.training for m in model.modules())


def test_every_loader_returns_eval_mode(model, encoder, trained_work):
    adapter, _, _ = load_adapter(trained_work / "adapters" / "fac")
    for loaded in (model, encoder, adapter):
        assert not any(m.training for m in loaded.modules())


def test_features_are_the_same_on_every_call_and_in_any_batch(encoder, model):
    for m in (encoder, model):
        first = m.encode(TEXTS)
        assert torch.equal(m.encode(TEXTS), first)
        for batch_size in (1, 3):
            assert (m.encode(TEXTS, batch_size=batch_size) - first).abs().max() <= BATCH_TOLERANCE
        pooled = m.encode(TEXTS, pool="mean")
        assert (m.encode(TEXTS, pool="mean", batch_size=1) - pooled).abs().max() <= POOLED_TOLERANCE
        lengths = m.tokenize(TEXTS)["attention_mask"].sum(1)
        assert first.shape[:2] == (len(TEXTS), int(lengths.max()))
        assert torch.all(first[1, int(lengths[1]):] == 0)  # nothing past a text's end
        # one text alone: its own length, the same values
        alone = m.encode(TEXTS[1])
        assert alone.shape[1] == int(lengths[1])
        assert (alone[0] - first[1, : int(lengths[1])]).abs().max() <= BATCH_TOLERANCE


def test_pooling_and_parts(encoder):
    tokens = encoder.encode(TEXTS)
    mask = encoder.tokenize(TEXTS)["attention_mask"]
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(encoder.encode(TEXTS, pool="mean"), mean, rtol=0, atol=1e-6)
    assert torch.equal(encoder.encode(TEXTS, pool="cls"), tokens[:, 0])
    parts = encoder.encode(TEXTS, pool="cls", parts=True)
    assert {k: v.shape[-1] for k, v in parts.items()} == encoder.part_sizes == {"backbone": 384, "fac": 384, "lin": 384}
    # a tokenized batch gives what its texts give
    assert torch.equal(encoder.encode(encoder.tokenize(TEXTS), pool="mean"), encoder.encode(TEXTS, pool="mean"))


def test_the_output_has_no_untrained_parameters(encoder, trained_work):
    """K-Adapter's output is the backbone and the adapters as trained: every parameter comes from
    the backbone or an adapter file, none from a fusion layer."""
    assert encoder.body.fusion is None
    names = {n.split(".")[2] if n.startswith("body.adapters.") else n.split(".")[1] for n, _ in encoder.named_parameters()}
    assert names == {"backbone", "fac", "lin"}
    fac, _, _ = load_adapter(trained_work / "adapters" / "fac")
    assert all(torch.equal(p, q) for p, q in zip(fac.state_dict().values(),
                                                  encoder.body.adapters["fac"].state_dict().values()))


def test_padding_never_leaks_into_adapters_that_attend_to_it(tiny_backbone, tmp_path, monkeypatch):
    """Imported original adapters attend to padded positions (`mask_padding: false`). Every batch is
    then padded to the adapter's length with the backbone's pad states (`KAdapterModel.padded_length`),
    so a text's features do not depend on the texts beside it."""
    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import backbone_fingerprint, backbone_shape, load_backbone

    backbone = load_backbone(tiny_backbone)
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", backbone=str(tiny_backbone), max_length=40,
                                        mask_padding=False,
                                        backbone_fingerprint=backbone_fingerprint(tiny_backbone, backbone))
    torch.manual_seed(0)
    adapter = KnowledgeAdapter(config)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_adapter(tmp_path / "original", adapter, config)

    encoder = KAdapterModel.from_pretrained([tmp_path / "original"])
    assert encoder.padded_length() == 40
    together = encoder.encode(TEXTS, pool="mean")
    alone = torch.cat([encoder.encode(t, pool="mean") for t in TEXTS])
    assert (together - alone).abs().max() <= POOLED_TOLERANCE
    # the rule is what makes it so: padding each batch to its own longest text changes the short ones
    monkeypatch.setattr(KAdapterModel, "padded_length", lambda self: None)
    leaky = torch.cat([encoder.encode(t, pool="mean") for t in TEXTS])
    assert (leaky - together).abs().max() > 1e-3


def test_mistakes_are_one_line_errors(encoder, model, finetuned):
    with pytest.raises(BadInput, match="a finetuned model: load it with KAdapterForTask"):
        KAdapterModel.from_pretrained(finetuned)
    with pytest.raises(BadInput, match="^pool must be"):  # the library names its parameters
        encoder.encode(TEXTS, pool="max")
    with pytest.raises(BadInput, match=r"texts\[1\] is a int"):
        encoder.encode(["fine", 3])
    with pytest.raises(BadInput, match="scores must be"):
        model.predict(_records(2), scores="some")
    with pytest.raises(BadInput) as error:
        model.predict([{"sent": "Paris .", "start": 0, "end": 5}, {"sent": "Paris .", "start": 4, "end": 2}])
    assert str(error.value).startswith("<records>, record 1 (counted from 0):")
    with pytest.raises(BadInput, match="no such folder"):
        KAdapterForTask.from_pretrained(finetuned.parent / "missing")


def test_an_adapter_whose_backbone_is_not_here_names_the_adapter_and_the_backbone_parameter(tiny_backbone, tmp_path):
    """As on the command line: the adapter is named, and what to pass (the `backbone` parameter)."""
    import shutil

    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import backbone_fingerprint, backbone_shape, load_backbone

    alice = shutil.copytree(tiny_backbone, tmp_path / "alice" / "minilm")
    backbone = load_backbone(alice)
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", backbone=str(alice),
                                        backbone_fingerprint=backbone_fingerprint(alice, backbone))
    save_adapter(tmp_path / "fac", KnowledgeAdapter(config), config)
    shutil.rmtree(tmp_path / "alice")
    with pytest.raises(BadInput) as error:
        KAdapterModel.from_pretrained(tmp_path / "fac")
    message = str(error.value)
    assert message.startswith(f"adapter 'fac' was trained on the backbone folder {alice.resolve()} (config ")
    assert "and it is not on this machine: pass backbone with that backbone (a Hugging Face id or a folder" in message
    encoder = KAdapterModel.from_pretrained(tmp_path / "fac", backbone=tiny_backbone)  # a copy elsewhere is fine
    assert encoder.adapter_names == ["fac"]
