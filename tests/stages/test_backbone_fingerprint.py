"""Adapters record the backbone they were trained on (a fingerprint of its folder, config and weights);
`compose` and `finetune` refuse adapters of another backbone unless `--allow-backbone-mismatch`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"
FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


def _same_shape_other_weights(source: Path, target: Path) -> Path:
    """A copy of a backbone folder with one weight changed: same shape, other model."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory, tiny_backbone) -> tuple[Path, Path]:
    return tiny_backbone, _same_shape_other_weights(tiny_backbone, tmp_path_factory.mktemp("other") / "backbone")


def test_adapters_record_the_backbone_fingerprint_and_mismatches_are_refused(cli, tmp_path, two_backbones,
                                                                             make_trex_rc):
    from kadapter_cli.artifacts.io import sha256_file

    first, other = two_backbones
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    for name, backbone in (("fac", first), ("fac-other", other)):
        result = cli("train-adapter", "--kind", "fac", "--name", name, "--data", data, "--backbone", backbone,
                     *FAST, "--cache-features", "off")
        assert result.exit_code == 0, result.stderr
    adapters = cli.workdir / "adapters"
    fingerprint = json.loads((adapters / "fac" / "kadapter_adapter.json").read_text())["backbone_fingerprint"]
    assert fingerprint["path_hint"] == str(first.resolve())
    assert fingerprint["folder_name"] == first.name
    assert fingerprint["config_sha256"] == sha256_file(first / "config.json")
    short = {n: json.loads((adapters / n / "kadapter_adapter.json").read_text())["backbone_fingerprint"]
             for n in ("fac", "fac-other")}
    described = {n: f"folder {f['path_hint']} (config {f['config_sha256'][:12]}, weights {f['weights_sha256'][:12]})"
                 for n, f in short.items()}
    assert short["fac"]["weights_sha256"] != short["fac-other"]["weights_sha256"]

    # compose: both fingerprints in the message, exit 2, nothing written; the override composes.
    refused = cli("compose", "fac", "fac-other")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: adapters were trained on different backbones: '{adapters / 'fac'}' on {described['fac']}, "
        f"'{adapters / 'fac-other'}' on {described['fac-other']}; pass --allow-backbone-mismatch to use them anyway")
    assert not (cli.workdir / "compositions").exists()
    assert cli("compose", "fac", "fac-other", "--allow-backbone-mismatch").exit_code == 0

    # finetune with the adapter on the other weights of the same shape: refused, unless asked.
    args = ("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", "--backbone", other, *FAST)
    refused = cli(*args)
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: adapter 'fac' was trained on {described['fac']}, but the backbone given is "
        f"{described['fac-other']}; pass --allow-backbone-mismatch to use it anyway")
    assert not (cli.workdir / "finetuned").exists()
    assert cli(*args, "--allow-backbone-mismatch").exit_code == 0
    config = json.loads((cli.workdir / "finetuned" / "openentity-fac" / "config.json").read_text())
    assert config["backbone_fingerprint"] == short["fac-other"]
    # The adapter's own backbone (the default) passes without a word.
    assert cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *FAST,
               "--name", "own").exit_code == 0
