"""`kadapter encode MODEL TEXTS --out FILE` (docs/python-api.md): the features the Python API gives, in input
order, in a file read with one call, written batch by batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kadapter import KAdapterForTask, KAdapterModel

TEXTS = [{"id": "paris", "text": "Paris is the capital of France ."}, {"text": "Hi"},
         {"id": 7, "text": "The Seine flows through Paris and then into the English Channel ."}]


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    return path


def _encode(cli, *args):
    result = cli("encode", *map(str, args))
    assert result.exit_code == 0, result.output
    return result


def test_pooled_features_of_a_composition_equal_the_api(cli, trained_work, texts, tmp_path):
    composition = trained_work / "compositions" / "fac+lin"
    out = tmp_path / "features.safetensors"
    _encode(cli, composition, texts, "--out", out, "--pool", "mean")
    stored = load_file(out)
    metadata = safe_open(str(out), "pt").metadata()
    assert set(stored) == {"features"} and json.loads(metadata["ids"]) == ["paris", 1, 7]
    assert json.loads(metadata["parts"]) == [["backbone", 384], ["fac", 384], ["lin", 384]]
    api = KAdapterModel.from_pretrained(composition).encode([t["text"] for t in TEXTS], pool="mean")
    assert torch.equal(stored["features"], api)


def test_per_token_features_come_with_offsets(cli, trained_work, texts, tmp_path):
    adapters = f"{trained_work / 'adapters' / 'fac'},{trained_work / 'adapters' / 'lin'}"
    out = tmp_path / "tokens.safetensors"
    _encode(cli, adapters, texts, "--out", out, "--pool", "none", "--batch-size", "2")
    stored = load_file(out)
    encoder = KAdapterModel.from_pretrained([trained_work / "adapters" / "fac", trained_work / "adapters" / "lin"])
    api = encoder.encode([t["text"] for t in TEXTS], batch_size=2)
    lengths = encoder.tokenize([t["text"] for t in TEXTS])["attention_mask"].sum(1).tolist()
    offsets = stored["offsets"].tolist()
    assert offsets == [0, *np.cumsum(lengths).tolist()]
    for i, n in enumerate(lengths):
        assert torch.equal(stored["features"][offsets[i]:offsets[i + 1]], api[i, :n])


def test_a_finetuned_model_writes_npy(cli, trained_work, texts, tmp_path):
    folder = trained_work / "finetuned" / "openentity-fac+lin"
    out = tmp_path / "features.npy"
    _encode(cli, folder, texts, "--out", out, "--pool", "cls")
    api = KAdapterForTask.from_pretrained(folder).encode([t["text"] for t in TEXTS], pool="cls")
    assert np.array_equal(np.load(out), api.numpy())


def test_it_streams(trained_work, tmp_path, monkeypatch):
    """Features are written batch by batch: never more than one batch of them at a time."""
    from kadapter_cli.api import features_file

    n, batch = 70, 16
    path = tmp_path / "many.txt"
    path.write_text("".join(f"sentence number {i} about Paris\n" for i in range(n)))
    written: list[int] = []
    original = features_file._writer.write
    monkeypatch.setattr(features_file._writer, "write", lambda self, rows: (written.append(len(rows)),
                                                                             original(self, rows))[1])
    features_file.encode_file(trained_work / "adapters" / "fac", path, tmp_path / "many.npy", "mean", batch_size=batch)
    assert written == [batch] * (n // batch) + [n % batch]
    assert np.load(tmp_path / "many.npy").shape == (n, 2 * 384)


def test_a_json_list_is_read_one_item_at_a_time_as_json_lines_are(trained_work, texts, tmp_path, monkeypatch):
    """The same features and ids from a JSON list as from JSON Lines, the list never read whole."""
    from kadapter_cli.api import features_file
    from kadapter_cli.artifacts import io

    listed = tmp_path / "texts.json"
    listed.write_text(json.dumps(TEXTS, indent=2))

    def whole(path, *args, **kwargs):
        if Path(path) == listed:
            raise AssertionError("the JSON list was read whole")
        return original(path, *args, **kwargs)

    original = io.read_json
    monkeypatch.setattr(io, "read_json", whole)
    monkeypatch.setattr(features_file, "read_json", whole, raising=False)
    fac = trained_work / "adapters" / "fac"
    for path, out in ((listed, tmp_path / "list.safetensors"), (texts, tmp_path / "lines.safetensors")):
        features_file.encode_file(fac, path, out, "mean", batch_size=2)
    assert torch.equal(load_file(tmp_path / "list.safetensors")["features"],
                       load_file(tmp_path / "lines.safetensors")["features"])
    ids = [json.loads(safe_open(str(tmp_path / f"{name}.safetensors"), "pt").metadata()["ids"]) for name in ("list", "lines")]
    assert ids[0] == ids[1] == ["paris", 1, 7]


@pytest.mark.parametrize("args, message", [
    (["--pool", "max"], "--pool must be cls, mean or none"),
    (["--pool", "none", "--out-suffix", ".npy"], "per-token features (--pool none) vary in length"),
    (["--out-suffix", ".csv"], "--out must end in .safetensors or .npy"),
])
def test_mistakes_are_exit_2(cli, trained_work, texts, tmp_path, args, message):
    suffix = ".safetensors"
    if "--out-suffix" in args:
        suffix = args[args.index("--out-suffix") + 1]
        args = args[: args.index("--out-suffix")]
    result = cli("encode", trained_work / "adapters" / "fac", texts, "--out", tmp_path / f"f{suffix}", *args)
    assert result.exit_code == 2 and message in result.output


def test_an_existing_output_needs_overwrite(cli, trained_work, texts, tmp_path):
    out = tmp_path / "f.npy"
    out.write_text("mine")
    result = cli("encode", trained_work / "adapters" / "fac", texts, "--out", out)
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.output and out.read_text() == "mine"
    _encode(cli, trained_work / "adapters" / "fac", texts, "--out", out, "--overwrite")
    assert np.load(out).shape == (3, 768)
