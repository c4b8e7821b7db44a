"""Finetuned folders written before kadapter 0.2 — tokenizer in `tokenizer/`, the backbone's config in
`backbone/`, a config.json without `model_type` — still load: `kadapter predict` and
`KAdapterForTask` give what they give on the current layout, and saving one again writes the
current layout, which Hugging Face's `AutoModel` reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from kadapter import KAdapterForTask
from kadapter_cli.artifacts.layout import DEMO_DATA

HF_KEYS = ("model_type", "architectures", "transformers_version", "backbone_config", "labels")


def write_the_old_way(new: Path, old: Path) -> None:
    from transformers import AutoConfig

    shutil.copytree(new, old)
    config = json.loads((old / "config.json").read_text())
    values = dict(config["backbone_config"])
    AutoConfig.for_model(values.pop("model_type"), **values).save_pretrained(old / "backbone")
    (old / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (old / name).exists():
            (old / name).rename(old / "tokenizer" / name)
    (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in HF_KEYS}, indent=2))


def test_an_old_folder_loads_and_predicts_the_same(trained_work, cli, tmp_path):
    new = trained_work / "finetuned" / "openentity-fac+lin"
    old = tmp_path / "old"
    write_the_old_way(new, old)
    assert not (old / "tokenizer_config.json").exists() and "model_type" not in json.loads((old / "config.json").read_text())

    records = DEMO_DATA / "typing" / "test.json"
    printed = {folder: cli("predict", folder, records, "--scores").stdout for folder in (new, old)}
    assert printed[old] == printed[new] and printed[new].count("\n") > 10

    model = KAdapterForTask.from_pretrained(old)
    reference = KAdapterForTask.from_pretrained(new).state_dict()
    assert _same(model.state_dict(), reference)
    assert torch.equal(model.encode(["Paris ."]), KAdapterForTask.from_pretrained(new).encode(["Paris ."]))

    upgraded = tmp_path / "upgraded"
    model.save_pretrained(upgraded)
    from transformers import AutoModel

    again = AutoModel.from_pretrained(upgraded)
    assert (upgraded / "tokenizer_config.json").is_file()
    assert _same(again.state_dict(), reference)


def _same(state: dict, other: dict) -> bool:
    return state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
