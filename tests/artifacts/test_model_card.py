"""Model cards (docs/tracking.md): every adapter and finetuned artifact has a README.md with Hub front
matter, listed in its manifest like any other file."""

from __future__ import annotations

import json

import pytest
from helpers.cards import read_card

from kadapter_cli.artifacts.cards import command_line, data_license
from kadapter_cli.artifacts.io import sha256_file
from kadapter_cli.artifacts.manifest import verify_files


def test_a_trained_adapter_carries_its_card(cli, tmp_path, tiny_backbone):
    from conftest import _write_trex_rc as _trex_rc

    data = _trex_rc(tmp_path / "trex-rc")
    result = cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--max-steps", "4",
                 "--batch-size", "8", "--max-length", "24", "--device", "cpu", "--taps", "0,2")
    assert result.exit_code == 0, result.output
    out = cli.workdir / "adapters" / "fac"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["README.md"] == sha256_file(out / "README.md")
    verify_files(out)
    meta, body = read_card(out)
    dev = json.loads((out / "metrics.json").read_text())["dev"]
    assert meta["library_name"] == "kadapter" and "fac-adapter" in meta["tags"]
    assert "base_model" not in meta  # a local folder is not a Hub model
    assert meta["license"] == "cc-by-sa-4.0" and meta["datasets"] == ["T-REx"]
    scores = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert scores["accuracy"] == pytest.approx(dev["accuracy"]) and scores["macro_f1"] == pytest.approx(dev["macro_f1"])
    assert "taps (backbone hidden states read; 0 = embeddings): 0, 2" in body
    for entry in manifest["inputs"]:  # the training data, with hashes
        assert f"| `{entry['path']}` | `{entry['sha256']}` |" in body
    assert f"```bash\n{command_line(manifest['command'])}\n```" in body  # the manifest's command
    assert "load_adapter(" in body and "kadapter finetune --task" in body


def test_the_command_is_shown_as_typed():
    assert command_line(["/venv/bin/kadapter", "train-adapter", "--kind", "fac", "--data", "my data"]) == \
        "kadapter train-adapter --kind fac --data 'my data'"


def test_data_licenses_known_and_unknown(tmp_path):
    from kadapter_cli.artifacts.layout import DEMO_DATA

    assert data_license("tacred", [{"path": str(tmp_path / "train.json")}])[2].startswith("TACRED is licensed by the LDC")
    assert data_license("openentity", [{"path": str(tmp_path / "train.json")}]) is None
    assert data_license("openentity", [{"path": str(DEMO_DATA / "typing" / "train.json")}])[1] == "mit"
    # An adapter's data artifact made from the demo's T-REx documents: found through its manifest.
    trex_rc = tmp_path / "trex-rc"
    trex_rc.mkdir()
    (trex_rc / "manifest.json").write_text(json.dumps({"kind": "trex-rc", "inputs": [
        {"path": str(DEMO_DATA / "trex" / "a.json"), "sha256": "0"}]}))
    assert data_license("fac", [{"path": str(trex_rc / "manifest.json")}])[0] == "kadapter demo data"
