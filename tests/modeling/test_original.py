"""`kadapter import-original`: microsoft/K-Adapter checkpoints → adapter artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.original_checkpoint import FFN, LIN_MAX, N_REL, H, W, original_state_dict

from kadapter_cli.errors import BadInput
from kadapter_cli.modeling.adapter import load_adapter
from kadapter_cli.modeling.backbone import BackboneShape
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.original import import_original, infer_config, read_checkpoint, read_relations


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


# ---------------------------------------------------------------- Cases found by mutation testing (docs/MUTATION.md) for `import_original`: what is read from the
# tensor shapes, what is filled in, and the message for each way a checkpoint can be wrong.

SMALL = BackboneShape(model_type="roberta", hidden_size=32, num_layers=24, num_heads=2, name_or_path="small")
PATH = Path("ckpt.bin")


def small_state(kind: str, width: int = 128, ffn: int = 40, depth: int = 3, layers: int = 2, out_rows: int = 7):
    state = {}
    for i in range(depth):
        state[f"adapter.{i}.down_project.weight"] = torch.zeros(width, 32)
        for j in range(layers):
            state[f"adapter.{i}.encoder.layer.{j}.intermediate.dense.weight"] = torch.zeros(ffn, width)
    state["out_proj.weight"] = torch.zeros(out_rows, 32)
    return state


def test_fac_config_from_shapes_and_the_originals_defaults():
    config = infer_config(small_state("fac"), "fac", "facx", PATH, backbone=SMALL)
    assert (config.name, config.kind, config.backbone, config.backbone_model_type) == ("facx", "fac", "small", "roberta")
    assert (config.backbone_hidden_size, config.backbone_num_layers) == (32, 24)
    assert (config.adapter_width, config.layers_per_tap, config.num_heads, config.ffn_size) == (128, 2, 2, 40)
    assert config.tap_layers == [0, 11, 22]
    assert (config.dropout, config.layer_norm_eps, config.init_std, config.mask_padding) == (0.1, 1e-5, 0.0002, False)
    assert config.labels == [f"rel_{i}" for i in range(7)]
    assert config.head == {"type": "relation", "num_labels": 7, "dropout": 0.1, "com_dense": True}
    assert config.max_length == 256
    named = infer_config(small_state("fac", out_rows=2), "fac", "f", PATH, backbone=SMALL, labels=["P17", "P19"])
    assert named.labels == ["P17", "P19"]


def test_lin_config_reads_its_max_length_from_the_head():
    config = infer_config(small_state("lin", width=32, out_rows=64, depth=2, layers=1), "lin", "lin", PATH,
                          backbone=SMALL, tap_layers=[0, 5])
    assert config.labels == [] and config.max_length == 64 and config.tap_layers == [0, 5]
    assert config.head == {"type": "lin_original", "max_length": 64, "dropout": 0.1, "com_dense": True}
    assert (config.num_heads, config.layers_per_tap) == (1, 1)  # heads are 64 wide, at least one


@pytest.mark.parametrize("change, message", [
    (lambda s: {k: v for k, v in s.items() if not k.startswith("adapter.")},
     "no adapter.{i}.encoder.layer.{j}.* keys (not a K-Adapter checkpoint?)"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("adapter.2.")},
     "the checkpoint has 2 adapter layers but 3 tap layers were given"),
    (lambda s: {k: v for k, v in s.items() if k != "out_proj.weight"},
     "missing key out_proj.weight (not a K-Adapter checkpoint?)"),
    (lambda s: {**s, "adapter.0.down_project.weight": torch.zeros(128, 48)},
     "adapters read 48-wide states, but small is 32 wide"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_with_the_reason(change, message):
    with pytest.raises(BadInput) as caught:
        infer_config(change(small_state("fac")), "fac", "fac", PATH, backbone=SMALL)
    assert str(caught.value) == f"{PATH}: {message}"


def test_adapters_without_encoder_layers_or_their_first_tensors_are_refused_by_name():
    no_layers = {k: v for k, v in small_state("fac").items() if ".encoder." not in k}
    with pytest.raises(BadInput) as caught:
        infer_config(no_layers, "fac", "fac", PATH, backbone=SMALL)
    assert str(caught.value) == f"{PATH}: no adapter.{{i}}.encoder.layer.{{j}}.* keys (not a K-Adapter checkpoint?)"
    for key in ("adapter.0.down_project.weight", "adapter.0.encoder.layer.0.intermediate.dense.weight"):
        with pytest.raises(BadInput) as caught:
            infer_config({k: v for k, v in small_state("fac").items() if k != key}, "fac", "fac", PATH, backbone=SMALL)
        assert str(caught.value) == f"{PATH}: missing key {key} (not a K-Adapter checkpoint?)"


def test_a_single_adapter_layer_with_one_tap_is_read():
    config = infer_config(small_state("fac", depth=1), "fac", "fac", PATH, backbone=SMALL, tap_layers=[7])
    assert (config.tap_layers, config.layers_per_tap) == ([7], 2)


def test_relation_count_must_match_the_head():
    with pytest.raises(BadInput) as caught:
        infer_config(small_state("fac"), "fac", "fac", PATH, backbone=SMALL, labels=["P17"])
    assert str(caught.value) == f"{PATH}: the checkpoint classifies 7 relations but 1 relation ids were given"


def test_read_relations_from_json_or_lines(tmp_path):
    (tmp_path / "relations.json").write_text(json.dumps(["P17", "P19"]))
    assert read_relations(tmp_path / "relations.json") == ["P17", "P19"]
    (tmp_path / "relations.txt").write_text("P17\n\n  P31 \n")
    assert read_relations(tmp_path / "relations.txt") == ["P17", "P31"]
    (tmp_path / "bad.json").write_text(json.dumps({"P17": 0}))
    with pytest.raises(BadInput, match="bad.json: expected a JSON list of relation ids"):
        read_relations(tmp_path / "bad.json")
    with pytest.raises(BadInput, match="nope.txt: file not found"):
        read_relations(tmp_path / "nope.txt")


class Thing:
    pass


def test_read_checkpoint_refusals_name_the_reason(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(BadInput, match=r"list.bin: expected a state dict \(a mapping of names to tensors\)"):
        read_checkpoint(tmp_path / "list.bin")
    (tmp_path / "html.bin").write_text("<html>")
    with pytest.raises(BadInput, match=r"html.bin: not a PyTorch checkpoint \(neither a zip archive nor a pickle"):
        read_checkpoint(tmp_path / "html.bin")
    (tmp_path / "cut.bin").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(BadInput, match=r"cut.bin: not a readable PyTorch checkpoint \("):
        read_checkpoint(tmp_path / "cut.bin")

    # A pickled object other than tensors: refused, and the reason names it.
    torch.save({"x": Thing()}, tmp_path / "object.bin")
    with pytest.raises(BadInput) as caught:
        read_checkpoint(tmp_path / "object.bin")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'object.bin'}: refused to load: the file is a pickle that would run code")
    assert "Thing" in message and "Please" not in message and message.endswith("a K-Adapter checkpoint holds only tensors")


def test_import_original_needs_a_checkpoint_and_two_names(tmp_path):
    with pytest.raises(BadInput) as caught:
        import_original(None, None, tmp_path)
    assert str(caught.value) == "give at least one checkpoint (fac and/or lin)"
    with pytest.raises(BadInput) as caught:
        import_original(tmp_path / "a.bin", tmp_path / "b.bin", tmp_path, name_fac="k", name_lin="k")
    assert str(caught.value) == (f"the fac and lin adapters would both be written to {tmp_path / 'k'}; "
                                 "give different names")


# ---------------------------------------------------------------- `kadapter import-original`, end to end, fast
# Narrow checkpoints (128-wide adapters on RoBERTa-large's 1024-wide states, few relations): the same code
# paths as the full-size ones of test_import_original.py in a fraction of the time.

NARROW = {"width": 128, "ffn": 96, "n_rel": 5, "lin_max": 12}
NOTES = [
    "The original checkpoints do not store their tap layers; 0,11,22 are those of the released pretraining "
    "and fine-tuning scripts (the paper says 0,11,23).",
    "Attention heads assumed 64 wide (12 for 768), as the original code hard-codes.",
    "The adapter attends to padding (mask_padding false): batches are padded to max length with the backbone's "
    "pad-token states, as the original padded every sequence.",
]
FAC_NOTE = "Entity markers: the bare '@'/'#' ids the original fac adapter learned (marker_style original)."
LABELS_NOTE = "The checkpoint has no relation ids; labels are rel_0..rel_{n-1} (pass --relations to name them)."


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    from helpers.original_checkpoint import original_state_dict

    folder = tmp_path_factory.mktemp("narrow")
    states = {"fac": original_state_dict("fac", 1, **NARROW), "lin": original_state_dict("lin", 2, **NARROW)}
    for kind, state in states.items():
        torch.save(state, folder / f"{kind}.bin")
    return folder, states


def _parameters(state, prefix_adapter: bool) -> int:
    return sum(v.numel() for k, v in state.items() if k.startswith("adapter.") == prefix_adapter)


def test_import_writes_exact_weights_config_manifest_and_card(cli, narrow, tmp_path):
    from kadapter_cli.modeling.adapter import load_adapter

    folder, states = narrow
    relations = tmp_path / "relations.txt"
    relations.write_text("P17\nP19\nP27\nP31\nP36\n")
    result = cli("import-original", "--fac", folder / "fac.bin", "--lin", folder / "lin.bin", "--relations", relations)
    assert result.exit_code == 0, result.stderr
    for kind, labels, max_length, head in (
            ("fac", ["P17", "P19", "P27", "P31", "P36"], 256,
             {"type": "relation", "num_labels": 5, "dropout": 0.1, "com_dense": True}),
            ("lin", [], 12, {"type": "lin_original", "max_length": 12, "dropout": 0.1, "com_dense": True})):
        target = cli.workdir / "adapters" / kind
        adapter, config, head_state = load_adapter(target)
        original = states[kind]
        weights = {**adapter.state_dict(), **head_state}
        assert set(weights) == set(original) and all(torch.equal(weights[k], original[k]) for k in original)
        assert (config.name, config.kind, config.labels, config.head, config.max_length) == \
            (kind, kind, labels, head, max_length)
        assert (config.adapter_width, config.ffn_size, config.num_heads, config.layers_per_tap) == (128, 96, 2, 2)
        assert (config.backbone, config.backbone_hidden_size, config.backbone_num_layers) == ("roberta-large", 1024, 24)
        assert (config.tap_layers, config.mask_padding, config.init_std) == ([0, 11, 22], False, 0.0002)

        manifest = json.loads((target / "manifest.json").read_text())
        assert manifest["config"] == {
            "source": "microsoft/K-Adapter", "checkpoint": str(folder / f"{kind}.bin"), "kind": kind, "name": kind,
            "tap_layers": [0, 11, 22], "mask_padding": False, "marker_style": "original" if kind == "fac" else None,
            "head": head, "notes": NOTES + ([FAC_NOTE] if kind == "fac" else [])}
        assert [i["path"] for i in manifest["inputs"]] == \
            [str(folder / f"{kind}.bin")] + ([str(relations)] if kind == "fac" else [])
        assert manifest["stats"] == {"adapter_parameters": _parameters(original, True),
                                     "head_parameters": _parameters(original, False), "tensors": len(original)}
        card = (target / "README.md").read_text()
        assert f"{_parameters(original, True):,}" in card
        saved = json.loads((target / "kadapter_adapter.json").read_text())
        assert [type(saved[k]) for k in ("num_heads", "adapter_width", "ffn_size")] == [int, int, int]
        # the imported adapter runs: 1024-wide states in, 1024-wide out, at every position
        tapped = [torch.randn(2, 5, 1024) for _ in config.tap_layers]
        out = adapter.eval()(tapped, torch.ones(2, 5))
        assert out.shape == (2, 5, 1024) and torch.isfinite(out).all()


def test_import_without_relations_names_them_rel_i_and_says_so(cli, narrow):
    folder, _ = narrow
    result = cli("import-original", "--fac", folder / "fac.bin", "--name-fac", "facts", "--taps", "0,5,9")
    assert result.exit_code == 0, result.stderr
    target = cli.workdir / "adapters" / "facts"
    config = json.loads((target / "kadapter_adapter.json").read_text())
    assert (config["name"], config["labels"], config["tap_layers"]) == \
        ("facts", [f"rel_{i}" for i in range(5)], [0, 5, 9])
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["config"]["notes"] == NOTES + [FAC_NOTE, LABELS_NOTE]
    assert manifest["config"]["tap_layers"] == [0, 5, 9]
    assert [i["path"] for i in manifest["inputs"]] == [str(folder / "fac.bin")]
    assert not (cli.workdir / "adapters" / "lin").exists()


def test_import_refuses_to_replace_unless_told(cli, narrow):
    folder, states = narrow
    assert cli("import-original", "--lin", folder / "lin.bin").exit_code == 0
    again = cli("import-original", "--lin", folder / "lin.bin")
    assert again.exit_code == 2
    target = cli.workdir / "adapters" / "lin"
    assert f"{target}: already exists; pass --overwrite to replace it" in again.stderr
    assert cli("import-original", "--lin", folder / "lin.bin", "--overwrite").exit_code == 0
    assert (target / "kadapter_adapter.safetensors").is_file()


def test_a_half_precision_checkpoint_imports_as_float32(cli, narrow, tmp_path):
    from kadapter_cli.modeling.adapter import load_adapter

    _, states = narrow
    half = {k: v.half() for k, v in states["lin"].items()}
    torch.save(half, tmp_path / "lin16.bin")
    assert cli("import-original", "--lin", tmp_path / "lin16.bin").exit_code == 0
    adapter, _, head_state = load_adapter(cli.workdir / "adapters" / "lin")
    weights = {**adapter.state_dict(), **head_state}
    assert all(v.dtype == torch.float32 and torch.equal(v, half[k].float()) for k, v in weights.items())


def test_a_checkpoint_of_another_shape_names_what_differs_and_writes_nothing(cli, narrow, tmp_path):
    folder, states = narrow
    broken = dict(states["fac"])
    broken["adapter.0.encoder.layer.0.output.dense.weight"] = torch.zeros(128, 7)
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "fac.bin")
    result = cli("import-original", "--fac", tmp_path / "fac.bin", "--lin", folder / "lin.bin")
    assert result.exit_code == 2
    assert (f"{tmp_path / 'fac.bin'}: not a K-Adapter fac checkpoint as released: shape mismatch "
            "adapter.0.encoder.layer.0.output.dense.weight [128, 7] != [128, 96]; unexpected keys extra.weight") \
        in " ".join(result.stderr.split())
    assert not (cli.workdir / "adapters" / "lin").exists()


def test_a_checkpoint_in_the_legacy_pickle_format_is_read(tmp_path, narrow):
    # torch.save before PyTorch 1.6 wrote a bare pickle (it starts with the protocol byte 0x80), not a zip
    _, states = narrow
    torch.save(states["lin"], tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.bin").read_bytes()[:1] == b"\x80"
    state = read_checkpoint(tmp_path / "legacy.bin")
    assert set(state) == set(states["lin"]) and all(torch.equal(state[k], v) for k, v in states["lin"].items())


REFUSED = "refused to load: the file is a pickle that would run code or build objects other than tensors"


def _refusal(read, path) -> str:
    with pytest.raises(BadInput) as caught:
        read(path)
    return str(caught.value)


def test_a_pickle_that_would_call_a_blocked_function_is_refused_naming_the_call(tmp_path):
    # protocol 2, GLOBAL os.system, STOP: what a pickle that runs code starts with
    (tmp_path / "evil.bin").write_bytes(b"\x80\x02cos\nsystem\n.")
    assert _refusal(read_checkpoint, tmp_path / "evil.bin") == (
        f"{tmp_path / 'evil.bin'}: {REFUSED} (Trying to load unsupported GLOBAL os.system whose module os is "
        "blocked.); a K-Adapter checkpoint holds only tensors")


def test_a_damaged_pickle_and_a_long_reason(tmp_path):
    (tmp_path / "damaged.bin").write_bytes(b"\x80\x02garbage")  # "g" (103) is not an opcode the loader allows
    assert _refusal(read_checkpoint, tmp_path / "damaged.bin") == \
        f"{tmp_path / 'damaged.bin'}: {REFUSED} (Unsupported operand 103); a K-Adapter checkpoint holds only tensors"

    long_name = type("K" * 300, (), {})
    globals()[long_name.__name__] = long_name  # picklable by name
    torch.save({"x": long_name()}, tmp_path / "long.bin")
    reason = _refusal(read_checkpoint, tmp_path / "long.bin").split(f"{REFUSED} (", 1)[1].rsplit("); a K-Adapter", 1)[0]
    assert len(reason) == 200 and reason.startswith("Unsupported global: GLOBAL ") and reason.endswith("KKKK")


def test_a_relations_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "relations.txt").write_bytes(b"P17\n\xff\xfe\n")
    assert _refusal(read_relations, tmp_path / "relations.txt") == (
        f"{tmp_path / 'relations.txt'}: cannot read: 'utf-8' codec can't decode byte 0xff in position 4: invalid start byte")
    (tmp_path / "folder").mkdir()
    assert _refusal(read_relations, tmp_path / "folder") == \
        f"{tmp_path / 'folder'}: cannot read: [Errno 21] Is a directory: '{tmp_path / 'folder'}'"
    (tmp_path / "ids.txt").write_text("P17\nPaís\n", encoding="utf-8")
    assert read_relations(tmp_path / "ids.txt") == ["P17", "País"]


def test_the_library_call_writes_named_adapters_with_its_command_and_returns_them(narrow, tmp_path):
    folder, _ = narrow
    command = ["kadapter", "import-original", "--fac", "fac.bin", "--lin", "lin.bin"]
    written = import_original(folder / "fac.bin", folder / "lin.bin", tmp_path / "adapters", command=command)
    assert written == [tmp_path / "adapters" / "fac", tmp_path / "adapters" / "lin"]
    for target in written:
        manifest = json.loads((target / "manifest.json").read_text())
        assert (manifest["kind"], manifest["command"]) == ("adapter", command)
        assert " ".join(command) in (target / "README.md").read_text()
    with pytest.raises(BadInput) as caught:
        import_original(None, folder / "lin.bin", tmp_path / "adapters")
    assert str(caught.value) == f"{tmp_path / 'adapters' / 'lin'}: already exists; pass overwrite=True to replace it"


def test_the_cli_names_what_it_imported_and_each_refused_file(cli, narrow, tmp_path):
    folder, states = narrow
    result = cli("import-original", "--lin", folder / "lin.bin")
    assert result.exit_code == 0 and f"imported {cli.workdir / 'adapters' / 'lin'}" in " ".join(result.stderr.split())
    missing = cli("import-original", "--fac", tmp_path / "nope.bin")
    assert missing.exit_code == 2 and f"{tmp_path / 'nope.bin'}: file not found" in " ".join(missing.stderr.split())
    narrow_states = {k: v[:, :768] if k == "adapter.0.down_project.weight" else v for k, v in states["fac"].items()}
    torch.save(narrow_states, tmp_path / "base.bin")
    wrong = cli("import-original", "--fac", tmp_path / "base.bin")
    assert wrong.exit_code == 2
    assert f"{tmp_path / 'base.bin'}: adapters read 768-wide states, but roberta-large is 1024 wide" in \
        " ".join(wrong.stderr.split())


def test_an_unreadable_or_non_tensor_checkpoint_is_refused_with_the_reason(tmp_path):
    (tmp_path / "cut.bin").write_bytes(b"PK\x03\x04" + b"\0" * 20)  # a zip cut short: a failed download
    assert _refusal(read_checkpoint, tmp_path / "cut.bin") == (
        f"{tmp_path / 'cut.bin'}: not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed reading "
        "zip archive: failed finding central directory. This is an internal miniz error. If you are seeing this "
        "error, there is a high likelihood that your checkpoint file is)")  # torch's reason, cut at 200 characters
    for name, state in (("numbers.bin", {"x": 1}), ("keys.bin", {1: torch.zeros(1)})):
        torch.save(state, tmp_path / name)
        assert _refusal(read_checkpoint, tmp_path / name) == \
            f"{tmp_path / name}: expected a state dict (a mapping of names to tensors)"
