"""Precision: `auto` is bf16 on a CUDA GPU that computes bf16 natively and fp32 elsewhere, TF32 on
CUDA, bf16 refused where only emulated; the feature cache and LAMA scoring run under the run's
autocast; a frozen backbone is loaded in the compute dtype and freed once cached.

CUDA is stood in for (`torch.cuda.is_available`, `get_device_capability`,
`set_float32_matmul_precision` recorded): this machine has no GPU."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch

from kadapter_cli.errors import BadParameter
from kadapter_cli.training.config import TrainConfig
from kadapter_cli.training.setup import compute_dtype, make_accelerator, resolve_precision


@pytest.fixture
def fake_cuda(monkeypatch):
    """`fake_cuda(capability)`: a CUDA GPU of that compute capability is 'visible'; returns the
    recorded `set_float32_matmul_precision` calls."""
    calls: list[str] = []

    def install(capability=(8, 0)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
        monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
        return calls

    return install


@pytest.fixture
def recorded_accelerator(monkeypatch):
    import accelerate

    calls: list[dict] = []

    class Accelerator:
        def __init__(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(accelerate, "Accelerator", Accelerator)
    return calls


def test_the_default_is_auto_in_one_place_and_the_help_says_what_it_means(cli):
    assert TrainConfig().precision == "auto"
    text = " ".join(cli("train-adapter", "--help").stdout.replace("│", " ").split())
    assert "auto (bf16 on a CUDA GPU of compute capability 8.0 or more, fp32 on a CPU or an older GPU)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_auto_is_fp32_on_a_cpu_and_nothing_global_changes(monkeypatch, recorded_accelerator):
    calls: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    assert resolve_precision("auto") == "fp32" and compute_dtype("auto") is None
    make_accelerator(TrainConfig())
    assert recorded_accelerator == [{"cpu": True, "mixed_precision": "no", "log_with": None}]
    assert calls == []  # TF32 is a CUDA matter: a CPU run stays bit for bit as it was


@pytest.mark.parametrize("capability, precision, mixed", [((8, 0), "auto", "bf16"), ((9, 0), "auto", "bf16"),
                                                         ((7, 0), "auto", "no"), ((7, 5), "fp16", "fp16")])
def test_on_cuda_auto_is_bf16_where_native_and_tf32_is_on(fake_cuda, recorded_accelerator, capability, precision,
                                                          mixed):
    tf32 = fake_cuda(capability)
    make_accelerator(TrainConfig(precision=precision))
    assert recorded_accelerator == [{"cpu": False, "mixed_precision": mixed, "log_with": None}]
    assert tf32 == ["high"]


def test_bf16_where_only_emulated_is_refused_naming_the_parameter_and_suggesting_fp16(fake_cuda):
    fake_cuda((7, 0))  # a V100
    with pytest.raises(BadParameter) as caught:
        resolve_precision("bf16", "auto")
    assert caught.value.parameter == "precision"
    assert str(caught.value) == ("precision=bf16 is only emulated on this GPU (compute capability 7.0; bf16 needs 8.0 "
                                 "or more), slower than fp32; use precision=fp16 there")
    assert resolve_precision("bf16", "cpu") == "bf16"  # --device cpu on that machine: the CPU's bf16


def test_frozen_parts_compute_in_the_run_s_dtype(fake_cuda):
    fake_cuda((8, 0))
    assert compute_dtype("auto") is torch.bfloat16 and compute_dtype("fp16") is torch.float16
    assert compute_dtype("fp32") is None and compute_dtype("auto", "cpu") is None


def test_a_run_records_the_precision_it_computes_in(tmp_path, fake_cuda):
    """The loop resolves `auto` before anything else: checkpoints hold bf16 or fp32, never auto."""
    from kadapter_cli.training import loop

    seen = []

    def stop(config, log_with=None):
        seen.append(config.precision)
        raise RuntimeError("stop")

    fake_cuda((9, 0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "make_accelerator", stop)
        with pytest.raises(RuntimeError, match="stop"):
            loop.train(torch.nn.Linear(1, 1), object(), [1], None, TrainConfig(), tmp_path)
    assert seen == ["bf16"]


class _ReadsBackbone:
    """What `attach_backbone_cache` reads of a model (a recording stand-in for the backbone)."""

    tap_layers = [0]
    attends_to_padding = False
    hidden = 4

    def __init__(self):
        self.backbone = torch.nn.Identity()


def test_the_feature_cache_is_built_under_the_run_s_autocast(tmp_path, monkeypatch):
    from kadapter_cli.modeling import backbone as backbone_module
    from kadapter_cli.training.feature_cache import attach_backbone_cache

    autocast_seen = []

    def states(backbone, input_ids, attention_mask, taps, attends_to_padding=False, grad=False):
        autocast_seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        out = torch.ones(*input_ids.shape, 4)
        return [out], out

    monkeypatch.setattr(backbone_module, "backbone_states", states)
    examples = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}]
    for precision, expected in (("bf16", (True, torch.bfloat16)), ("auto", None)):
        autocast_seen.clear()
        attach_backbone_cache(_ReadsBackbone(), {"train": [dict(e) for e in examples]}, 0,
                              TrainConfig(precision=precision, device="cpu"), tmp_path, torch.device("cpu"),
                              mode="on", budget_gib=1.0)
        assert autocast_seen and all(seen == expected or (expected is None and not seen[0]) for seen in autocast_seen)


def test_lama_scoring_runs_under_the_precision_s_autocast(tiny_backbone, monkeypatch):
    from kadapter_cli.data import lama
    from kadapter_cli.modeling.backbone import load_backbone, load_tokenizer
    from kadapter_cli.modeling.probe_model import ProbeModel
    from kadapter_cli.stages import probe as probe_stage

    backbone = load_backbone(tiny_backbone).eval()
    tokenizer = load_tokenizer(tiny_backbone)
    hidden = backbone.config.hidden_size
    model = ProbeModel(backbone, {}, hidden, backbone.config.vocab_size)
    seen = []
    forward = ProbeModel.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ProbeModel, "forward", recording)
    fact = lama.Fact("trex", "P17", "Paris", "the", "[X] is in [Y] .", "P17.jsonl, line 1")
    relation = lama.RelationFacts("trex", "P17", fact.template, [fact, fact])
    the = lama.single_token_id(tokenizer, "the")
    probe = probe_stage.Probe("p", Path("p"), model, tokenizer, {"max_length": 32})
    for precision, expected in (("bf16", torch.bfloat16), ("fp32", False)):
        seen.clear()
        probe_stage.score_probes([probe], [relation], [the, the + 1], 2, 8, torch.device("cpu"),
                                 precision=precision)
        assert seen == [expected]


def record_backbone_loads(monkeypatch, loading_module, training_module, look=lambda model: None) -> tuple[list, list]:
    """Records each `load_backbone` call of `loading_module` as (dtype, weak reference to the model),
    and each `train` call of `training_module` as (`look(the model trained)` when training starts,
    whether the last loaded backbone is still alive then, after a garbage collection)."""
    loaded, at_training = [], []
    load, train = loading_module.load_backbone, training_module.train

    def recording_load(name, dtype=None):
        model = load(name, dtype)
        loaded.append((dtype, weakref.ref(model)))
        return model

    def recording_train(model, *args, **kwargs):
        gc.collect()
        at_training.append((look(model), loaded[-1][1]() is not None))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(loading_module, "load_backbone", recording_load)
    monkeypatch.setattr(training_module, "train", recording_train)
    return loaded, at_training


def test_a_frozen_backbone_is_loaded_in_the_compute_dtype_and_freed_once_cached(tmp_path, monkeypatch, tiny_backbone,
                                                                                make_trex_rc):
    from kadapter_cli.stages import pretrain

    loaded, at_training = record_backbone_loads(monkeypatch, pretrain, pretrain)
    data = make_trex_rc(tmp_path / "trex-rc", train=8, dev=4)
    spec = pretrain.AdapterTrainingSpec(kind="fac", name="fac", data=data, out=tmp_path / "fac",
                                        backbone=str(tiny_backbone), max_length=32, adapter_width=16,
                                        adapter_layers=1, adapter_heads=2, cache_features="on")
    pretrain.train_adapter(spec, TrainConfig(precision="bf16", device="cpu", max_steps=1, batch_size=4))
    assert loaded[0][0] is torch.bfloat16
    assert [alive for _, alive in at_training] == [False]  # the cache holds its states: the backbone is gone
    pretrain.train_adapter(spec, TrainConfig(device="cpu", max_steps=1, batch_size=4), overwrite=True)
    assert loaded[1][0] is None  # the default CPU run: fp32, as it always was


def test_device_cpu_on_a_cuda_machine_is_fp32_without_tf32(fake_cuda, recorded_accelerator):
    tf32 = fake_cuda((9, 0))
    make_accelerator(TrainConfig(device="cpu"))
    assert recorded_accelerator == [{"cpu": True, "mixed_precision": "no", "log_with": None}]
    assert tf32 == []  # --device cpu: the GPU beside it changes nothing
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_work_outside_the_loop_autocasts_to_the_precision_s_dtype(precision, dtype):
    from kadapter_cli.training.setup import autocast

    context = autocast(precision, torch.device("cpu"))
    assert isinstance(context, torch.autocast) and context.fast_dtype is dtype and context.device == "cpu"
    assert not isinstance(autocast("fp32", torch.device("cpu")), torch.autocast)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("auto", None)])
def test_finetune_loads_a_frozen_backbone_in_the_compute_dtype_frees_it_once_cached_and_saves_its_weights(
        cli, monkeypatch, tiny_backbone, shared_data, precision, dtype):
    """`finetune --freeze-backbone` as train-adapter: the frozen backbone in the run's compute dtype,
    gone once the cache holds every split, and the artifact still holds its own fp32 weights."""
    from safetensors.torch import load_file

    from kadapter_cli.modeling.backbone import load_backbone
    from kadapter_cli.stages import compose, finetune

    loaded, at_training = record_backbone_loads(monkeypatch, compose, finetune,
                                                   look=lambda model: model.body.backbone)
    result = cli("finetune", "--task", "openentity", "--data", shared_data / "openentity" / "ernie-format",
                 "--backbone", tiny_backbone, "--freeze-backbone", "--cache-features", "on", "--precision", precision,
                 "--device", "cpu", "--limit", "8", "--max-steps", "1", "--batch-size", "4", "--max-length", "32")
    assert result.exit_code == 0, result.output
    assert [d for d, _ in loaded] == [dtype]
    # Every split is cached: the model trains without the backbone, and in bf16 nothing keeps it alive.
    # fp32: kept in host memory, for the artifact
    assert at_training == [(None, dtype is None)]
    saved = load_file(cli.workdir / "finetuned" / "openentity-base" / "model.safetensors")
    original = load_backbone(str(tiny_backbone)).state_dict()
    for key, value in original.items():
        if f"body.backbone.{key}" in saved:
            assert saved[f"body.backbone.{key}"].dtype == torch.float32 and saved[f"body.backbone.{key}"].equal(value)


def test_evaluate_and_predict_on_cuda_run_in_bf16_as_training_does(cli, monkeypatch, fake_cuda, tiny_backbone,
                                                                   shared_data):
    """`evaluate` and `predict` take the default precision (`auto`): bf16 autocast on a GPU that
    computes it natively, as `finetune` does; on the CPU fp32."""
    import accelerate

    data = shared_data / "openentity" / "ernie-format"
    trained = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tiny_backbone, "--device", "cpu",
                  "--limit", "4", "--max-steps", "1", "--batch-size", "4", "--max-length", "32")
    assert trained.exit_code == 0, trained.output
    run = cli.workdir / "finetuned" / "openentity-base"
    made: list[dict] = []

    class Made(Exception):
        pass

    class Accelerator:  # records how it was asked for, then stops the command: there is no GPU here
        def __init__(self, **kwargs):
            made.append(kwargs)
            raise Made

    monkeypatch.setattr(accelerate, "Accelerator", Accelerator)
    fake_cuda((9, 0))
    for command in (("evaluate", run, "--data", data, "--split", "dev", "--no-save"),
                    ("predict", run, data / "dev.json")):
        stopped = cli(*command)
        assert stopped.exit_code != 0 and "Made" in stopped.output, stopped.output
    assert made == [{"cpu": False, "mixed_precision": "bf16", "log_with": None}] * 2
