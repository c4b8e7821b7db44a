"""The bundled demo data (kadapter_cli/demo_data): real formats, learnable content, reproducible bytes."""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import pytest

from kadapter_cli.artifacts.layout import DEMO_DATA

REPO = Path(__file__).resolve().parents[2]
OPENENTITY_LABELS = {"entity", "location", "time", "organization", "object", "event", "place", "person", "group"}


def trex_documents() -> list[dict]:
    docs = []
    for path in sorted((DEMO_DATA / "trex").iterdir()):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            docs += json.load(f)
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return trex_documents()


# ---------------------------------------------------------------- T-REx


def test_trex_has_the_real_dumps_schema(docs, shared_data):
    real = json.loads((shared_data / "trex" / "sample-output.json").read_text(encoding="utf-8"))[0]
    real_triple = real["triples"][0]
    assert {p.suffix for p in (DEMO_DATA / "trex").iterdir()} == {".json", ".gz"}
    for doc in docs:
        assert set(doc) == set(real)
        for triple in doc["triples"]:
            assert set(triple) == set(real_triple)
            for role in ("subject", "predicate", "object"):
                assert set(triple[role]) == set(real_triple[role])


def test_trex_offsets_are_consistent(docs):
    for doc in docs:
        text = doc["text"]
        assert doc["docid"] == doc["uri"] and doc["docid"].startswith("http://www.wikidata.org/entity/Q")
        words = doc["words_boundaries"]
        assert words == sorted(words) and all(0 <= a < b <= len(text) for a, b in words)
        starts, ends = {a for a, _ in words}, {b for _, b in words}
        for e in doc["entities"]:
            a, b = e["boundaries"]
            assert text[a:b] == e["surfaceform"], (doc["title"], e)
        for t in doc["triples"]:
            s0, s1 = doc["sentences_boundaries"][t["sentence_id"]]
            assert t["predicate"]["uri"].startswith("http://www.wikidata.org/prop/direct/P")
            for role in ("subject", "object", "predicate"):
                entity = t[role]
                if entity["boundaries"] is None:
                    assert entity["surfaceform"] is None
                    continue
                a, b = entity["boundaries"]
                assert text[a:b] == entity["surfaceform"] and s0 <= a < b <= s1
                assert a in starts and b in ends  # word-aligned: clean_T_REx.py keeps the triple
            if t["subject"]["boundaries"] is None:
                assert t["annotator"] == "NoSubject-Triple-aligner"


def test_trex_is_big_and_varied_enough_to_learn_relations(docs):
    triples = [t for d in docs for t in d["triples"] if t["subject"]["boundaries"] and t["object"]["boundaries"]]
    relations = Counter(t["predicate"]["uri"].rsplit("/", 1)[1] for t in triples)
    assert len(triples) >= 3000
    assert len(relations) >= 8 and "P31" in relations  # P31 is there for the pipeline to drop
    assert min(relations.values()) >= 50
    lengths = []
    for d in docs:
        for s0, s1 in d["sentences_boundaries"]:
            lengths.append(sum(1 for a, b in d["words_boundaries"] if s0 <= a and b <= s1))
    assert 15 <= statistics.mean(lengths) <= 25
    # Several wordings per relation, not one template repeated.
    for rel in relations:
        contexts = {d["text"][t["subject"]["boundaries"][1]:t["object"]["boundaries"][0]].strip()
                    for d in docs for t in d["triples"] if t["predicate"]["uri"].endswith("/" + rel)
                    and t["subject"]["boundaries"] and t["object"]["boundaries"]
                    and t["subject"]["boundaries"][1] <= t["object"]["boundaries"][0]}
        assert len(contexts) >= 3, rel


# ---------------------------------------------------------------- corpus


def conllu_sentences(path: Path) -> list[tuple[dict[str, str], list[list[str]]]]:
    sentences, comments, rows = [], {}, []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#"):
            key, _, value = line[2:].partition(" = ")
            comments[key] = value
        elif line:
            rows.append(line.split("\t"))
        elif rows:
            sentences.append((comments, rows))
            comments, rows = {}, []
    return sentences


def test_corpus_conllu_is_well_formed_and_matches_the_text():
    lines = (DEMO_DATA / "corpus" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    sentences = conllu_sentences(DEMO_DATA / "corpus" / "corpus.conllu")
    assert 1500 <= len(lines) <= 3000 and len(set(lines)) == len(lines)
    assert len(sentences) == len(lines)
    for line, (comments, rows) in zip(lines, sentences):
        assert comments["text"] == line
        assert all(len(r) == 10 for r in rows)
        assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
        heads = [int(r[6]) for r in rows]
        assert all(0 <= h <= len(rows) and h != i for i, h in enumerate(heads, start=1))
        assert [r[7] for r in rows if r[6] == "0"] == ["root"]
        rebuilt = "".join(r[1] + ("" if "SpaceAfter=No" in r[9] else " ") for r in rows).rstrip()
        assert rebuilt == line
        # every word reaches the root (no cycles)
        for i in range(1, len(rows) + 1):
            seen, node = set(), i
            while node != 0:
                assert node not in seen
                seen.add(node)
                node = heads[node - 1]


def test_corpus_has_varied_syntax():
    deprels = Counter(r[7] for _, rows in conllu_sentences(DEMO_DATA / "corpus" / "corpus.conllu") for r in rows)
    for relation in ("nsubj", "dobj", "nsubjpass", "relcl", "advcl", "ccomp", "conj", "dative", "xcomp", "prep"):
        assert deprels[relation] >= 20, relation


# ---------------------------------------------------------------- entity typing


@pytest.fixture(scope="module")
def typing() -> dict[str, list[dict]]:
    return {s: json.loads((DEMO_DATA / "typing" / f"{s}.json").read_text(encoding="utf-8")) for s in ("train", "dev", "test")}


def test_typing_is_openentity_format(typing):
    assert {s: len(r) for s, r in typing.items()} == {"train": 600, "dev": 200, "test": 200}
    for records in typing.values():
        for r in records:
            assert set(r) == {"sent", "start", "end", "labels"}
            sent = r["sent"]
            assert 0 <= r["start"] < r["end"] <= len(sent)
            # the mention is whole space-separated tokens
            assert (r["start"] == 0 or sent[r["start"] - 1] == " ") and (r["end"] == len(sent) or sent[r["end"]] == " ")
            assert set(r["labels"]) <= OPENENTITY_LABELS
    labels = Counter(label for r in typing["train"] for label in r["labels"])
    assert set(labels) == OPENENTITY_LABELS  # every type occurs
    assert sum(not r["labels"] for r in typing["train"]) >= 30  # and some mentions have none
    keys = [(r["sent"], r["start"]) for recs in typing.values() for r in recs]
    assert len(keys) == len(set(keys))  # no test record copies a training one


def test_typing_types_follow_the_trex_facts(typing, docs):
    """A mention that is a T-REx subject is a person iff the facts give it an occupation, an
    organization iff they give it an industry: the knowledge the fac adapter learns decides."""
    relations_of_uri: dict[str, set[str]] = {}
    uri_of_name: dict[str, str] = {}
    for d in docs:
        for t in d["triples"]:
            relations_of_uri.setdefault(t["subject"]["uri"], set()).add(t["predicate"]["uri"].rsplit("/", 1)[1])
            if t["subject"]["boundaries"] and t["subject"]["annotator"] != "Simple_Coreference":
                uri_of_name[t["subject"]["surfaceform"]] = t["subject"]["uri"]
    relations_of = {name: relations_of_uri[uri] for name, uri in uri_of_name.items()}
    checked = 0
    for r in typing["test"]:
        mention = r["sent"][r["start"]:r["end"]]
        rels = relations_of.get(mention)
        if rels is None:
            continue
        checked += 1
        if "P106" in rels:
            assert r["labels"] == ["person"], r
        elif "P452" in rels:
            assert r["labels"] == ["organization"], r
        else:
            assert "location" in r["labels"], r
    assert checked >= 80


# ---------------------------------------------------------------- packaging and reproducibility


def test_demo_data_is_small():
    size = sum(p.stat().st_size for p in DEMO_DATA.rglob("*") if p.is_file())
    assert size < 3_000_000


def test_generator_reproduces_the_bundled_files(tmp_path):
    pytest.importorskip("spacy")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_demo_data
    finally:
        sys.path.remove(str(REPO / "tools"))
    make_demo_data.generate(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(DEMO_DATA) for p in DEMO_DATA.rglob("*") if p.is_file())
    assert made == bundled
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (DEMO_DATA / rel).read_bytes(), rel
