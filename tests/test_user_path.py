"""What a user meets around the happy path (issue 17): results never silently wrong, defaults
that fit, clear refusals. Every test goes through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"
FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


def _trex_rc(folder: Path) -> Path:
    """A small `trex-rc/` artifact: 16 training examples of two relations."""
    folder.mkdir(parents=True)
    rows = [{"id": f"d{i}", "docid": f"d{i}", "tokens": ["Paris", "lies", "in", "France", "near", str(i)],
             "subj_start": 0, "subj_end": 0, "obj_start": 3, "obj_end": 3, "relation": ("P17", "P131")[i % 2],
             "subj_label": "Q90", "obj_label": "Q142"} for i in range(20)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    (folder / "relations.json").write_text(json.dumps(["P131", "P17"]))
    return folder


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


def test_adapters_record_the_backbone_fingerprint_and_mismatches_are_refused(cli, tmp_path, two_backbones):
    from kadapter_cli.artifacts import sha256_file

    first, other = two_backbones
    data = _trex_rc(tmp_path / "trex-rc")
    for name, backbone in (("fac", first), ("fac-other", other)):
        result = cli("train-adapter", "--kind", "fac", "--name", name, "--data", data, "--backbone", backbone,
                     *FAST, "--cache-features", "off")
        assert result.exit_code == 0, result.stderr
    adapters = cli.workdir / "adapters"
    fingerprint = json.loads((adapters / "fac" / "adapter_config.json").read_text())["backbone_fingerprint"]
    assert fingerprint["folder"] == str(first.resolve())
    assert fingerprint["config_sha256"] == sha256_file(first / "config.json")
    short = {n: json.loads((adapters / n / "adapter_config.json").read_text())["backbone_fingerprint"]
             for n in ("fac", "fac-other")}
    described = {n: f"folder {f['folder']} (config {f['config_sha256'][:12]}, weights {f['weights_sha256'][:12]})"
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


def test_prepare_trex_refuses_to_write_an_empty_artifact_and_gives_the_numbers(cli, shared_data):
    import collections

    sample = shared_data / "trex"
    counts = collections.Counter(json.loads(line)["relation"] for line in _prepared(cli, sample))
    del counts["P31"]
    largest = max(sorted(counts), key=counts.get)

    refused = cli("prepare-trex", sample)  # the default --min-count 50 on a two-document sample
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: {sum(counts.values())} examples in {len(counts)} relations, all below --min-count 50 (the largest, "
        f"{largest}, has {counts[largest]}; try --min-count {counts[largest]}); refusing to write an empty trex-rc "
        "(pass --allow-empty to write it)")
    assert not (cli.workdir / "trex-rc").exists()

    written = cli("prepare-trex", sample, "--allow-empty")
    assert written.exit_code == 0
    assert "warning: " in written.stderr and "the trex-rc written is empty" in written.stderr
    assert json.loads((cli.workdir / "trex-rc" / "relations.json").read_text()) == []


def _prepared(cli, sample: Path) -> list[str]:
    """Every example of the sample, with no relation left out by count."""
    out = cli.workdir.parent / "all-relations"
    assert cli("prepare-trex", sample, "--min-count", "0", "--out", out).exit_code == 0
    return [line for split in ("train", "dev") for line in (out / f"{split}.jsonl").read_text().splitlines()]
