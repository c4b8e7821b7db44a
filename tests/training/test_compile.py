"""`--compile`: the adapter and its head are compiled in place (names unchanged) and batches are
padded to multiples of 16 tokens, so the compiled graphs see a few lengths. `torch.compile` itself
is stood in for by a recorder (compiling takes minutes on this machine; benchmarks/run.py --only
compile measures it)."""

from __future__ import annotations

import pytest
import torch

from kadapter_cli.errors import BadParameter
from kadapter_cli.training.config import COMPILE_LENGTH_MULTIPLE, TrainConfig
from kadapter_cli.training.objectives import DependencyObjective, RelationObjective
from kadapter_cli.training.setup import compile_trainable


@pytest.fixture
def compiled(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    return calls


def _fac():
    from benchmarks.workloads import BenchShape, adapter_config, adapter_pretrainer, build_backbone, fac_examples

    shape = BenchShape(layers=2, hidden=32, heads=2, ffn=64, vocab=100, max_length=40, batch_size=4)
    backbone = build_backbone(shape, 0)
    config = adapter_config(backbone)
    return adapter_pretrainer(backbone, config), RelationObjective(1, config.labels), fac_examples(
        [6, 19, 5, 33, 9, 6, 17, 8], shape.vocab, 0)


def test_batches_are_padded_to_multiples_of_16_only_when_compiling():
    _, objective, examples = _fac()
    assert objective.collate(examples[:2])["input_ids"].shape[1] == 19  # the default: its longest example
    objective.length_multiple = COMPILE_LENGTH_MULTIPLE
    for group, length in ((examples[:2], 32), (examples[2:4], 48), (examples[4:6], 16)):
        batch = objective.collate(group)
        assert batch["input_ids"].shape[1] == length and int(batch["attention_mask"].sum()) == sum(
            len(e["input_ids"]) for e in group)
    lin = DependencyObjective(1)
    lin.length_multiple = 16
    ex = {"input_ids": [0, 5, 6, 2], "head_targets": [-100, 0, 1, -100], "word_starts": [1, 2]}
    assert lin.collate([ex])["head_targets"].shape == (1, 16)


def test_compile_compiles_the_adapter_and_head_in_place_and_buckets_the_lengths(compiled):
    model, objective, _ = _fac()
    names = [n for n, _ in model.named_parameters()]
    compile_trainable(model, objective)
    assert compiled == [type(model.adapter).__name__, type(model.head).__name__]  # nothing else: not the backbone
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints and artifacts keep their names
    assert objective.length_multiple == 16


def test_compile_is_refused_for_a_model_that_offers_no_parts():
    with pytest.raises(BadParameter) as caught:
        compile_trainable(torch.nn.Linear(2, 2), object())
    assert caught.value.parameter == "compile"


def test_the_loop_compiles_when_asked_and_only_then(compiled, tmp_path):
    from kadapter_cli.training.loop import train

    for flag in (False, True):
        model, objective, examples = _fac()
        compiled.clear()
        train(model, objective, examples, None, TrainConfig(device="cpu", max_steps=1, batch_size=4, compile=flag),
              tmp_path / str(flag))
        assert bool(compiled) is flag
        assert objective.length_multiple == (16 if flag else 1)


def test_train_adapter_offers_compile(cli):
    text = " ".join(cli("train-adapter", "--help").stdout.replace("│", " ").split())
    assert "--compile" in text and "multiple of 16 tokens" in text


def test_train_adapter_compile_compiles_the_adapter_and_head(cli, compiled, tiny_backbone, make_trex_rc, tmp_path):
    """`kadapter train-adapter --compile` reaches the loop: the adapter and its head are compiled, and the
    artifact is written under the usual names; without the flag nothing is compiled."""
    from kadapter_cli.modeling.adapter import load_adapter

    data = make_trex_rc(tmp_path / "trex-rc", 8, 4)
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--max-steps", "1",
            "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--adapter-width", "16",
            "--adapter-layers", "1", "--adapter-heads", "2")
    result = cli(*args, "--compile")
    assert result.exit_code == 0, result.output
    assert compiled == ["KnowledgeAdapter", "PretrainingHead"]
    load_adapter(cli.workdir / "adapters" / "fac")  # names unchanged: the artifact loads
    compiled.clear()
    assert cli(*args, "--overwrite").exit_code == 0 and compiled == []


def test_the_refusal_names_what_compile_is_for():
    with pytest.raises(BadParameter) as caught:
        compile_trainable(torch.nn.Linear(2, 2), object())
    assert str(caught.value) == ("compile=True compiles an adapter and its head (adapter pretraining); "
                                 "this model has no parts to compile")


@pytest.mark.parametrize("backend, kwargs", [(None, {}), ("eager", {"backend": "eager"})])
def test_the_backend_reaches_torch_compile_only_when_given(monkeypatch, backend, kwargs):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(k))
    model, objective, _ = _fac()
    compile_trainable(model, objective, backend=backend)
    assert calls and all(k == kwargs for k in calls)
