"""kadapter's adapter files carry its own names (`kadapter_adapter.json`, `kadapter_adapter.safetensors`,
`kadapter_head.safetensors`): PEFT reads any `adapter_config.json` as its own, and AdapterHub writes
`adapter_config.json` + `pytorch_adapter.bin`. An adapter written before kadapter 0.2, under the old
names, still composes, fine-tunes and inspects; a composition and a push carry its files under the new
names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kadapter_cli.artifacts.layout import DEMO_DATA, OLD_ADAPTER_FILES
from kadapter_cli.artifacts.manifest import verify_files

TYPING = DEMO_DATA / "typing"
STEPS = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16",
         "--threads", "1")
OTHER_LIBRARIES = ("adapter_config.json", "adapter_model.safetensors", "pytorch_adapter.bin")


def as_written_before_0_2(adapter: Path, target: Path) -> Path:
    """A copy of an adapter under the file names (and with the manifest) kadapter wrote before 0.2."""
    shutil.copytree(adapter, target)
    manifest = json.loads((target / "manifest.json").read_text())
    for old, new in OLD_ADAPTER_FILES.items():
        (target / new).rename(target / old)
        manifest["files"][old] = manifest["files"].pop(new)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_an_adapter_under_the_old_names_composes_fine_tunes_and_pushes_under_the_new_ones(
        cli, tmp_path, tiny_backbone, make_trex_rc):
    from safetensors.torch import load_file

    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    assert cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *STEPS).exit_code == 0
    new = cli.workdir / "adapters" / "fac"
    assert sorted(p.name for p in new.glob("kadapter_*")) == [
        "kadapter_adapter.json", "kadapter_adapter.safetensors", "kadapter_head.safetensors"]
    old = as_written_before_0_2(new, tmp_path / "old" / "fac")
    verify_files(old)

    # compose: the composition holds the old adapter's files under the new names, its manifests agreeing
    assert cli("compose", old, "--out", tmp_path / "comp").exit_code == 0
    inside = tmp_path / "comp" / "adapters" / "fac"
    assert sorted(p.name for p in inside.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "kadapter_adapter.json", "kadapter_adapter.safetensors", "kadapter_head.safetensors", "manifest.json",
        "metrics.json"]
    verify_files(inside)
    verify_files(tmp_path / "comp")
    assert (old / "adapter_config.json").is_file() and json.loads((old / "manifest.json").read_text())["files"].keys() \
        >= set(OLD_ADAPTER_FILES)  # the old folder is left as it was

    # fine-tuning from the old adapter, and from its composition, gives the new adapter's model
    finetune = ("finetune", "--task", "openentity", "--data", TYPING, *STEPS, "--adapters")
    for name, adapters in (("new", new), ("old", old), ("old-comp", tmp_path / "comp")):
        result = cli(*finetune, adapters, "--name", name)
        assert result.exit_code == 0, result.stderr
    runs = cli.workdir / "finetuned"
    reference = load_file(runs / "new" / "model.safetensors")
    for name in ("old", "old-comp"):
        model = load_file(runs / name / "model.safetensors")
        assert model.keys() == reference.keys() and all(model[k].equal(reference[k]) for k in model)

    shown = json.loads(cli("inspect", old, "--json").stdout)
    assert shown["about"]["adapter kind"] == "fac" and shown["parameters"][0]["component"] == "adapter:fac"

    pushed = json.loads(cli("push", old, "kadapter-test/old", "--dry-run", "--json").stdout)
    names = {f["path"] for f in pushed["files"]}
    assert {"kadapter_adapter.json", "kadapter_adapter.safetensors", "kadapter_head.safetensors"} <= names
    assert not names & set(OLD_ADAPTER_FILES)

    # kadapter itself wrote no file under another library's name
    assert not [p for p in cli.workdir.rglob("*") if p.name in OTHER_LIBRARIES]
    assert not [p for p in (tmp_path / "comp").rglob("*") if p.name in OTHER_LIBRARIES]
