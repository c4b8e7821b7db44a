"""`kadapter import-original`: microsoft/K-Adapter checkpoints → adapter artifacts."""

from __future__ import annotations

import json
import os

import pytest
import torch
from original_checkpoint import FFN, LIN_MAX, N_REL, H, W, original_state_dict

from kadapter_cli.modeling.adapter import load_adapter
from kadapter_cli.modeling.heads import build_head


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("original")
    states = {"fac": original_state_dict("fac", 1), "lin": original_state_dict("lin", 2)}
    for kind, state in states.items():
        (folder / kind).mkdir()
        torch.save(state, folder / kind / "pytorch_model.bin")
    return folder, states


def test_imports_full_size_fac_and_lin_weights_exactly(cli, checkpoints, tmp_path):
    folder, states = checkpoints
    relations = tmp_path / "relations.json"
    relations.write_text(json.dumps([f"P{i}" for i in range(N_REL)]))
    result = cli("import-original", "--fac", folder / "fac" / "pytorch_model.bin",
                 "--lin", folder / "lin" / "pytorch_model.bin", "--relations", relations)
    assert result.exit_code == 0, result.stderr

    for kind in ("fac", "lin"):
        target = cli.workdir / "adapters" / kind
        adapter, config, head_state = load_adapter(target)
        original = states[kind]
        for key, value in adapter.state_dict().items():
            assert torch.equal(value, original[key]), key
        assert len(adapter.state_dict()) + len(head_state) == len(original)
        assert all(torch.equal(v, original[k]) for k, v in head_state.items())
        head = build_head(config.head, config.backbone_hidden_size)
        head.load_state_dict(head_state, strict=True)  # the head description rebuilds the same head

        assert (config.kind, config.backbone, config.backbone_hidden_size) == (kind, "roberta-large", H)
        assert (config.tap_layers, config.adapter_width, config.layers_per_tap) == ([0, 11, 22], W, 2)
        assert (config.num_heads, config.ffn_size, config.mask_padding) == (12, FFN, False)
        assert config.marker_style == ("original" if kind == "fac" else None)  # the bare "@"/"#" ids
        manifest = json.loads((target / "manifest.json").read_text())
        assert manifest["kind"] == "adapter"
        assert manifest["inputs"][0]["path"].endswith(f"{kind}/pytorch_model.bin")
        assert any("0,11,22" in note for note in manifest["config"]["notes"])
        assert manifest["stats"]["adapter_parameters"] == 47_251_200

    fac = load_adapter(cli.workdir / "adapters" / "fac")[1]
    lin = load_adapter(cli.workdir / "adapters" / "lin")[1]
    assert fac.labels[:2] == ["P0", "P1"] and len(fac.labels) == N_REL
    assert fac.head == {"type": "relation", "num_labels": N_REL, "dropout": 0.1, "com_dense": True}
    assert lin.head["type"] == "lin_original" and lin.head["max_length"] == LIN_MAX == lin.max_length

    shown = cli("inspect", "fac", "--json")
    assert shown.exit_code == 0, shown.stderr
    report = json.loads(shown.stdout)
    rows = {r["component"]: r for r in report["parameters"]}
    assert rows["adapter:fac"]["total"] == 47_251_200
    assert rows["head"]["total"] == 4_616_602  # com_dense + dense (2H→H each) + out_proj (H→410), the original's fac head
    assert report["total_parameters"] == sum(r["total"] for r in report["parameters"])
    table = cli("inspect", cli.workdir / "adapters" / "lin")
    assert table.exit_code == 0 and "47,251,200" in table.stdout and "adapter:lin" in table.stdout

    again = cli("import-original", "--fac", folder / "fac" / "pytorch_model.bin")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_unexpected_and_missing_keys_are_listed_and_nothing_is_written(cli, checkpoints, tmp_path):
    folder, states = checkpoints
    broken = dict(states["lin"])
    broken["adapter.1.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(2)
    del broken["self_attention.output.LayerNorm.bias"]
    torch.save(broken, tmp_path / "lin.bin")
    result = cli("import-original", "--fac", folder / "fac" / "pytorch_model.bin", "--lin", tmp_path / "lin.bin")
    assert result.exit_code == 2
    assert "lin.bin" in result.stderr
    assert "unexpected keys adapter.1.encoder.layer.0.attention.self.rotary.weight" in result.stderr
    assert "missing keys self_attention.output.LayerNorm.bias" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cli.workdir / "adapters" / "fac").exists()  # both are checked before either is written


def test_a_pickle_that_runs_code_is_refused(cli, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"adapter.0.down_project.weight": Exploit()}, tmp_path / "evil.bin")
    result = cli("import-original", "--fac", tmp_path / "evil.bin")
    assert result.exit_code == 2
    assert "evil.bin" in result.stderr and "refused to load" in result.stderr
    # the reason names the call the pickle would make, not torch's pointer to its documentation
    assert f"unsupported GLOBAL {os.mkdir.__module__}.mkdir" in result.stderr
    assert "Check the documentation" not in result.stderr
    assert not marker.exists()


def test_wrong_relation_count_and_missing_inputs_are_bad_input(cli, checkpoints, tmp_path):
    folder, _ = checkpoints
    relations = tmp_path / "relations.txt"
    relations.write_text("P17\nP19\n")
    result = cli("import-original", "--fac", folder / "fac" / "pytorch_model.bin", "--relations", relations)
    assert result.exit_code == 2 and "410 relations but 2 relation ids" in result.stderr
    assert cli("import-original").exit_code == 2
    missing = cli("import-original", "--lin", tmp_path / "nope.bin")
    assert missing.exit_code == 2 and "nope.bin: file not found" in missing.stderr
    not_torch = tmp_path / "text.bin"
    not_torch.write_text("hello")
    garbage = cli("import-original", "--lin", not_torch)
    assert garbage.exit_code == 2 and "text.bin" in garbage.stderr


def test_inspect_of_a_folder_that_is_not_an_artifact_is_bad_input(cli, tmp_path):
    result = cli("inspect", tmp_path)
    assert result.exit_code == 2 and "no manifest.json" in result.stderr
