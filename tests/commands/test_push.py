"""`kadapter push`: `--dry-run` lists exactly what would go (the manifest and every file it lists)
and the card's metadata, with no network; a push to a Hub on 127.0.0.1 (`tests/helpers/hub_server.py`)
uploads exactly that; cards carry what the Hub reads for an adapter (`library_name: kadapter`,
`base_model`, `base_model_relation`, tags), and no file is named as another library's."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers.hub_server import HubServer

from kadapter_cli.artifacts.layout import DEMO_DATA

TYPING = DEMO_DATA / "typing"
STEPS = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16",
         "--threads", "1")
REPO = "kadapter-test/tiny-roberta"


@pytest.fixture
def offline_hub_home(tmp_path, monkeypatch):
    """An empty `HF_HOME` of this test, online; returns its Hub cache folder."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home" / "hub"


def _card_meta(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_push_dry_run_lists_the_artifacts_files_and_its_card_metadata_and_push_uploads_them(
        cli, tmp_path, tiny_backbone, make_trex_rc, offline_hub_home, monkeypatch):
    with HubServer() as hub:
        snapshot = hub.fetched_model(REPO, tiny_backbone, offline_hub_home)
        commit = hub.repos[REPO].branches["main"]
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    assert cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", snapshot, *STEPS).exit_code == 0
    assert cli("compose", "fac").exit_code == 0
    assert cli("finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *STEPS).exit_code == 0
    adapter = cli.workdir / "adapters" / "fac"

    # --dry-run: no network at all (offline, and HF_ENDPOINT names a port nothing listens on)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    shown = cli("push", adapter, "kadapter-test/fac", "--dry-run")
    assert shown.exit_code == 0, shown.stderr
    manifest = json.loads((adapter / "manifest.json").read_text())
    expected = sorted({*manifest["files"], "manifest.json"})
    lines = shown.stdout.splitlines()
    assert lines[0] == f"would push {len(expected)} files (adapter) to kadapter-test/fac (revision main):"
    assert [line.split()[0] for line in lines[1:1 + len(expected)]] == expected
    assert [int(line.split()[1].replace(",", "")) for line in lines[1:1 + len(expected)]] == \
        [(adapter / f).stat().st_size for f in expected]
    card = _card_meta((adapter / "README.md").read_text())
    assert lines[1 + len(expected)] == "card metadata:"
    assert yaml.safe_load("\n".join(line[2:] for line in lines[2 + len(expected):])) == card
    assert card["library_name"] == "kadapter"
    assert card["base_model"] == REPO and card["base_model_relation"] == "adapter"
    assert {"kadapter", "adapter", "fac-adapter"} <= set(card["tags"])
    as_json = json.loads(cli("push", adapter, "kadapter-test/fac", "--dry-run", "--json").stdout)
    assert [f["path"] for f in as_json["files"]] == expected and as_json["card"] == card

    # the composition and the finetuned model: their cards name the backbone, the relation each has to it
    for folder, relation in ((cli.workdir / "compositions" / "fac", "adapter"),
                             (cli.workdir / "finetuned" / "openentity-fac", "finetune")):
        result = json.loads(cli("push", folder, "kadapter-test/x", "--dry-run", "--json").stdout)
        assert result["card"]["base_model"] == REPO and result["card"]["base_model_relation"] == relation
        assert result["card"]["library_name"] == "kadapter"
        assert [f["path"] for f in result["files"]] == \
            sorted({*json.loads((folder / "manifest.json").read_text())["files"], "manifest.json"})

    # a composition written before compositions had a card: one is made for the Hub, with the metadata
    old_comp = tmp_path / "old-comp"
    shutil.copytree(cli.workdir / "compositions" / "fac", old_comp)
    (old_comp / "README.md").unlink()
    old_manifest = json.loads((old_comp / "manifest.json").read_text())
    del old_manifest["files"]["README.md"]
    (old_comp / "manifest.json").write_text(json.dumps(old_manifest))
    result = json.loads(cli("push", old_comp, "kadapter-test/x", "--dry-run", "--json").stdout)
    assert "README.md" in [f["path"] for f in result["files"]] and not (old_comp / "README.md").exists()
    assert result["card"]["library_name"] == "kadapter" and result["card"]["base_model"] == REPO

    # no file anywhere is named as PEFT's or AdapterHub's
    assert not [p for p in cli.workdir.rglob("*") if p.name in ("adapter_config.json", "pytorch_adapter.bin")]
    assert json.loads((adapter / "kadapter_adapter.json").read_text())["backbone_fingerprint"]["revision"] == commit

    # pushing offline is refused, saying what --dry-run does
    refused = cli("push", adapter, "kadapter-test/fac")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == ("error: HF_HUB_OFFLINE is set and pushing needs the network; --dry-run "
                                      "shows what would go")

    # a push: exactly the files --dry-run listed, byte for byte
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        pushed = cli("push", adapter, "kadapter-test/fac", "--private")
        assert pushed.exit_code == 0, pushed.stderr
        files = hub.files("kadapter-test/fac")
        assert sorted(set(files) - {".gitattributes"}) == expected
        assert all(files[f] == (adapter / f).read_bytes() for f in expected)
        assert hub.repos["kadapter-test/fac"].private
        assert pushed.stdout.splitlines()[-1] == \
            f"→ {hub.url}/kadapter-test/fac (commit {hub.repos['kadapter-test/fac'].branches['main'][:12]})"


def test_push_refuses_what_is_not_a_model_and_a_repository_id_it_cannot_use(cli, tmp_path, make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc", 4, 2)
    (data / "manifest.json").write_text(json.dumps({"kind": "trex-rc", "files": {}}))
    refused = cli("push", data, "kadapter-test/data", "--dry-run")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (f"error: {data}: a 'trex-rc' artifact: push takes an adapter, a composition "
                                      "or a finetuned model")
    for repo_id in ("no-namespace", "kadapter-test/fac@v1", "../x/y"):
        refused = cli("push", data, repo_id, "--dry-run")
        assert refused.exit_code == 2
        assert f"error: repo_id must be ORG/NAME (a Hugging Face Hub repository id; a branch goes in --revision), got {repo_id!r}" \
            in refused.stderr
