"""T-REx JSON dumps → `trex-rc/` (relation classification examples for the fac adapter).

A T-REx dump file is one JSON array of documents (`../shared/data/trex/README.md`). Each aligned
triple whose subject and object sit, word-aligned and non-overlapping, inside the sentence the
triple names becomes one example (docs/artifacts.md):
`{"id", "docid", "tokens", "subj_start", "subj_end", "obj_start", "obj_end", "relation",
"subj_label", "obj_label"}` with inclusive word spans relative to the sentence. The subject is a
Wikidata item (`Q..`); the object is an item or a literal (a date, a quantity): then `obj_label` is
the literal's value as the dump writes it, its datatype dropped (`1970-01-22T00:00:00Z`). The
original's relations include such facts (P569 date of birth, P577 publication date, ...);
`entities_only` leaves them out, as kadapter did before.

The stages, and why they look the way they do:

1. Extraction streams each file (`iter_json_array`) so memory holds one document at a time, not a
   file. Examples go out as JSON lines into sorted "runs" of bounded size.
2. Runs are merged (`heapq.merge`) into one stream sorted by line (= by id, since every line starts
   with its id) and duplicates are dropped. This is all a shard artifact holds (`--shard I/N`).
3. Finalisation counts examples per relation, drops literal-object examples with
   `--entities-only`, `--drop` relations and those under `--min-count`, and splits train/dev by a
   seeded hash of the id. Shards keep every example, so one set of shards serves both rules. It is the same code for a single
   run, a run with workers and a merge of shards, so all three give byte-identical files.
"""

from __future__ import annotations

import contextlib
import gzip
import heapq
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from kadapter_cli.artifacts.io import DEV_RATIO, SPLIT_SEED, in_dev_split, sha256_inputs, write_json
from kadapter_cli.artifacts.io import input_files as artifacts_input_files
from kadapter_cli.artifacts.manifest import find_artifacts, read_manifest, verify_files, write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.data.ray_engine import DEFAULT_ENGINE
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.progress import info

if TYPE_CHECKING:
    from kadapter_cli.data.ray_engine import RayOptions

TREX_KIND = "trex-rc"
SHARD_KIND = "trex-shard"
SHARD_EXAMPLES = "examples.jsonl"
DEFAULT_DROP = ("P31",)  # instance of, left out as K-Adapter did
DEFAULT_MIN_COUNT = 50  # relations with fewer examples are left out

# Why an example is not emitted; these are the keys of `stats["dropped"]`.
NOT_WIKIDATA_PROPERTY = "not_wikidata_property"  # the predicate is not a P-id
MISSING_BOUNDARIES = "missing_boundaries"  # subject or object not found in the text
NOT_WIKIDATA_ITEM = "not_wikidata_item"  # the subject is not a Q-item, or the object neither a Q-item nor a literal
LITERAL_OBJECT = "literal_object"  # --entities-only: the object is a literal (a date, a quantity)
OUTSIDE_SENTENCE = "outside_sentence"  # an entity is not inside the triple's sentence
OVERLAPPING_ENTITIES = "overlapping_entities"
NOT_WORD_ALIGNED = "not_word_aligned"  # an entity boundary falls inside a word
DUPLICATE = "duplicate"  # same (docid, sentence, spans, relation) seen before
RELATION_DROPPED = "relation_dropped"  # --drop
BELOW_MIN_COUNT = "below_min_count"  # --min-count

_ITEM_ID = re.compile(r"Q[1-9][0-9]*")
_PROPERTY_ID = re.compile(r"P[1-9][0-9]*")
_READ_CHUNK = 1 << 20  # characters read from a dump at a time
RUN_CHARS = 16 << 20  # example text buffered before a sorted run goes to disk (bounds memory)
MERGE_FAN_IN = 128  # runs merged at once (bounds open files)
_MAX_BAD_SAMPLES = 20  # bad-document messages kept in the manifest with --skip-bad


# ---------------------------------------------------------------- reading dumps


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The dump files named by `inputs`: files as given, folders walked in sorted order."""
    return artifacts_input_files(inputs, _is_dump, ".json or .json.gz")


def _is_dump(path: Path) -> bool:
    return path.name.endswith((".json", ".json.gz"))


def _open_text(path: Path):
    """Text stream of a dump; `.gz` is decompressed on the fly (detected by magic bytes too)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        if gzipped:
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror or e}", path) from None


def iter_json_array(path: str | Path, chunk_chars: int = _READ_CHUNK) -> Iterator[tuple[int, Any]]:
    """Yields `(index, element)` of the top-level JSON array in `path`, reading it in chunks.

    Memory holds the current chunk and the element being decoded, never the whole file.
    Malformed JSON is `BadInput` naming the file, the element (1-based) and line/column.
    """
    path = Path(path)
    decoder = json.JSONDecoder()
    stream = _open_text(path)
    buf = ""
    pos = 0  # position in buf
    lines_before = 0  # newlines in text already dropped from buf, for error line numbers
    eof = False

    def refill() -> bool:
        nonlocal buf, pos, lines_before, eof
        if eof:
            return False
        try:
            more = stream.read(chunk_chars)
        except UnicodeDecodeError as e:
            raise BadInput(f"not valid UTF-8 ({e.reason})", path) from None
        except (OSError, EOFError, zlib.error) as e:
            raise BadInput(f"cannot read (corrupt or truncated file?): {e}", path) from None
        if not more:
            eof = True
            return False
        lines_before += buf.count("\n", 0, pos)
        buf = buf[pos:] + more
        pos = 0
        return True

    def where(at: int) -> str:
        line = lines_before + buf.count("\n", 0, at) + 1
        column = at - buf.rfind("\n", 0, at)
        return f"line {line} column {column}"

    def skip_space() -> str:
        """The next non-space character (buffer refilled as needed), '' at end of file."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not refill():
                return ""

    with stream:
        first = skip_space()
        if first != "[":
            raise BadInput(
                "expected a JSON array of T-REx documents" + (f", found {first!r}" if first else ", found an empty file"),
                path, where(pos))
        pos += 1
        index = 0
        if skip_space() == "]":
            return
        while True:
            index += 1
            if not skip_space():
                raise BadInput("file ends inside the array (truncated?)", path, f"document {index}")
            while True:
                try:
                    element, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    # An element cut by the chunk boundary fails near the buffer's end (or as an
                    # unterminated string); read more and retry. Anything else is malformed.
                    truncated = e.pos >= len(buf) - 32 or e.msg.startswith("Unterminated string")
                    if truncated and refill():
                        continue
                    raise BadInput(f"malformed JSON: {e.msg} ({where(e.pos)})", path, f"document {index}") from None
                if buf[pos] not in '{["' and end > len(buf) - 32 and refill():
                    continue  # a bare number near the chunk's end may go on in the next chunk
                break
            pos = end
            yield index, element
            sep = skip_space()
            if sep == ",":
                pos += 1
            elif sep == "]":
                return
            elif not sep:
                raise BadInput("file ends inside the array (truncated?)", path, f"after document {index}")
            else:
                raise BadInput(f"malformed JSON: expected ',' or ']' after a document, found {sep!r} ({where(pos)})",
                               path, f"document {index}")


# ---------------------------------------------------------------- one document → examples


def _last_segment(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _literal_value(uri: str) -> str | None:
    """The value of a typed literal as the dump writes it (`1970-01-22T00:00:00Z^^<xsd:dateTime>` →
    `1970-01-22T00:00:00Z`); None for an IRI (an item, a property)."""
    value, typed, _ = uri.partition("^^")
    return value if typed and value else None


def is_item(label: str) -> bool:
    """Whether an `obj_label` / `subj_label` is a Wikidata item id (`Q..`), not a literal."""
    return _ITEM_ID.fullmatch(label) is not None


def _span(value: Any, what: str, text_len: int) -> tuple[int, int] | None:
    """`[start, end]` character offsets checked against the text; None when absent."""
    if value is None:
        return None
    # type() rather than isinstance: runs for every word of every document, and bools are not offsets
    if type(value) is not list or len(value) != 2 or type(value[0]) is not int or type(value[1]) is not int:
        raise ValueError(f"{what} must be [start, end] integers, got {json.dumps(value)[:60]}")
    start, end = value
    if not 0 <= start <= end <= text_len:
        raise ValueError(f"{what} {value} is outside the text (length {text_len})")
    return start, end


def _field(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    if key not in obj:
        raise ValueError(f"{where} has no '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}.{key} must be {names}, got {type(value).__name__}")
    return value


def _word_index(words: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], dict[int, int], dict[int, int]]:
    """A sentence's words with maps from a character offset to the word starting/ending there."""
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for i, (start, end) in enumerate(words):
        starts.setdefault(start, i)
        ends[end] = i
    return words, starts, ends


@dataclass
class DocumentResult:
    """What one document gave: its examples and why its other triples were dropped."""

    examples: list[dict]
    triples: int
    dropped: Counter


def document_examples(doc: Any) -> DocumentResult:
    """The relation-classification examples of one T-REx document.

    Raises `ValueError` (with a message naming the field) for a document that is malformed:
    missing fields, wrong types, offsets outside the text, a `sentence_id` out of range.
    """
    docid_uri = _field(doc, "docid", str, "document")
    docid = _last_segment(docid_uri)
    text = _field(doc, "text", str, "document")
    n = len(text)
    sentences = [_span(s, f"sentences_boundaries[{i}]", n)
                 for i, s in enumerate(_field(doc, "sentences_boundaries", list, "document"))]
    words = [_span(w, f"words_boundaries[{i}]", n)
             for i, w in enumerate(_field(doc, "words_boundaries", list, "document"))]
    if None in sentences or None in words:
        raise ValueError("sentences_boundaries and words_boundaries must not hold null")
    # Word spans are mapped back to words by their start and end offsets, which is only sound for
    # non-empty words in text order (as T-REx has them); anything else would give spans whose
    # words differ from the entity.
    previous_end = 0
    for i, (start, end) in enumerate(words):
        if start == end:
            raise ValueError(f"words_boundaries[{i}] [{start}, {end}] is empty")
        if start < previous_end:
            raise ValueError(f"words_boundaries[{i}] [{start}, {end}] overlaps or precedes the word before it")
        previous_end = end
    triples = _field(doc, "triples", list, "document")

    sentence_words: dict[int, tuple[list[tuple[int, int]], dict[int, int], dict[int, int]]] = {}
    examples: list[dict] = []
    seen: set[str] = set()
    dropped: Counter = Counter()
    for t, triple in enumerate(triples):
        where = f"triples[{t}]"
        sentence_id = _field(triple, "sentence_id", int, where)
        if not 0 <= sentence_id < len(sentences):
            raise ValueError(f"{where}.sentence_id {sentence_id} is out of range ({len(sentences)} sentences)")
        entities = {}
        for role in ("subject", "predicate", "object"):
            entity = _field(triple, role, dict, where)
            uri = _field(entity, "uri", str, f"{where}.{role}")
            entities[role] = (uri, _span(entity.get("boundaries"), f"{where}.{role}.boundaries", n))
        relation = _last_segment(entities["predicate"][0])
        (subj_uri, subj), (obj_uri, obj) = entities["subject"], entities["object"]

        if not _PROPERTY_ID.fullmatch(relation):
            dropped[NOT_WIKIDATA_PROPERTY] += 1
            continue
        if subj is None or obj is None:
            dropped[MISSING_BOUNDARIES] += 1
            continue
        subj_label = _last_segment(subj_uri)
        literal = _literal_value(obj_uri)
        obj_label = literal if literal is not None else _last_segment(obj_uri)
        if not (is_item(subj_label) and (literal is not None or is_item(obj_label))):
            dropped[NOT_WIKIDATA_ITEM] += 1
            continue
        s_start, s_end = sentences[sentence_id]
        if not (s_start <= subj[0] and subj[1] <= s_end and s_start <= obj[0] and obj[1] <= s_end):
            dropped[OUTSIDE_SENTENCE] += 1
            continue
        if subj[0] < obj[1] and obj[0] < subj[1]:
            dropped[OVERLAPPING_ENTITIES] += 1
            continue
        if sentence_id not in sentence_words:
            sentence_words[sentence_id] = _word_index([w for w in words if s_start <= w[0] and w[1] <= s_end])
        sent_words, starts, ends = sentence_words[sentence_id]
        span_words = (starts.get(subj[0]), ends.get(subj[1]), starts.get(obj[0]), ends.get(obj[1]))
        if None in span_words or span_words[0] > span_words[1] or span_words[2] > span_words[3]:
            dropped[NOT_WORD_ALIGNED] += 1
            continue
        subj_start, subj_end, obj_start, obj_end = span_words
        example_id = f"{docid}-{sentence_id}-{subj_start}_{subj_end}-{obj_start}_{obj_end}-{relation}"
        if example_id in seen:
            dropped[DUPLICATE] += 1
            continue
        seen.add(example_id)
        examples.append({
            "id": example_id,
            "docid": docid,
            "tokens": [text[a:b] for a, b in sent_words],
            "subj_start": subj_start,
            "subj_end": subj_end,
            "obj_start": obj_start,
            "obj_end": obj_end,
            "relation": relation,
            "subj_label": subj_label,
            "obj_label": obj_label,
        })
    return DocumentResult(examples, len(triples), dropped)


# ---------------------------------------------------------------- extraction into sorted runs


@dataclass
class ExtractStats:
    """Counts of one extraction (a file, a worker, a shard); they add up across them."""

    documents: int = 0
    triples: int = 0
    examples: int = 0  # emitted before de-duplication across documents
    dropped: Counter = field(default_factory=Counter)
    bad_documents: int = 0
    bad_files: int = 0
    bad_samples: list[str] = field(default_factory=list)

    def add(self, other: "ExtractStats") -> None:
        self.documents += other.documents
        self.triples += other.triples
        self.examples += other.examples
        self.dropped.update(other.dropped)
        self.bad_documents += other.bad_documents
        self.bad_files += other.bad_files
        self.bad_samples.extend(other.bad_samples[: _MAX_BAD_SAMPLES - len(self.bad_samples)])

    def skip(self, error: BadInput, whole_file: bool) -> None:
        if whole_file:
            self.bad_files += 1
        else:
            self.bad_documents += 1
        if len(self.bad_samples) < _MAX_BAD_SAMPLES:
            self.bad_samples.append(str(error))

    def as_dict(self) -> dict:
        return {"documents": self.documents, "triples": self.triples, "examples_extracted": self.examples,
                "dropped": dict(sorted(self.dropped.items())), "bad_documents": self.bad_documents,
                "bad_files": self.bad_files, "bad_samples": list(self.bad_samples)}

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractStats":
        return cls(d["documents"], d["triples"], d["examples_extracted"], Counter(d["dropped"]),
                   d["bad_documents"], d["bad_files"], list(d.get("bad_samples", [])))


class RunWriter:
    """Buffers example lines and writes them out as sorted run files of about `run_chars` characters."""

    def __init__(self, folder: Path, prefix: str, run_chars: int | None = None):
        self.folder, self.prefix = folder, prefix
        self.run_chars = RUN_CHARS if run_chars is None else run_chars
        self.lines: list[str] = []
        self.chars = 0
        self.runs: list[Path] = []

    def add(self, example: dict) -> None:
        self.add_line(example_line(example))

    def add_line(self, line: str) -> None:
        self.lines.append(line)
        self.chars += len(line)
        if self.chars >= self.run_chars:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        path = self.folder / f"{self.prefix}-{len(self.runs):05d}.jsonl"
        self.lines.sort()
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(self.lines)
        self.runs.append(path)
        self.lines, self.chars = [], 0


def example_line(example: dict) -> str:
    return json.dumps(example, ensure_ascii=False) + "\n"


def file_examples(path: Path, skip_bad: bool, stats: ExtractStats, limit: int | None = None) -> Iterator[list[dict]]:
    """Streams one dump file: the examples of each good document, counting into `stats`; stops
    after `limit` documents (counted in `stats` across files).

    A malformed document is `BadInput` naming the file and document, or with `skip_bad` skipped
    and counted. A file that cannot be read or parsed as JSON is skipped from that point on
    (with `skip_bad`): the rest of it cannot be trusted.
    """
    try:
        for index, doc in iter_json_array(path):
            if limit is not None and stats.documents + stats.bad_documents >= limit:
                return
            try:
                result = document_examples(doc)
            except ValueError as e:
                docid = doc.get("docid") if isinstance(doc, dict) else None
                label = f"document {index}" + (f" ({_last_segment(docid)})" if isinstance(docid, str) else "")
                error = BadInput(str(e), path, label)
                if not skip_bad:
                    raise error from None
                stats.skip(error, whole_file=False)
                continue
            stats.documents += 1
            stats.triples += result.triples
            stats.examples += len(result.examples)
            stats.dropped.update(result.dropped)
            yield result.examples
    except BadInput as e:
        if not skip_bad:
            raise
        stats.skip(e, whole_file=True)


def extract_file(path: Path, runs: RunWriter, skip_bad: bool, stats: ExtractStats,
                 limit: int | None = None, on_document: Callable[[], None] | None = None) -> None:
    """Streams one dump file into `runs` (`file_examples`)."""
    for examples in file_examples(path, skip_bad, stats, limit):
        for example in examples:
            runs.add(example)
        if on_document is not None:
            on_document()


def _extract_file_job(args: tuple[str, str, str, bool]) -> tuple[list[str], dict]:
    """Worker process: one file into sorted runs; returns the run paths and the counts."""
    path, folder, prefix, skip_bad = args
    stats = ExtractStats()
    runs = RunWriter(Path(folder), prefix)
    extract_file(Path(path), runs, skip_bad, stats)
    runs.flush()
    return [str(p) for p in runs.runs], stats.as_dict()


def extract_to_runs(files: Sequence[Path], folder: Path, workers: int = 1, skip_bad: bool = False,
                    limit: int | None = None, ray_options: "RayOptions | None" = None,
                    ray_stats: dict | None = None) -> tuple[list[Path], ExtractStats]:
    """Extracts every file into sorted run files under `folder`, in this process or in `workers`,
    or with `ray_options` in `workers` Ray tasks (filling `ray_stats`).

    `limit` (documents, in input order) needs the files in order, so it runs in this process.
    """
    from rich.progress import TextColumn

    from kadapter_cli.progress import progress

    stats = ExtractStats()
    started = time.monotonic()

    def shown() -> dict:
        rate = stats.documents / max(time.monotonic() - started, 1e-9)
        return {"docs": stats.documents, "rate": f"{rate:,.0f}"}

    with progress(TextColumn("{task.fields[docs]:,} docs, {task.fields[rate]} docs/s")) as bar:
        task = bar.add_task("T-REx files", total=len(files), **shown())
        if ray_options is not None:
            runs = RunWriter(folder, "run")
            _ray_extract(files, runs, workers, skip_bad, stats, ray_options, {} if ray_stats is None else ray_stats,
                         on_file=lambda: bar.update(task, advance=1, **shown()))
            runs.flush()
            return runs.runs, stats
        if workers <= 1 or limit is not None or len(files) <= 1:
            runs = RunWriter(folder, "run")

            def tick() -> None:
                if stats.documents % 100 == 0:
                    bar.update(task, **shown())

            for f in files:
                if limit is not None and stats.documents + stats.bad_documents >= limit:
                    break
                extract_file(f, runs, skip_bad, stats, limit, on_document=tick)
                bar.update(task, advance=1, **shown())
            runs.flush()
            return runs.runs, stats

        import multiprocessing

        jobs = [(str(f), str(folder), f"run-{i:06d}", skip_bad) for i, f in enumerate(files)]
        run_paths: list[Path] = []
        # spawn, not fork: the parent may hold threads (torch, tokenizers) that fork would copy broken
        with multiprocessing.get_context("spawn").Pool(min(workers, len(files))) as pool:
            for paths, counts in pool.imap(_extract_file_job, jobs):
                run_paths.extend(Path(p) for p in paths)
                stats.add(ExtractStats.from_dict(counts))
                bar.update(task, advance=1, **shown())
        return run_paths, stats


EXAMPLES_PER_BLOCK = 4096  # example lines a Ray task sends at a time


def extract_trex_file(batch: dict, *, files: list[str], skip_bad: bool, hooks: Any) -> Iterator[dict]:
    """`prepare-trex` on Ray: a Ray Data task that extracts a dump file (one a call). It sends rows
    (`file`, `block`, `text`): its example lines in numbered blocks, then (`block` -1) its counts,
    with the `BadInput` it stopped on if any, for the driver to take in file order."""
    from kadapter_cli.data.ray_engine import error_fields

    for index in batch["file"].tolist():
        hooks.started(index)
        stats = ExtractStats()
        block = 0
        lines: list[str] = []
        error = None
        try:
            for examples in file_examples(Path(files[index]), skip_bad, stats):
                lines.extend(map(example_line, examples))
                if len(lines) >= EXAMPLES_PER_BLOCK:
                    yield _trex_rows(index, block, ["".join(lines)])
                    hooks.produced()
                    block, lines = block + 1, []
        except BadInput as e:
            error = error_fields(e)
        last = ["".join(lines)] if lines else []
        yield _trex_rows(index, block, last + [json.dumps({**stats.as_dict(), "error": error})], counts=True)
        hooks.produced()


def _trex_rows(index: int, first_block: int, texts: list[str], counts: bool = False) -> dict:
    import numpy as np

    numbers = [first_block + k for k in range(len(texts))]
    if counts:
        numbers[-1] = -1
    return {"file": np.full(len(texts), index, dtype=np.int64), "block": np.array(numbers, dtype=np.int64),
            "text": np.array(texts, dtype=object)}


def _ray_extract(files: Sequence[Path], runs: RunWriter, workers: int, skip_bad: bool, stats: ExtractStats,
                 options: "RayOptions", ray_stats: dict, on_file: Callable[[], None]) -> None:
    """`extract_to_runs` on Ray: every file extracted by one of `workers` Ray tasks; the example lines
    go to `runs` as they come (runs are sorted anyway), the counts are taken in file order, so that
    the first bad document stops the run (or is counted, with `skip_bad`) as in the local run."""
    from kadapter_cli.data import ray_engine
    from kadapter_cli.errors import KadapterError

    reorder = ray_engine.Reorder()
    seen: set[tuple[int, int]] = set()  # (file, block) of the example blocks taken: a retried task sends them again
    with ray_engine.ray_session(options) as session:
        ray_stats.update(session)
        batches = ray_engine.map_items([{"file": i} for i in range(len(files))], extract_trex_file, workers=workers,
                                       options=options, kwargs={"files": [str(f) for f in files],
                                                                "skip_bad": skip_bad}, stats=ray_stats)
        with contextlib.closing(batches):
            for batch in batches:
                for index, block, text in zip(batch["file"].tolist(), batch["block"].tolist(), batch["text"]):
                    if block >= 0:
                        if (index, block) not in seen:
                            seen.add((index, block))
                            for line in text.split("\n")[:-1]:  # (JSON lines hold no raw newline)
                                runs.add_line(line + "\n")
                        continue
                    for counts in reorder.push(index, text):
                        counts = json.loads(counts)
                        if counts["error"] is not None:
                            ray_engine.raise_error(counts["error"])
                        stats.add(ExtractStats.from_dict(counts))
                        on_file()
    if reorder.next < len(files):
        raise KadapterError(f"the Ray job returned {reorder.next:,} of the {len(files):,} files")


def _merge_files(sources: Sequence[Path]) -> Iterator[str]:
    handles = [open(p, encoding="utf-8") for p in sources]
    try:
        yield from heapq.merge(*handles)
    finally:
        for h in handles:
            h.close()


def merge_sorted_lines(sources: Sequence[Path], out: Path) -> tuple[Counter, Counter, int]:
    """Merges sorted JSONL files into `out`, keeping the first line of each id.

    Every line starts with `{"id": "<id>"`, so sorting lines sorts ids and equal ids are adjacent.
    More than `MERGE_FAN_IN` sources are first merged in groups, to bound open files.
    Returns (examples per relation, literal-object examples per relation, duplicates removed).
    """
    sources = list(sources)
    level = 0
    while len(sources) > MERGE_FAN_IN:
        merged = []
        for k in range(0, len(sources), MERGE_FAN_IN):
            group = out.with_name(f"{out.stem}.level{level}-{k // MERGE_FAN_IN:05d}.jsonl")
            with open(group, "w", encoding="utf-8") as f:
                f.writelines(_merge_files(sources[k:k + MERGE_FAN_IN]))
            merged.append(group)
        sources, level = merged, level + 1
    per_relation: Counter = Counter()
    literal_per_relation: Counter = Counter()
    duplicates = 0
    previous_id = None
    with open(out, "w", encoding="utf-8") as f:
        for line in _merge_files(sources):
            record = json.loads(line)
            if record["id"] == previous_id:
                duplicates += 1
                continue
            previous_id = record["id"]
            per_relation[record["relation"]] += 1
            if not is_item(record["obj_label"]):
                literal_per_relation[record["relation"]] += 1
            f.write(line)
    return per_relation, literal_per_relation, duplicates


# ---------------------------------------------------------------- filtering and splitting


def finalize(examples: Path, per_relation: Counter, literal_per_relation: Counter, folder: Path,
             drop: Sequence[str], min_count: int, dev_ratio: float, seed: int, entities_only: bool = False,
             allow_empty: bool = False) -> dict:
    """Sorted, de-duplicated examples → `train.jsonl`, `dev.jsonl`, `relations.json` in `folder`.

    With `entities_only`, examples whose object is a literal are left out first. A relation is then
    kept when it is not in `drop` and has at least `min_count` examples (train and dev together).
    Each kept example goes to dev when the seeded hash of its id says so (`in_dev_split`), so the
    split does not depend on file order, workers or shards. When no relation is left the artifact
    would be empty: `BadInput` with the numbers, unless `allow_empty`.
    """
    dropped: Counter = Counter()
    literal_per_relation = Counter({r: n for r, n in literal_per_relation.items() if n})
    if entities_only:
        dropped[LITERAL_OBJECT] = sum(literal_per_relation.values())
        per_relation = per_relation - literal_per_relation
        literal_per_relation = Counter()
    dropped_relations = set(drop)
    kept = sorted(r for r, n in per_relation.items() if r not in dropped_relations and n >= min_count)
    if not kept:
        nothing_left = _nothing_left(per_relation, dropped_relations, min_count)
        if not allow_empty:
            raise BadInput(ParamText(nothing_left.template + "; refusing to write an empty trex-rc (pass "
                                     "{allow_empty:True} to write it)", **nothing_left.values))
        info(ParamText("warning: " + nothing_left.template + "; the trex-rc written is empty", **nothing_left.values))
    kept_set = set(kept)
    for relation, n in per_relation.items():
        if relation in dropped_relations:
            dropped[RELATION_DROPPED] += n
        elif relation not in kept_set:
            dropped[BELOW_MIN_COUNT] += n
    counts = Counter()
    with open(examples, encoding="utf-8") as source, \
            open(folder / "train.jsonl", "w", encoding="utf-8") as train, \
            open(folder / "dev.jsonl", "w", encoding="utf-8") as dev:
        for line in source:
            record = json.loads(line)
            if record["relation"] not in kept_set or (entities_only and not is_item(record["obj_label"])):
                continue
            split = "dev" if in_dev_split(record["id"], seed, dev_ratio) else "train"
            (dev if split == "dev" else train).write(line)
            counts[split] += 1
    write_json(folder / "relations.json", kept)
    return {
        "examples": counts["train"] + counts["dev"],
        "train": counts["train"],
        "dev": counts["dev"],
        "relations": len(kept),
        "dropped": dict(dropped),
        "examples_per_relation": {r: per_relation[r] for r in kept},
        "literal_objects_per_relation": {r: literal_per_relation[r] for r in kept if literal_per_relation[r]},
    }


def _nothing_left(per_relation: Counter, dropped: set[str], min_count: int) -> ParamText:
    """Why no relation is kept, with the numbers: '70 examples in 4 relations, all below min_count 50
    (the largest, P17, has 25)'."""
    candidates = {r: n for r, n in per_relation.items() if r not in dropped}
    if not candidates:
        return ParamText("no examples left: {total:,} examples, all of relations left out with {drop} "
                         "(or literal objects)", total=sum(per_relation.values()))
    largest = max(sorted(candidates), key=candidates.get)
    return ParamText("{examples:,} examples in {relations} relations, all below {min_count:{given}} (the largest, "
                     "{largest}, has {largest_count:,}; try {min_count:{largest_count}})",
                     examples=sum(candidates.values()), relations=len(candidates), given=min_count,
                     largest=largest, largest_count=candidates[largest])


def _final_stats(extracted: ExtractStats, duplicates: int, final: dict) -> dict:
    dropped = Counter(extracted.dropped)
    dropped[DUPLICATE] += duplicates
    dropped.update(final["dropped"])
    stats = extracted.as_dict()
    stats.update(final)
    stats["dropped"] = {k: v for k, v in sorted(dropped.items()) if v}
    return stats


def _config(**options: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def _check_options(drop: Sequence[str], min_count: int, dev_ratio: float) -> None:
    for relation in drop:
        if not _PROPERTY_ID.fullmatch(relation):
            raise BadParameter("{drop} {value!r} is not a Wikidata property id like P31", relation)
    if min_count < 0:
        raise BadParameter("{min_count} must be 0 or more, got {value}", min_count)
    if not 0.0 <= dev_ratio < 1.0:
        raise BadParameter("{dev_ratio} must be in [0, 1), got {value}", dev_ratio)


# ---------------------------------------------------------------- the stage


def prepare_trex(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    drop: Sequence[str] = DEFAULT_DROP,
    min_count: int = DEFAULT_MIN_COUNT,
    dev_ratio: float = DEV_RATIO,
    seed: int = SPLIT_SEED,
    entities_only: bool = False,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    allow_empty: bool = False,
    engine: str = DEFAULT_ENGINE,
    ray_options: "RayOptions | None" = None,
) -> dict:
    """T-REx dumps (files or folders) → a `trex-rc/` artifact at `out`; returns its manifest.

    With `shard=(i, n)` only the files whose index (in input order, 0-based) is `i-1` modulo `n`
    are read, and `out` becomes an unfiltered `trex-shard` artifact for `merge_trex_shards`
    (literal objects included: `entities_only` is applied when the shards are merged).

    `engine="ray"` extracts the files in `workers` Ray tasks (`ray_options`: the cluster): the same
    files, and the same manifest but for `config.engine` and `stats.ray`.
    """
    from kadapter_cli.data.ray_engine import check_engine

    _check_options(drop, min_count, dev_ratio)
    ray_options = check_engine(engine, ray_options, shard)
    if engine == "ray" and limit is not None:
        raise BadParameter("{limit} reads the first documents in one process; it cannot be combined with {engine:ray}",
                           limit)
    if workers < 1:
        raise BadParameter("{workers} must be 1 or more, got {value}", workers)
    if limit is not None and limit < 1:
        raise BadParameter("{limit} must be 1 or more, got {value}", limit)
    files = input_files(inputs)
    if shard is not None:
        if limit is not None:
            raise BadParameter("{limit} cannot be combined with {shard} (shards must cover their files whole)", limit)
        if entities_only:
            raise BadParameter("shards keep literal objects: give {entities_only:True} to {merge} instead", entities_only)
        index, count = shard
        files = [f for k, f in enumerate(files) if k % count == index - 1]
    with atomic_output(out, overwrite=overwrite) as folder:
        scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=folder))
        ray_stats: dict[str, Any] = {}
        runs, extracted = extract_to_runs(files, scratch, workers=workers, skip_bad=skip_bad, limit=limit,
                                          ray_options=ray_options if engine == "ray" else None, ray_stats=ray_stats)
        examples = scratch / "examples.jsonl"
        per_relation, literal_per_relation, duplicates = merge_sorted_lines(runs, examples)
        if shard is not None:
            os.replace(examples, folder / SHARD_EXAMPLES)
            shutil.rmtree(scratch)
            stats = extracted.as_dict()
            stats["dropped"][DUPLICATE] = stats["dropped"].get(DUPLICATE, 0) + duplicates
            stats.update(examples=sum(per_relation.values()), shard=f"{shard[0]}/{shard[1]}", files=len(files),
                         examples_per_relation=dict(sorted(per_relation.items())),
                         literal_objects_per_relation=dict(sorted(literal_per_relation.items())))
            return write_manifest(folder, SHARD_KIND, config=_config(shard=list(shard), skip_bad=skip_bad),
                                  inputs=sha256_inputs(files), stats=stats)
        final = finalize(examples, per_relation, literal_per_relation, folder, drop, min_count, dev_ratio, seed,
                         entities_only, allow_empty)
        shutil.rmtree(scratch)
        config = _config(drop=list(drop), min_count=min_count, dev_ratio=dev_ratio, seed=seed,
                         entities_only=entities_only, skip_bad=skip_bad, limit=limit)
        stats = _final_stats(extracted, duplicates, final)
        if engine == "ray":
            config["engine"] = engine
            stats["ray"] = ray_stats
        return write_manifest(folder, TREX_KIND, config=config, inputs=sha256_inputs(files), stats=stats)


def merge_trex_shards(
    shards: Sequence[str | Path],
    out: str | Path,
    *,
    drop: Sequence[str] = DEFAULT_DROP,
    min_count: int = DEFAULT_MIN_COUNT,
    dev_ratio: float = DEV_RATIO,
    seed: int = SPLIT_SEED,
    entities_only: bool = False,
    overwrite: bool = False,
    allow_empty: bool = False,
) -> dict:
    """`trex-shard` artifacts (all N of one sharding) → one `trex-rc/` artifact; returns its manifest.

    The result is byte-identical (train, dev, relations) to a single run over all the files.
    """
    _check_options(drop, min_count, dev_ratio)
    folders = find_artifacts(shards, "trex-shard artifact")
    manifests = []
    for folder in folders:
        manifest = read_manifest(folder)
        if manifest["kind"] != SHARD_KIND:
            raise BadInput(f"is a {manifest['kind']!r} artifact, not a {SHARD_KIND!r} one", folder)
        verify_files(folder, manifest)
        manifests.append(manifest)
    shard_specs = [tuple(m["config"]["shard"]) for m in manifests]
    counts = {n for _, n in shard_specs}
    if len(counts) != 1:
        raise BadInput(f"shards come from different shardings: {sorted(f'{i}/{n}' for i, n in shard_specs)}")
    (total,) = counts
    if len(set(shard_specs)) != len(shard_specs):
        raise BadInput("the same shard is given twice: " + ", ".join(f"{i}/{n}" for i, n in shard_specs))
    missing = sorted(set(range(1, total + 1)) - {i for i, _ in shard_specs})
    if missing:
        raise BadInput(f"shards {', '.join(f'{i}/{total}' for i in missing)} are missing; merge needs all {total}")
    extracted = ExtractStats()
    for manifest in manifests:
        extracted.add(ExtractStats.from_dict(manifest["stats"]))
    with atomic_output(out, overwrite=overwrite) as folder:
        scratch = Path(tempfile.mkdtemp(prefix="merge-", dir=folder))
        examples = scratch / "examples.jsonl"
        per_relation, literal_per_relation, duplicates = merge_sorted_lines(
            [f / SHARD_EXAMPLES for f in folders], examples)
        final = finalize(examples, per_relation, literal_per_relation, folder, drop, min_count, dev_ratio, seed,
                         entities_only, allow_empty)
        shutil.rmtree(scratch)
        config = _config(drop=list(drop), min_count=min_count, dev_ratio=dev_ratio, seed=seed,
                         entities_only=entities_only, merged_shards=[str(f) for f in folders])
        inputs = [entry for m in manifests for entry in m["inputs"]]
        return write_manifest(folder, TREX_KIND, config=config, inputs=inputs,
                              stats=_final_stats(extracted, duplicates, final))
