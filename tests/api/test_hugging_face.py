"""A finetuned folder through Hugging Face transformers (docs/python-api.md): `import kadapter` registers the
model type, `AutoConfig`/`AutoModel`/`AutoTokenizer` and the feature-extraction pipeline read the
folder, outputs equal kadapter's, and a save → load round trip restores every tensor (transformers 5
builds models on the meta device and has been seen re-initialising weights after loading)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import kadapter  # noqa: F401  registers the `kadapter` model type
from kadapter import KAdapterConfig, KAdapterForTask
from kadapter_cli.stages.finetune import load_finetuned

TEXTS = ["Paris is the capital of France .", "The Seine flows through Paris ."]
RECORD = {"sent": "Paris is the capital of France .", "start": 0, "end": 5}


@pytest.fixture(scope="module")
def folder(trained_work) -> Path:
    return trained_work / "finetuned" / "openentity-fac+lin"


def _typing_batch(loaded) -> dict:
    labels = {label: i for i, label in enumerate(loaded.labels)}
    examples = [loaded.task.encode(loaded.tokenizer, {**RECORD, "labels": []}, labels, 32),
                loaded.task.encode(loaded.tokenizer, {"sent": "I met Ann .", "start": 6, "end": 9, "labels": []},
                                   labels, 32)]
    return loaded.task.collate(examples, loaded.tokenizer.pad_token_id)


def test_automodel_loads_it_with_kadapters_outputs(folder):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, KAdapterConfig) and config.task == "openentity" and config.fusion == "concat"
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, KAdapterForTask) and not any(m.training for m in model.modules())

    loaded = load_finetuned(folder)  # what `kadapter predict` and `evaluate` run
    batch = _typing_batch(loaded)
    with torch.no_grad():
        theirs = model(**batch)
        ours = loaded.model(batch)
        fused = loaded.model.body(batch["input_ids"], batch["attention_mask"])
    assert theirs.logits.shape == ours.shape == (2, len(loaded.labels))
    assert (theirs.logits - ours).abs().max() <= 1e-5
    assert (theirs.last_hidden_state - fused).abs().max() <= 1e-5


def test_a_save_load_round_trip_restores_every_tensor(folder, tmp_path):
    from transformers import AutoModel

    model = KAdapterForTask.from_pretrained(folder)
    stored = load_file(folder / "model.safetensors")  # what fine-tuning wrote
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    again = AutoModel.from_pretrained(saved)

    for loaded in (model, again):
        state = loaded.state_dict()
        assert set(state) == set(stored)
        assert all(torch.equal(state[k], stored[k]) for k in stored), "a weight changed on loading"
    # buffers that are not stored (position ids) are rebuilt, equal too
    buffers = dict(model.named_buffers())
    assert all(torch.equal(buffers[k], b) for k, b in again.named_buffers())
    assert again.config.kadapter_dict() == model.config.kadapter_dict()
    assert again.labels == model.labels and again.predict([RECORD], scores="all") == model.predict([RECORD], scores="all")
    with pytest.raises(kadapter.BadInput, match="already exists"):
        model.save_pretrained(saved)  # never over a folder without overwrite=True
    model.save_pretrained(saved, overwrite=True)


def test_from_config_builds_the_same_architecture(folder):
    from transformers import AutoConfig, AutoModel

    fresh = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    stored = load_file(folder / "model.safetensors")
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in stored.items()}


def test_the_tokenizer_is_where_autotokenizer_finds_it_without_kadapter(folder):
    """Plain transformers, kadapter not imported: the folder's tokenizer loads and tokenizes as kadapter's."""
    script = ("import json, sys; from transformers import AutoTokenizer; "
              f"print(json.dumps(AutoTokenizer.from_pretrained(sys.argv[1])({TEXTS!r})['input_ids']))")
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == KAdapterForTask.from_pretrained(folder).tokenizer(TEXTS)["input_ids"]


def test_the_cards_pipeline_runs_it(folder):
    """The card declares `feature-extraction`; that standard pipeline runs the folder and gives the
    fused representation `encode` gives."""
    from transformers import pipeline

    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert card["pipeline_tag"] == "feature-extraction"
    extract = pipeline(card["pipeline_tag"], model=str(folder))
    got = torch.tensor(extract(TEXTS[0]))[0]
    want = KAdapterForTask.from_pretrained(folder).encode(TEXTS[0])[0]
    assert got.shape == want.shape and (got - want).abs().max() <= 1e-5
