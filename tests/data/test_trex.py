"""`kadapter prepare-trex`: T-REx dumps → trex-rc/ (records, errors, the original's relation set)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

import pytest

from kadapter_cli.data.trex import iter_json_array

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "prepare_trex_rss.py"
SPLIT_FILES = ("train.jsonl", "dev.jsonl", "relations.json")


@pytest.fixture(scope="module")
def sample(shared_data) -> Path:
    return shared_data / "trex" / "sample-output.json"


@pytest.fixture(scope="module")
def sample_docs(sample) -> list[dict]:
    return json.loads(sample.read_text(encoding="utf-8"))


def expected_examples(docs: list[dict], entities_only: bool = False) -> dict[tuple, dict]:
    """The examples the rules give, written out plainly (independent of kadapter_cli.data.trex): the
    subject a Q-item, the object a Q-item or (unless `entities_only`) a typed literal."""
    out: dict[tuple, dict] = {}
    for doc in docs:
        docid = doc["docid"].split("/")[-1]
        text = doc["text"]
        for triple in doc["triples"]:
            subj, obj = triple["subject"], triple["object"]
            relation = triple["predicate"]["uri"].split("/")[-1]
            if not re.fullmatch(r"P\d+", relation):
                continue
            if subj["boundaries"] is None or obj["boundaries"] is None:
                continue
            subj_label, obj_label = subj["uri"].split("/")[-1], obj["uri"].split("/")[-1]
            if "^^" in obj["uri"] and not entities_only:
                obj_label = obj["uri"].split("^^")[0]
            elif not re.fullmatch(r"Q\d+", obj_label):
                continue
            if not re.fullmatch(r"Q\d+", subj_label):
                continue
            first, last = doc["sentences_boundaries"][triple["sentence_id"]]
            (s0, s1), (o0, o1) = subj["boundaries"], obj["boundaries"]
            if not (first <= s0 and s1 <= last and first <= o0 and o1 <= last):
                continue
            if s0 < o1 and o0 < s1:
                continue
            words = [(a, b) for a, b in doc["words_boundaries"] if first <= a and b <= last]
            starts, ends = [a for a, _ in words], [b for _, b in words]
            if not (s0 in starts and s1 in ends and o0 in starts and o1 in ends):
                continue
            spans = (starts.index(s0), ends.index(s1), starts.index(o0), ends.index(o1))
            key = (docid, triple["sentence_id"], *spans, relation)
            out.setdefault(key, {
                "docid": docid, "tokens": [text[a:b] for a, b in words],
                "subj_start": spans[0], "subj_end": spans[1], "obj_start": spans[2], "obj_end": spans[3],
                "relation": relation, "subj_label": subj_label, "obj_label": obj_label,
                "surface": (text[s0:s1], text[o0:o1]),
            })
    return out


def read_split(folder: Path) -> list[dict]:
    return [json.loads(line) for name in ("train.jsonl", "dev.jsonl")
            for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def split_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in SPLIT_FILES}


def run_ok(cli, *args):
    result = cli("prepare-trex", *args)
    assert result.exit_code == 0, result.stderr
    return result


def test_sample_gives_exactly_the_examples_the_rules_give(cli, sample, sample_docs, tmp_path):
    out = tmp_path / "rc"
    run_ok(cli, sample, "--min-count", "1", "--out", out)
    expected = expected_examples(sample_docs)
    records = read_split(out)
    assert len(records) == len(expected) == 71
    by_key = {(r["docid"], *r["id"].split("-")[1:2], r["subj_start"], r["subj_end"], r["obj_start"],
               r["obj_end"], r["relation"]): r for r in records}
    assert len(by_key) == len(records)
    assert {(k[0], int(k[1]), *k[2:]) for k in by_key} == set(expected)
    for key, want in expected.items():
        got = by_key[(key[0], str(key[1]), *key[2:])]
        assert {k: got[k] for k in want if k != "surface"} == {k: v for k, v in want.items() if k != "surface"}
        subj_words = "".join(got["tokens"][got["subj_start"]:got["subj_end"] + 1])
        obj_words = "".join(got["tokens"][got["obj_start"]:got["obj_end"] + 1])
        assert (subj_words, obj_words) == tuple(re.sub(r"\s+", "", s) for s in want["surface"])
    assert sorted(r["id"] for r in records) == sorted(set(r["id"] for r in records))
    for name in ("train.jsonl", "dev.jsonl"):
        ids = [json.loads(line)["id"] for line in (out / name).read_text().splitlines()]
        assert ids == sorted(ids)
    assert json.loads((out / "relations.json").read_text()) == sorted({r["relation"] for r in records})

    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]
    assert manifest["kind"] == "trex-rc"
    assert manifest["inputs"][0]["path"] == str(sample)
    assert stats["documents"] == 2 and stats["triples"] == 112
    assert stats["dropped"] == {"duplicate": 28, "missing_boundaries": 13}
    assert stats["examples"] + sum(stats["dropped"].values()) == stats["triples"]
    assert stats["train"] + stats["dev"] == 71 and stats["dev"] > 0
    assert stats["literal_objects_per_relation"] == {"P729": 1}
    assert stats["examples_per_relation"]["P47"] == sum(1 for k in expected if k[-1] == "P47")


def test_literal_objects_are_kept_by_default_and_dropped_with_entities_only(cli, sample, sample_docs, tmp_path):
    # The sample's one literal-object triple: (Andorra, P729 service entry, 1970-01-22), three times.
    run_ok(cli, sample, "--min-count", "1", "--out", tmp_path / "all")
    literal = [r for r in read_split(tmp_path / "all") if r["relation"] == "P729"]
    assert len(literal) == 1
    (record,) = literal
    assert record["obj_label"] == "1970-01-22T00:00:00Z" and record["subj_label"] == "Q228"
    assert "".join(record["tokens"][record["obj_start"]:record["obj_end"] + 1]) == "1970-01-22"
    assert "P729" in json.loads((tmp_path / "all" / "relations.json").read_text())

    run_ok(cli, sample, "--min-count", "1", "--entities-only", "--out", tmp_path / "items")
    records = read_split(tmp_path / "items")
    assert len(records) == len(expected_examples(sample_docs, entities_only=True)) == 70
    assert all(re.fullmatch(r"Q\d+", r["obj_label"]) for r in records)
    assert "P729" not in json.loads((tmp_path / "items" / "relations.json").read_text())
    manifest = json.loads((tmp_path / "items" / "manifest.json").read_text())
    assert manifest["config"]["entities_only"] is True
    assert manifest["stats"]["dropped"] == {"duplicate": 28, "literal_object": 1, "missing_boundaries": 13}
    assert manifest["stats"]["literal_objects_per_relation"] == {}


def test_gzip_and_folder_walking_give_the_same_files(cli, sample, sample_docs, tmp_path):
    dumps = tmp_path / "dumps"
    (dumps / "b").mkdir(parents=True)
    (dumps / "a.json").write_text(json.dumps(sample_docs[:1]), encoding="utf-8")
    with gzip.open(dumps / "b" / "c.json.gz", "wt", encoding="utf-8") as f:
        json.dump(sample_docs[1:], f)
    (dumps / "README.md").write_text("not a dump")
    run_ok(cli, dumps, "--min-count", "1", "--out", tmp_path / "walked")
    run_ok(cli, sample, "--min-count", "1", "--out", tmp_path / "plain")
    assert split_bytes(tmp_path / "walked") == split_bytes(tmp_path / "plain")
    manifest = json.loads((tmp_path / "walked" / "manifest.json").read_text())
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.json", "c.json.gz"]


def test_the_same_document_twice_is_emitted_once(cli, sample, tmp_path):
    run_ok(cli, sample, "--min-count", "1", "--out", tmp_path / "once")
    run_ok(cli, sample, sample, "--min-count", "1", "--out", tmp_path / "twice")
    assert split_bytes(tmp_path / "twice") == split_bytes(tmp_path / "once")
    once = json.loads((tmp_path / "once" / "manifest.json").read_text())["stats"]
    twice = json.loads((tmp_path / "twice" / "manifest.json").read_text())["stats"]
    assert twice["dropped"]["duplicate"] == 2 * once["dropped"]["duplicate"] + once["examples"]


def test_drop_and_min_count_remove_relations_and_count_them(cli, sample, sample_docs, tmp_path):
    per_relation: dict[str, int] = {}
    for key in expected_examples(sample_docs):
        per_relation[key[-1]] = per_relation.get(key[-1], 0) + 1
    run_ok(cli, sample, "--drop", "P47", "--drop", "P17", "--min-count", "8", "--out", tmp_path / "rc")
    kept = sorted(r for r, n in per_relation.items() if r not in ("P47", "P17") and n >= 8)
    assert json.loads((tmp_path / "rc" / "relations.json").read_text()) == kept == ["P37", "P530"]
    assert {r["relation"] for r in read_split(tmp_path / "rc")} == set(kept)
    stats = json.loads((tmp_path / "rc" / "manifest.json").read_text())["stats"]
    assert stats["dropped"]["relation_dropped"] == per_relation["P47"] + per_relation["P17"]
    assert stats["dropped"]["below_min_count"] == sum(
        n for r, n in per_relation.items() if r not in ("P47", "P17") and n < 8)
    assert stats["examples"] == sum(per_relation[r] for r in kept)


def test_split_depends_only_on_seed_and_ids(cli, sample, sample_docs, tmp_path):
    reversed_dump = tmp_path / "reversed.json"
    reversed_dump.write_text(json.dumps(sample_docs[::-1], indent=1), encoding="utf-8")
    run_ok(cli, sample, "--min-count", "1", "--out", tmp_path / "a")
    run_ok(cli, reversed_dump, "--min-count", "1", "--out", tmp_path / "b")
    run_ok(cli, sample, "--min-count", "1", "--seed", "7", "--out", tmp_path / "c")
    run_ok(cli, sample, "--min-count", "1", "--dev-ratio", "0.5", "--out", tmp_path / "d")
    assert split_bytes(tmp_path / "a") == split_bytes(tmp_path / "b")
    dev_ids = {name: {r["id"] for r in map(json.loads, (tmp_path / name / "dev.jsonl").read_text().splitlines())}
               for name in "acd"}
    assert dev_ids["a"] != dev_ids["c"]
    assert dev_ids["a"] < dev_ids["d"]  # a larger ratio only moves more ids into dev
    assert 20 <= len(dev_ids["d"]) <= 50


def test_shards_merged_equal_a_single_run_and_workers_equal_one_process(cli, sample, sample_docs, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for i, doc in enumerate([sample_docs[0], sample_docs[1], sample_docs[0]]):
        (dumps / f"part-{i}.json").write_text(json.dumps([doc]), encoding="utf-8")
    run_ok(cli, dumps, "--min-count", "3", "--out", tmp_path / "single")
    run_ok(cli, dumps, "--min-count", "3", "--workers", "2", "--out", tmp_path / "workers")
    assert split_bytes(tmp_path / "workers") == split_bytes(tmp_path / "single")

    shards = tmp_path / "shards"
    run_ok(cli, dumps, "--shard", "1/2", "--out", shards / "s1")
    run_ok(cli, dumps, "--shard", "2/2", "--out", shards / "s2")
    shard_manifest = json.loads((shards / "s1" / "manifest.json").read_text())
    assert shard_manifest["kind"] == "trex-shard"
    assert [Path(i["path"]).name for i in shard_manifest["inputs"]] == ["part-0.json", "part-2.json"]
    run_ok(cli, "--merge", shards, "--min-count", "3", "--out", tmp_path / "merged")
    assert split_bytes(tmp_path / "merged") == split_bytes(tmp_path / "single")
    single = json.loads((tmp_path / "single" / "manifest.json").read_text())["stats"]
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())["stats"]
    for key in ("documents", "triples", "examples", "dropped", "examples_per_relation"):
        assert merged[key] == single[key]

    result = cli("prepare-trex", "--merge", shards / "s1", "--out", tmp_path / "partial")
    assert result.exit_code == 2 and "2/2" in result.stderr and "missing" in result.stderr

    # Shards keep literal objects; --entities-only applies at the merge, as in a single run.
    run_ok(cli, dumps, "--min-count", "1", "--entities-only", "--out", tmp_path / "single-items")
    run_ok(cli, dumps, "--min-count", "1", "--entities-only", "--workers", "2", "--out", tmp_path / "workers-items")
    run_ok(cli, "--merge", shards, "--min-count", "1", "--entities-only", "--out", tmp_path / "merged-items")
    assert split_bytes(tmp_path / "merged-items") == split_bytes(tmp_path / "single-items")
    assert split_bytes(tmp_path / "workers-items") == split_bytes(tmp_path / "single-items")
    assert split_bytes(tmp_path / "merged-items") != split_bytes(tmp_path / "merged")
    result = cli("prepare-trex", dumps, "--shard", "1/2", "--entities-only", "--out", tmp_path / "s-items")
    assert result.exit_code == 2 and "--merge" in result.stderr


def test_malformed_json_names_the_file_and_document(cli, sample, tmp_path):
    broken = tmp_path / "broken.json"
    text = sample.read_text(encoding="utf-8")
    second = text.index('"docid"', text.index('"docid"') + 1)
    broken.write_text(text[:second] + '"docid" "Q1", ' + text[second + 7:], encoding="utf-8")
    result = cli("prepare-trex", broken, "--out", tmp_path / "rc")
    assert result.exit_code == 2
    assert str(broken) in result.stderr and "document 2" in result.stderr and "malformed JSON" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "rc").exists()

    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(gzip.compress(text.encode())[:5000])
    result = cli("prepare-trex", truncated, "--out", tmp_path / "rc")
    assert result.exit_code == 2 and str(truncated) in result.stderr


def test_malformed_document_is_an_error_or_skipped_and_counted(cli, sample_docs, tmp_path):
    docs = json.loads(json.dumps(sample_docs))
    del docs[1]["text"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(docs), encoding="utf-8")
    result = cli("prepare-trex", bad, "--min-count", "1", "--out", tmp_path / "rc")
    assert result.exit_code == 2
    assert f"{bad}, document 2 (Q7026): document has no 'text'" in result.stderr

    docs = json.loads(json.dumps(sample_docs))
    docs[0]["triples"][0]["subject"]["boundaries"] = [0, 10**9]
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(docs), encoding="utf-8")
    result = cli("prepare-trex", outside, "--out", tmp_path / "rc")
    assert result.exit_code == 2 and "document 1 (Q228)" in result.stderr and "outside the text" in result.stderr

    run_ok(cli, bad, "--min-count", "1", "--skip-bad", "--out", tmp_path / "rc")
    stats = json.loads((tmp_path / "rc" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 1 and stats["bad_documents"] == 1
    assert {r["docid"] for r in read_split(tmp_path / "rc")} == {"Q228"}


def test_limit_reads_only_the_first_documents(cli, sample, tmp_path):
    run_ok(cli, sample, sample, "--limit", "1", "--min-count", "1", "--out", tmp_path / "rc")
    stats = json.loads((tmp_path / "rc" / "manifest.json").read_text())["stats"]
    assert stats["documents"] == 1
    assert {r["docid"] for r in read_split(tmp_path / "rc")} == {"Q228"}


def test_unreadable_input_and_bad_options_are_exit_2(cli, sample, tmp_path):
    result = cli("prepare-trex", tmp_path / "missing.json")
    assert result.exit_code == 2 and "missing.json" in result.stderr and "not found" in result.stderr
    result = cli("prepare-trex", sample, "--shard", "3/2")
    assert result.exit_code == 2 and "--shard" in result.stderr
    result = cli("prepare-trex", sample, "--drop", "instance_of")
    assert result.exit_code == 2 and "--drop" in result.stderr
    run_ok(cli, sample, "--min-count", "1")
    assert (cli.workdir / "trex-rc" / "train.jsonl").is_file()
    result = cli("prepare-trex", sample)
    assert result.exit_code == 2 and "--overwrite" in result.stderr


def test_external_sort_with_tiny_runs_gives_the_same_files(cli, sample, tmp_path, monkeypatch):
    from kadapter_cli.data import trex

    run_ok(cli, sample, sample, "--min-count", "1", "--out", tmp_path / "normal")
    monkeypatch.setattr(trex, "RUN_CHARS", 3000)  # ~2 examples a run → dozens of runs
    monkeypatch.setattr(trex, "MERGE_FAN_IN", 4)  # → several merge levels
    trex.prepare_trex([sample, sample], tmp_path / "tiny-runs", min_count=1)
    assert split_bytes(tmp_path / "tiny-runs") == split_bytes(tmp_path / "normal")


@pytest.mark.parametrize("chunk", [1, 3, 17])
def test_streaming_reader_equals_json_load_at_any_chunk_size(tmp_path, chunk):
    values = [1, 2.5e-3, -40, "a\\u00e9\u00e9\"b", {"x": [True, None, False]}, [], {}, "[{,]}", 123456789]
    path = tmp_path / "array.json"
    path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    assert [v for _, v in iter_json_array(path, chunk_chars=chunk)] == values


def test_streaming_reader_on_the_sample_with_small_chunks(sample, sample_docs):
    assert [d for _, d in iter_json_array(sample, chunk_chars=4096)] == sample_docs


def test_memory_benchmark_helper_reports_peak_rss(sample, tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_trex_rss", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    result = benchmark.measure(sample, copies=(1, 2), workdir=tmp_path)
    assert [r["copies"] for r in result] == [1, 2]
    assert all(r["peak_rss_mib"] > 10 for r in result)


# ---------------------------------------------------------------- around the happy path


def _prepared(cli, sample: Path) -> list[str]:
    """Every example of the sample, with no relation left out by count."""
    out = cli.workdir.parent / "all-relations"
    assert cli("prepare-trex", sample, "--min-count", "0", "--out", out).exit_code == 0
    return [line for split in ("train", "dev") for line in (out / f"{split}.jsonl").read_text().splitlines()]


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
