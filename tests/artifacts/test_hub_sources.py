"""Artifacts from the Hugging Face Hub, for real and with no network: a Hub on 127.0.0.1
(`tests/helpers/hub_server.py`) that `kadapter push` writes to and `huggingface_hub.snapshot_download`
fetches from into a temporary `HF_HOME`; then, with `HF_HUB_OFFLINE=1`, every command that takes an
adapter, a composition or a finetuned model reads it by its repository id from that cache, and gives
what the local folder gives. Repositories kadapter must not load are refused, saying why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.hub_server import HubServer
from typer.testing import CliRunner

from kadapter_cli.artifacts.io import sha256_file
from kadapter_cli.artifacts.layout import DEMO_DATA

TYPING = DEMO_DATA / "typing"
STEPS = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16",
         "--threads", "1")


def kadapter(workdir: Path, *args) -> "object":
    from kadapter_cli.cli import app

    return CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)


def ok(result) -> "object":
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_backbone, make_trex_rc) -> Path:
    """A workdir with an adapter `fac` (on the tiny backbone), its composition and a finetuned model."""
    workdir = tmp_path_factory.mktemp("hub") / "work"
    data = make_trex_rc(workdir / "trex-rc", 16, 4)
    ok(kadapter(workdir, "train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *STEPS))
    ok(kadapter(workdir, "compose", "fac"))
    ok(kadapter(workdir, "finetune", "--task", "openentity", "--data", TYPING, "--adapters", "fac", *STEPS,
                "--name", "typing"))
    return workdir


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 as `HF_ENDPOINT`, an empty `HF_HOME`, online."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def _same_tensors(a: Path, b: Path) -> None:
    left, right = _tensors(a), _tensors(b)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key].equal(right[key]), key


def test_pushed_artifacts_fetched_once_are_used_offline_by_repository_id(built, hub_env, tmp_path, monkeypatch):
    hub, work = hub_env, tmp_path / "work"
    for folder, repo in ((built / "adapters" / "fac", "kadapter-test/fac"),
                         (built / "compositions" / "fac", "kadapter-test/fac-set"),
                         (built / "finetuned" / "typing", "kadapter-test/typing")):
        ok(kadapter(work, "push", folder, repo))
    for repo in ("kadapter-test/fac", "kadapter-test/fac-set", "kadapter-test/typing"):  # fetched once, online
        ok(kadapter(work, "inspect", repo))
    snapshots = tmp_path / "hf-home" / "hub" / "models--kadapter-test--fac" / "snapshots"
    commit = hub.repos["kadapter-test/fac"].branches["main"]
    assert [p.name for p in snapshots.iterdir()] == [commit]  # laid out by huggingface_hub itself

    asked = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # compose: the same adapter as the local folder gives, its source recorded as the repository and commit
    ok(kadapter(work, "compose", "kadapter-test/fac", "--out", work / "from-hub"))
    local_comp = json.loads((built / "compositions" / "fac" / "composition.json").read_text())
    hub_comp = json.loads((work / "from-hub" / "composition.json").read_text())
    assert hub_comp["adapters"][0].pop("source") == f"hf://kadapter-test/fac@{commit}"
    local_comp["adapters"][0].pop("source")
    assert hub_comp == local_comp
    assert (sha256_file(work / "from-hub" / "adapters" / "fac" / "kadapter_adapter.safetensors")
            == sha256_file(built / "adapters" / "fac" / "kadapter_adapter.safetensors"))

    # finetune from the adapter's and from the composition's repository: the local run's model and metrics
    finetune = ("finetune", "--task", "openentity", "--data", TYPING, *STEPS)
    ok(kadapter(work, *finetune, "--adapters", built / "adapters" / "fac", "--name", "local"))
    ok(kadapter(work, *finetune, "--adapters", "kadapter-test/fac", "--name", "hub"))
    ok(kadapter(work, *finetune, "--adapters", "kadapter-test/fac-set", "--name", "hub-set"))
    runs = work / "finetuned"
    for name in ("hub", "hub-set"):
        assert json.loads((runs / name / "metrics.json").read_text()) == \
            json.loads((runs / "local" / "metrics.json").read_text())
        _same_tensors(runs / name / "model.safetensors", runs / "local" / "model.safetensors")
    inputs = json.loads((runs / "hub" / "manifest.json").read_text())["inputs"]
    from_hub = [i["path"] for i in inputs if i["path"].startswith("hf://")]
    assert f"hf://kadapter-test/fac@{commit}/kadapter_adapter.safetensors" in from_hub
    assert not any(str(tmp_path / "hf-home") in i["path"] for i in inputs)  # never this machine's cache

    # predict and evaluate from the finetuned model's repository: what the local folder prints
    records = TYPING / "dev.json"
    local = ok(kadapter(work, "predict", built / "finetuned" / "typing", records, "--scores")).stdout
    assert ok(kadapter(work, "predict", "kadapter-test/typing", records, "--scores")).stdout == local
    evaluated = ok(kadapter(work, "evaluate", "kadapter-test/typing", "--data", TYPING, "--split", "dev"))
    assert (work / "evaluations" / "typing-dev" / "metrics.json").is_file(), evaluated.stdout
    model = json.loads((work / "evaluations" / "typing-dev" / "manifest.json").read_text())["config"]["model"]
    assert model == f"hf://kadapter-test/typing@{hub.repos['kadapter-test/typing'].branches['main']}"
    # encode, train-probe --adapters: what the local folders give
    texts = tmp_path / "texts.txt"
    texts.write_text("Paris is in France .\nBerlin is a city .\n")
    for source, folder in (("kadapter-test/fac", built / "adapters" / "fac"),
                           ("kadapter-test/typing", built / "finetuned" / "typing")):
        ok(kadapter(work, "encode", folder, texts, "--out", work / "local.safetensors", "--overwrite"))
        ok(kadapter(work, "encode", source, texts, "--out", work / "hub.safetensors", "--overwrite"))
        _same_tensors(work / "hub.safetensors", work / "local.safetensors")
    probe = ("train-probe", "--corpus", DEMO_DATA / "corpus" / "corpus.txt", "--max-steps", "1", "--max-length", "24",
             "--batch-size", "4", "--device", "cpu")
    ok(kadapter(work, *probe, "--adapters", built / "adapters" / "fac", "--name", "local"))
    ok(kadapter(work, *probe, "--adapters", "kadapter-test/fac"))
    assert (work / "probes" / "fac" / "probe.safetensors").is_file()  # named after the repository, as finetune does
    _same_tensors(work / "probes" / "fac" / "probe.safetensors", work / "probes" / "local" / "probe.safetensors")

    # the Python API: KAdapterForTask, KAdapterModel, load_adapter by repository id
    import torch

    from kadapter import KAdapterForTask, KAdapterModel, load_adapter

    sample = json.loads(records.read_text())[:3]
    assert KAdapterForTask.from_pretrained("kadapter-test/typing").predict(sample, scores=True) == \
        KAdapterForTask.from_pretrained(built / "finetuned" / "typing").predict(sample, scores=True)
    local_encoder = KAdapterModel.from_pretrained(built / "adapters" / "fac")
    for source in ("kadapter-test/fac", "kadapter-test/fac-set", ["kadapter-test/fac"]):
        encoder = KAdapterModel.from_pretrained(source)
        assert encoder.adapter_names == ["fac"]
        assert torch.equal(encoder.encode(["Paris is in France ."]), local_encoder.encode(["Paris is in France ."]))
    adapter, config, head = load_adapter("kadapter-test/fac")
    local_adapter, local_config, local_head = load_adapter(built / "adapters" / "fac")
    assert config == local_config and head.keys() == local_head.keys()
    assert all(torch.equal(v, local_adapter.state_dict()[k]) for k, v in adapter.state_dict().items())
    assert len(hub.requests) == asked  # offline: nothing was asked of the Hub

    hub.stop()
    assert ok(kadapter(work, "predict", "kadapter-test/typing", records, "--scores")).stdout == local


def test_a_revision_names_a_branch_and_an_existing_folder_wins_over_a_repository_id(built, hub_env, tmp_path,
                                                                                      monkeypatch):
    hub, work = hub_env, tmp_path / "work"
    ok(kadapter(work, "push", built / "adapters" / "fac", "kadapter-test/fac", "--revision", "v1"))
    assert "v1" in hub.repos["kadapter-test/fac"].branches
    shown = json.loads(ok(kadapter(work, "inspect", "kadapter-test/fac@v1", "--json")).stdout)
    assert shown["kind"] == "adapter" and shown["about"]["adapter kind"] == "fac"
    assert shown["path"] == f"hf://kadapter-test/fac@{hub.repos['kadapter-test/fac'].branches['v1']}"

    # A folder that exists at the path `org/name` is that folder: the Hub is not asked.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(built / "adapters" / "fac", tmp_path / "kadapter-test" / "elsewhere")
    asked = len(hub.requests)
    ok(kadapter(work, "compose", "kadapter-test/elsewhere", "--out", work / "local-comp"))
    assert len(hub.requests) == asked
    source = json.loads((work / "local-comp" / "composition.json").read_text())["adapters"][0]["source"]
    assert source == "kadapter-test/elsewhere"


def _publish(hub: HubServer, repo: str, folder: Path, changes: dict[str, bytes | None]) -> None:
    """Publishes a folder's files with `changes` applied (None removes a file)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for name, content in changes.items():
        if content is None:
            files.pop(name, None)
        else:
            files[name] = content
    hub.commit(repo, files, replace=True)


def test_repositories_kadapter_must_not_load_are_refused_saying_why(built, hub_env, tmp_path, monkeypatch):
    hub, work = hub_env, tmp_path / "work"
    adapter, finetuned = built / "adapters" / "fac", built / "finetuned" / "typing"
    finetune = ("finetune", "--task", "openentity", "--data", TYPING, *STEPS, "--adapters")

    # weights as a pickle only: refused before anything is fetched
    _publish(hub, "kadapter-test/pickled", adapter, {"kadapter_adapter.safetensors": None,
                                                     "kadapter_head.safetensors": None,
                                                     "pytorch_model.bin": b"\x80\x04 a pickle"})
    refused = kadapter(work, *finetune, "kadapter-test/pickled")
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[-1] == (
        "error: kadapter-test/pickled: the repository offers its weights only as a pickle (pytorch_model.bin); "
        "kadapter loads weights only from safetensors files, because loading a pickle can run code: ask its "
        "author for safetensors (`kadapter push` writes them)")
    assert not list((tmp_path / "hf-home").rglob("pytorch_model.bin"))

    # a config that asks for remote code (auto_map), with the code beside it: refused, the code never fetched
    config = json.loads((finetuned / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    config_bytes = json.dumps(config).encode()
    manifest = json.loads((finetuned / "manifest.json").read_text())
    manifest["files"]["config.json"] = __import__("hashlib").sha256(config_bytes).hexdigest()
    _publish(hub, "kadapter-test/remote-code", finetuned, {
        "config.json": config_bytes, "manifest.json": json.dumps(manifest).encode(),
        "modeling_evil.py": b"import os\nos.system('echo pwned')\n"})
    refused = kadapter(work, "predict", "kadapter-test/remote-code", TYPING / "dev.json")
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[-1] == (
        "error: kadapter-test/remote-code: config.json asks to run code that comes with the repository "
        "(auto_map); kadapter never runs such code, so it does not load this repository")
    assert not list((tmp_path / "hf-home").rglob("modeling_evil.py"))

    # another library's adapter (PEFT's files): not a kadapter artifact
    _publish(hub, "kadapter-test/peft", adapter, {"manifest.json": None, "kadapter_adapter.json": None,
                                                  "adapter_config.json": b'{"peft_type": "LORA"}'})
    refused = kadapter(work, *finetune, "kadapter-test/peft")
    assert refused.exit_code == 2
    assert "kadapter-test/peft: not a kadapter artifact (no manifest.json)" in refused.stderr

    # weights that differ from the sha256 the manifest lists
    _publish(hub, "kadapter-test/changed", adapter, {"kadapter_head.safetensors":
                                                     (built / "adapters" / "fac" / "kadapter_adapter.safetensors")
                                                     .read_bytes()})
    refused = kadapter(work, *finetune, "kadapter-test/changed")
    assert refused.exit_code == 2
    assert "kadapter-test/changed: kadapter_head.safetensors differs from the sha256 in manifest.json" in \
        refused.stderr

    # no such repository; offline and not in the cache
    refused = kadapter(work, *finetune, "kadapter-test/nowhere")
    assert refused.exit_code == 2
    assert "kadapter-test/nowhere: not a folder here, and there is no repository kadapter-test/nowhere on " \
           f"{hub.url}" in refused.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused = kadapter(work, *finetune, "kadapter-test/fac")
    assert refused.exit_code == 2
    assert "kadapter-test/fac: not a folder here, and not in the Hugging Face cache" in refused.stderr
    assert "HF_HUB_OFFLINE is set" in refused.stderr


def _plan(work: Path, pipeline: Path) -> dict[str, str]:
    """`kadapter run --dry-run --json`: each stage's reason to run, or "" when it is skipped."""
    shown = json.loads(ok(kadapter(work, "run", pipeline, "--dry-run", "--json")).stdout)
    return {s["stage"]: s["reason"] if s["ran"] else "" for s in shown["stages"]}


def test_a_pipeline_reads_repository_ids_with_a_revision_names_outputs_as_the_commands_do_and_reruns_on_a_moved_branch(
        built, hub_env, tmp_path, monkeypatch):
    hub, work = hub_env, tmp_path / "work"
    ok(kadapter(work, "push", built / "adapters" / "fac", "kadapter-test/fac", "--revision", "v1"))
    ok(kadapter(work, "push", built / "finetuned" / "typing", "kadapter-test/typing", "--revision", "v1"))
    steps = "{max-steps: 2, batch-size: 4, max-length: 24, device: cpu, limit: 16, threads: 1"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "stages:\n"
        "  - {name: compose, command: compose, inputs: [kadapter-test/fac@v1]}\n"
        f"  - name: finetune\n    command: finetune\n    options: {steps}, task: openentity, data: {TYPING},\n"
        "                adapters: kadapter-test/fac@v1}\n"
        f"  - name: probe\n    command: train-probe\n    options: {{adapters: kadapter-test/fac@v1, corpus: "
        f"{DEMO_DATA / 'corpus' / 'corpus.txt'}, max-steps: 1, max-length: 24}}\n"
        f"  - {{name: evaluate, command: evaluate, inputs: [kadapter-test/typing@v1], options: {{data: {TYPING}, "
        "split: dev}}\n")

    # The outputs are where the commands write them (named without the revision), so the run succeeds.
    ok(kadapter(work, "run", pipeline))
    for output in ("compositions/fac", "finetuned/openentity-fac", "probes/fac", "evaluations/typing-dev"):
        assert (work / output / "manifest.json").is_file(), output
    lock = __import__("yaml").safe_load((tmp_path / "work.lock.yaml").read_text())["stages"]
    fac_v1 = hub.repos["kadapter-test/fac"].branches["v1"]
    assert lock["finetune"]["inputs"]["kadapter-test/fac@v1"] == f"hf://kadapter-test/fac@{fac_v1}"

    # Nothing changed: nothing reruns.
    assert _plan(work, pipeline) == {"compose": "", "finetune": "", "probe": "", "evaluate": ""}

    # The branch v1 moved: the stages reading it rerun, the others do not.
    hub.commit("kadapter-test/fac", {"NOTES.md": b"a new commit on v1\n"}, branch="v1")
    changed = "input kadapter-test/fac@v1 changed"
    assert _plan(work, pipeline) == {"compose": changed, "finetune": changed, "probe": changed, "evaluate": ""}
    ok(kadapter(work, "run", pipeline))

    # Offline, the cache says where v1 was last seen: nothing reruns, and the Hub is not asked.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(hub.requests)
    assert _plan(work, pipeline) == {"compose": "", "finetune": "", "probe": "", "evaluate": ""}
    assert len(hub.requests) == asked

    # A composition named by its repository id: the run is named after the adapters it composes,
    # as `finetune` names it.
    from kadapter_cli.workflow.pipeline import Stage, command_io

    monkeypatch.delenv("HF_HUB_OFFLINE")
    ok(kadapter(work, "push", built / "compositions" / "fac", "kadapter-test/fac-set"))
    stage = Stage(name="f", command="finetune", options={"task": "openentity", "adapters": "kadapter-test/fac-set"})
    assert command_io(stage, work)[1] == [str(work / "finetuned" / "openentity-fac")]


def test_a_command_line_names_folders_of_the_hubs_cache_by_repository_and_commit(tmp_path):
    from kadapter_cli.artifacts.hub import describe_command

    commit = "a" * 40
    snapshot = tmp_path / "hub" / "models--org--bert" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    gone = tmp_path / "models--org--gone" / "snapshots" / ("b" * 40)  # not on disk: left as typed
    argv = ["kadapter", "train-adapter", "--backbone", str(snapshot), f"--data={snapshot / 'config.json'}",
            "--name", "x", str(gone)]
    assert describe_command(argv) == ["kadapter", "train-adapter", "--backbone", f"hf://org/bert@{commit}",
                                      f"--data=hf://org/bert@{commit}/config.json", "--name", "x", str(gone)]
