"""Text or CoNLL-U → `parsed/` (dependency trees for the lin adapter).

Three sources of trees, one record format (docs/artifacts.md):
`{"id", "text", "tokens", "heads", "deprels"}` with `heads[i]` the 1-based index of token i's head
and 0 for the root.

- `stanza`: Stanford's neural pipeline (tokenize, pos, lemma, depparse), the closest thing to the
  Stanford parser K-Adapter used (the paper, §3.2). Models are never downloaded here: a missing model
  is `BadInput` with the command that downloads it.
- `spacy`: any installed spaCy pipeline with a parser; each `doc.sents` is one record.
- `conllu`: gold trees read from CoNLL-U files (also chosen for any `.conllu` input).

Every source yields `ParsedSentence`s and `sentence_record` turns each into a record, so the three
agree by construction. Text input is one sentence or paragraph per line; blank lines are skipped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

from kadapter_cli.artifacts.io import DEV_RATIO, SPLIT_SEED, in_dev_split, iter_text_line_offsets, sha256_inputs
from kadapter_cli.artifacts.io import input_files as artifacts_input_files
from kadapter_cli.artifacts.manifest import find_artifacts, read_manifest, verify_files, write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.data.ray_engine import DEFAULT_ENGINE
from kadapter_cli.errors import BadInput, BadParameter, ParamText

if TYPE_CHECKING:
    from kadapter_cli.data.ray_engine import RayOptions

PARSED_KIND = "parsed"
PARSERS = ("stanza", "spacy", "conllu")
DEFAULT_SPACY_MODEL = "en_core_web_sm"
UNITS_PER_CHUNK = 256  # lines handed to a parser (and to a worker) at a time

# Why a sentence is not emitted; keys of `stats["dropped"]`.
TOO_LONG = "too_long"  # more words than --max-words
EMPTY = "empty"  # a parser returned a sentence without words
BAD_SENTENCE = "bad_sentence"  # malformed CoNLL-U sentence skipped with --skip-bad
DUPLICATE_ID = "duplicate_id"  # a CoNLL-U sent_id seen earlier in the same file, skipped with --skip-bad


@dataclass
class ParsedSentence:
    """One dependency tree as any parser gives it: words, 1-based heads (0 = root), relations."""

    words: list[str]
    heads: list[int]
    deprels: list[str]
    text: str | None = None  # the raw sentence; rebuilt from the words when unknown


def sentence_record(record_id: str, sentence: ParsedSentence) -> dict:
    """The `parsed/` record of one sentence; the one conversion every parser goes through."""
    n = len(sentence.words)
    if len(sentence.heads) != n or len(sentence.deprels) != n:
        raise ValueError(f"{n} words but {len(sentence.heads)} heads and {len(sentence.deprels)} relations")
    for i, head in enumerate(sentence.heads):
        if not 0 <= head <= n:
            raise ValueError(f"word {i + 1} ({sentence.words[i]!r}) has head {head}, outside the sentence ({n} words)")
    return {
        "id": record_id,
        "text": sentence.text if sentence.text is not None else " ".join(sentence.words),
        "tokens": list(sentence.words),
        "heads": list(sentence.heads),
        "deprels": list(sentence.deprels),
    }


# ---------------------------------------------------------------- parser output → ParsedSentence


def stanza_sentences(doc: Any) -> Iterator[ParsedSentence]:
    """The sentences of a `stanza.Document` (syntactic words: multi-word tokens are split)."""
    for sentence in doc.sentences:
        words = sentence.words
        yield ParsedSentence(
            words=[w.text for w in words],
            heads=[int(w.head) for w in words],
            deprels=[w.deprel for w in words],
            text=sentence.text,
        )


def spacy_sentences(doc: Any) -> Iterator[ParsedSentence]:
    """The sentences of a spaCy `Doc`; heads made sentence-relative and 1-based, `ROOT` → `root`."""
    for sent in doc.sents:
        tokens = [t for t in sent if not t.is_space]  # whitespace tokens are not words
        if not tokens:
            continue
        position = {t.i: k + 1 for k, t in enumerate(tokens)}
        heads = []
        for t in tokens:
            # spaCy's root is its own head; a head on a dropped whitespace token falls back to root
            heads.append(0 if t.head.i == t.i else position.get(t.head.i, 0))
        yield ParsedSentence(
            words=[t.text for t in tokens],
            heads=heads,
            deprels=["root" if t.dep_ == "ROOT" else t.dep_ for t in tokens],
            text=sent.text.strip(),
        )


# ---------------------------------------------------------------- CoNLL-U


class ConlluError(ValueError):
    """A malformed CoNLL-U line; `line` is its 1-based number."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class DuplicateSentenceId(ConlluError):
    """A CoNLL-U `sent_id` that an earlier sentence of the same file already has."""


def _conllu_text(surface: list[tuple[str, bool]]) -> str:
    """Text rebuilt from surface tokens and their SpaceAfter=No flags."""
    return "".join(form + ("" if no_space else " ") for form, no_space in surface).rstrip()


def _no_space_after(misc: str) -> bool:
    return "SpaceAfter=No" in misc.split("|")


def _conllu_sentence(block: list[tuple[int, str]]) -> tuple[str | None, ParsedSentence]:
    """One sentence block (numbered lines) → (sent_id, sentence); `ConlluError` on a bad line."""
    sent_id = text = None
    words: list[str] = []
    heads: list[tuple[int, int]] = []  # (head, line)
    deprels: list[str] = []
    surface: list[tuple[str, bool]] = []
    covered_until = 0  # last word id covered by a multi-word token range
    for number, line in block:
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            if sep and key.strip() == "sent_id":
                sent_id = value.strip()
            elif sep and key.strip() == "text":
                text = value.strip()
            continue
        columns = line.split("\t")
        if len(columns) != 10:
            raise ConlluError(f"expected 10 tab-separated columns, found {len(columns)}", number)
        word_id, form, head, deprel, misc = columns[0], columns[1], columns[6], columns[7], columns[9]
        if "-" in word_id:  # multi-word token range N-M: surface text only
            first, _, last = word_id.partition("-")
            if not (first.isdigit() and last.isdigit()):
                raise ConlluError(f"malformed token range {word_id!r}", number)
            covered_until = int(last)
            surface.append((form, _no_space_after(misc)))
            continue
        if "." in word_id:  # empty node of the enhanced graph: not part of the basic tree
            continue
        if not word_id.isdigit() or int(word_id) != len(words) + 1:
            raise ConlluError(f"word id {word_id!r} out of sequence (expected {len(words) + 1})", number)
        try:
            head_index = int(head)
        except ValueError:
            raise ConlluError(f"HEAD {head!r} is not an integer", number) from None
        words.append(form)
        heads.append((head_index, number))
        deprels.append(deprel)
        if int(word_id) > covered_until:
            surface.append((form, _no_space_after(misc)))
    if not words:
        raise ConlluError("sentence has no words", block[-1][0])
    for head_index, number in heads:
        if not 0 <= head_index <= len(words):
            raise ConlluError(f"HEAD {head_index} points outside the sentence ({len(words)} words)", number)
    sentence = ParsedSentence(words, [h for h, _ in heads], deprels, text if text is not None else _conllu_text(surface))
    return sent_id, sentence


def read_conllu(path: str | Path, skip_bad: bool = False, dropped: Counter | None = None) -> Iterator[tuple[str, ParsedSentence]]:
    """Yields `(record_id, sentence)` from a CoNLL-U file, streaming.

    Multi-word token ranges (`N-M`) and empty nodes (`N.M`) are skipped; the text is `# text =`
    or rebuilt from the forms and `SpaceAfter=No`. The id is `# sent_id =` or `<file name>-<n>`.
    A malformed sentence, or one whose `sent_id` repeats an earlier one of the file (record ids
    must be unique), is `BadInput` naming the file and line, or with `skip_bad` skipped and counted
    in `dropped[BAD_SENTENCE]` / `dropped[DUPLICATE_ID]`.
    """
    path = Path(path)
    first_line: dict[str, int] = {}  # sent_id → line of its sentence (ids are short; one file's worth)
    for ordinal, line, sent_id, sentence in _gold_units(_numbered_lines(path)):
        error = sentence if isinstance(sentence, ConlluError) else None
        if _keep_gold(path, line, sent_id, error, first_line, skip_bad, dropped):
            yield _gold_id(path, sent_id, ordinal), sentence


def _gold_units(lines: Iterable[tuple[int, str]], before: int = 0
                ) -> Iterator[tuple[int, int, str | None, ParsedSentence | ConlluError]]:
    """`(ordinal in the file, first line, sent_id, sentence or its ConlluError)` of each sentence
    block of numbered CoNLL-U lines; `before` blocks of the file precede the first."""
    ordinal = before
    for block in _conllu_blocks(lines):
        ordinal += 1
        try:
            sent_id, sentence = _conllu_sentence(block)
        except ConlluError as e:
            yield ordinal, block[0][0], None, e
            continue
        yield ordinal, block[0][0], sent_id, sentence


def _keep_gold(path: Path, line: int, sent_id: str | None, error: ConlluError | None, first_line: dict[str, int],
               skip_bad: bool, dropped: Counter | None) -> bool:
    """Whether the CoNLL-U sentence at `line` is kept: not malformed (`error`), its `sent_id` not one
    an earlier sentence of the file has (`first_line`, updated). Otherwise `BadInput` naming the file
    and line, or, with `skip_bad`, False and the reason counted in `dropped`."""
    try:
        if error is not None:
            raise error
        if sent_id is not None and sent_id in first_line:
            raise DuplicateSentenceId(f"sent_id {sent_id!r} repeats that of line {first_line[sent_id]}", line)
    except ConlluError as e:
        if not skip_bad:
            raise BadInput(str(e), path, f"line {e.line}") from None
        if dropped is not None:
            dropped[DUPLICATE_ID if isinstance(e, DuplicateSentenceId) else BAD_SENTENCE] += 1
        return False
    if sent_id is not None:
        first_line[sent_id] = line
    return True


def _gold_id(path: Path, sent_id: str | None, ordinal: int) -> str:
    return sent_id or f"{path.name}-{ordinal}"


def _conllu_blocks(lines: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    block: list[tuple[int, str]] = []
    for number, line in lines:
        if line.strip():
            block.append((number, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _numbered_lines(path: Path, offset: int = 0, first_line: int = 1) -> Iterator[tuple[int, str]]:
    """`(line number, line without its newline)` from byte `offset` (line `first_line`); unreadable
    files and bad UTF-8 are `BadInput`."""
    for number, _, line in iter_text_line_offsets(path, offset, first_line):
        yield number, line.rstrip("\r\n")


def _text_units(path: Path, offset: int = 0, first_line: int = 1) -> Iterator[tuple[str, str]]:
    """`(unit id, text)` of each non-blank line of a text file: the id is `<file name>:<line>`."""
    return ((f"{path.name}:{number}", line.strip()) for number, line in _numbered_lines(path, offset, first_line)
            if line.strip())


# ---------------------------------------------------------------- parsers for raw text


@dataclass
class ParserSpec:
    """Everything needed to build a parser, in a worker process too (it pickles)."""

    kind: str = "stanza"
    lang: str = "en"
    model: str | None = None  # spaCy pipeline name or path
    model_dir: str | None = None  # Stanza resources folder; for spaCy, a folder holding the pipeline `model`
    device: str = "cpu"
    pretokenized: bool = False
    tokenize_batch_size: int = 32
    pos_batch_size: int = 5000
    depparse_batch_size: int = 5000
    batch_size: int = 64  # spaCy nlp.pipe
    n_process: int = 1  # spaCy nlp.pipe

    def model_name(self) -> str:
        if self.kind == "spacy":
            return self.model or DEFAULT_SPACY_MODEL
        if self.kind == "stanza":
            return f"stanza:{self.lang}"
        return "gold"

    def load(self) -> "TextParser":
        if self.kind == "stanza":
            return StanzaParser(self)
        if self.kind == "spacy":
            return SpacyParser(self)
        raise BadParameter("{kind:{value}} reads CoNLL-U, not raw text; use {kind:stanza} or spacy for text", self.kind)


def _use_gpu(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    if device == "auto":
        return torch.cuda.is_available()
    if not torch.cuda.is_available():
        raise BadParameter("{device:{value}} asked for, but no CUDA device is available", device)
    return True


class TextParser(Protocol):
    """Parses a batch of texts; returns the sentences of each text, in order."""

    def __call__(self, texts: Sequence[str]) -> list[list[ParsedSentence]]: ...


class StanzaParser:
    """Stanza's tokenize,pos,lemma,depparse pipeline; texts go through `bulk_process` together."""

    def __init__(self, spec: ParserSpec):
        import stanza
        from stanza.resources.common import DEFAULT_MODEL_DIR

        model_dir = spec.model_dir or DEFAULT_MODEL_DIR
        try:
            self.nlp = stanza.Pipeline(
                spec.lang,
                dir=model_dir,
                processors="tokenize,pos,lemma,depparse",
                download_method=None,  # never touch the network
                use_gpu=_use_gpu(spec.device),
                tokenize_pretokenized=spec.pretokenized,
                tokenize_batch_size=spec.tokenize_batch_size,
                pos_batch_size=spec.pos_batch_size,
                depparse_batch_size=spec.depparse_batch_size,
                logging_level="WARN",
            )
        except FileNotFoundError as e:  # no resources.json, language or model file not downloaded
            raise BadInput(
                f"Stanza models for language '{spec.lang}' are not installed ({_first_line(e)}). Download them "
                f"with: python -c \"import stanza; stanza.download('{spec.lang}', model_dir='{model_dir}')\"",
                model_dir,
            ) from None
        self.stanza = stanza

    def __call__(self, texts: Sequence[str]) -> list[list[ParsedSentence]]:
        docs = [self.stanza.Document([], text=t) for t in texts]
        return [list(stanza_sentences(d)) for d in self.nlp.bulk_process(docs)]


class SpacyParser:
    """A spaCy pipeline with a parser, run with `nlp.pipe`."""

    def __init__(self, spec: ParserSpec):
        import spacy

        name = spec.model or DEFAULT_SPACY_MODEL
        if _use_gpu(spec.device):
            spacy.require_gpu()
        # --model-dir: a folder holding the pipeline as NAME/ (saved with nlp.to_disk), e.g. one every node can read
        source = Path(spec.model_dir) / name if spec.model_dir else None
        try:
            self.nlp = spacy.load(source if source is not None and source.is_dir() else name)
        except OSError as e:
            raise BadInput(ParamText(
                "spaCy model '{name}' is not installed" + (" nor in {model_dir} {folder}" if spec.model_dir else "")
                + " ({error}). Install it with: python -m spacy download {name} (or pip install its package), or "
                "pass {model} NAME_OR_PATH", name=name, error=_first_line(e), folder=spec.model_dir,
            )) from None
        if "parser" not in self.nlp.pipe_names:
            raise BadInput(f"spaCy model '{name}' has no dependency parser (pipes: {', '.join(self.nlp.pipe_names)})")
        self.spec = spec

    def __call__(self, texts: Sequence[str]) -> list[list[ParsedSentence]]:
        from spacy.tokens import Doc

        inputs: Iterable[Any] = texts
        if self.spec.pretokenized:
            inputs = [Doc(self.nlp.vocab, words=t.split()) for t in texts]
        docs = self.nlp.pipe(inputs, batch_size=self.spec.batch_size, n_process=self.spec.n_process)
        return [list(spacy_sentences(d)) for d in docs]


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


# ---------------------------------------------------------------- the stage


TEXT_SUFFIXES = (".txt", ".text")
CONLLU_SUFFIXES = (".conllu", ".conll")


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked in sorted order for text (.txt, .text) and CoNLL-U files."""
    return artifacts_input_files(inputs, lambda p: p.suffix in TEXT_SUFFIXES + CONLLU_SUFFIXES,
                                 ".txt, .text or .conllu")


def _is_conllu(path: Path, parser: str) -> bool:
    return parser == "conllu" or path.suffix in CONLLU_SUFFIXES


@dataclass
class Chunk:
    """Consecutive input units of one kind: gold trees (`(id, ParsedSentence)`) or text lines (`(id, str)`)."""

    gold: bool
    units: list[tuple[str, Any]] = field(default_factory=list)


def _chunks(files: Sequence[Path], parser: str, skip_bad: bool, dropped: Counter,
            shard: tuple[int, int] | None, limit: int | None) -> Iterator[Chunk]:
    """Input units in order, after sharding and `limit`, grouped into chunks for the parser.

    With `limit`, reading stops at the limit-th unit: the unit after it is not read (a malformed
    one would otherwise stop a run that never uses it).
    """
    ordinal = taken = 0
    for path in files:
        if limit is not None and taken >= limit:
            return
        gold = _is_conllu(path, parser)
        units: Iterator[tuple[str, Any]] = read_conllu(path, skip_bad, dropped) if gold else _text_units(path)
        chunk = Chunk(gold)
        for unit in units:
            ordinal += 1
            if shard is not None and (ordinal - 1) % shard[1] != shard[0] - 1:
                continue
            taken += 1
            chunk.units.append(unit)
            if len(chunk.units) >= UNITS_PER_CHUNK:
                yield chunk
                chunk = Chunk(gold)
            if limit is not None and taken >= limit:
                break
        if chunk.units:
            yield chunk


_parser_spec: ParserSpec | None = None
_parser: TextParser | None = None


def _init_parser(spec: ParserSpec) -> None:
    global _parser_spec, _parser
    _parser_spec, _parser = spec, None


def _parse_chunk(chunk: Chunk) -> list[list[tuple[str, ParsedSentence]]]:
    """For every unit of the chunk, its `(record id, sentence)`s; the parser is loaded on first use.

    A gold sentence keeps its id; the k-th sentence of text line `<file>:<line>` is `<file>:<line>.<k>`.
    """
    global _parser
    if chunk.gold:
        return [[(unit_id, sentence)] for unit_id, sentence in chunk.units]
    if _parser is None:
        assert _parser_spec is not None, "_init_parser must run first"
        _parser = _parser_spec.load()
    parsed = _parser([text for _, text in chunk.units])
    return [[(f"{unit_id}.{k}", s) for k, s in enumerate(sentences, start=1)]
            for (unit_id, _), sentences in zip(chunk.units, parsed)]


def _parsed_chunks(chunks: Iterator[Chunk], spec: ParserSpec,
                   workers: int) -> Iterator[list[list[tuple[str, ParsedSentence]]]]:
    if workers <= 1:
        _init_parser(spec)
        try:
            yield from map(_parse_chunk, chunks)
        finally:
            _init_parser(spec)  # drop the model
        return
    import multiprocessing

    # spawn, not fork: torch and the parsers hold threads that a forked child would inherit broken
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_parser, initargs=(spec,)) as pool:
        yield from pool.imap(_parse_chunk, chunks)


@dataclass
class UnitOutput:
    """What one input unit (a text line, a CoNLL-U sentence) adds to `parsed/`: its records as JSON
    lines for train and dev, their counts, and the sentences dropped."""

    train: str = ""
    dev: str = ""
    n_train: int = 0
    n_dev: int = 0
    words: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def unit_output(sentences: Iterable[tuple[str, ParsedSentence]], max_words: int | None, seed: int,
                dev_ratio: float) -> UnitOutput:
    """The records of one unit's sentences, split by the seeded hash of each id; sentences without
    words, or with more than `max_words`, are dropped and counted."""
    out = UnitOutput()
    train: list[str] = []
    dev: list[str] = []
    for record_id, sentence in sentences:
        reason = EMPTY if not sentence.words else (
            TOO_LONG if max_words is not None and len(sentence.words) > max_words else None)
        if reason is not None:
            out.dropped[reason] = out.dropped.get(reason, 0) + 1
            continue
        line = _json_line(sentence_record(record_id, sentence))
        (dev if in_dev_split(record_id, seed, dev_ratio) else train).append(line)
        out.words += len(sentence.words)
    out.train, out.dev, out.n_train, out.n_dev = "".join(train), "".join(dev), len(train), len(dev)
    return out


def _local_outputs(files: Sequence[Path], spec: ParserSpec, *, workers: int, shard: tuple[int, int] | None,
                   limit: int | None, skip_bad: bool, dropped: Counter, max_words: int | None, seed: int,
                   dev_ratio: float) -> Iterator[UnitOutput]:
    """The output of every unit, in input order, parsed in this process or in `workers` processes."""
    chunks = _chunks(files, spec.kind, skip_bad, dropped, shard, limit)
    for results in _parsed_chunks(chunks, spec, workers):
        for unit in results:
            yield unit_output(unit, max_words, seed, dev_ratio)


# ---------------------------------------------------------------- the stage on Ray (engine="ray")

MAX_SEGMENTS = 8192  # (even) at this many, neighbouring segments are merged: the list stays small for any corpus


@dataclass
class Segment:
    """Consecutive input units for one worker call, from position `pos`: pieces of files, each
    `[file index, byte offset, line number, units of the file before it, units]`, one chunk each
    (the units the local run hands its parser together)."""

    pos: int
    pieces: list[list[int]] = field(default_factory=list)
    units: int = 0


def index_segments(files: Sequence[Path], parser: str, cap: int | None = None) -> tuple[list[Segment], int]:
    """Cuts the input units (the first `cap`) into segments, reading each file once; returns them
    and the number of units. A segment is one chunk of a file, or, past `MAX_SEGMENTS`, several."""
    segments: list[Segment] = []
    chunks_per_segment = 1
    current = Segment(0)
    total = 0
    for index, path in enumerate(files):
        for before, (offset, line) in enumerate(_unit_starts(path, _is_conllu(path, parser))):
            if cap is not None and total >= cap:
                break
            if before % UNITS_PER_CHUNK == 0:
                if len(current.pieces) >= chunks_per_segment:
                    segments.append(current)
                    current = Segment(total)
                    if len(segments) >= MAX_SEGMENTS:  # (an even number): half as many, twice as long
                        segments = [Segment(a.pos, a.pieces + b.pieces, a.units + b.units)
                                    for a, b in zip(segments[::2], segments[1::2])]
                        chunks_per_segment *= 2
                current.pieces.append([index, offset, line, before, 0])
            current.pieces[-1][4] += 1
            current.units += 1
            total += 1
    if current.units:
        segments.append(current)
    return segments, total


def _unit_starts(path: Path, gold: bool) -> Iterator[tuple[int, int]]:
    """`(byte offset, line number)` of the first line of each unit of a file: each non-blank line of
    text, each sentence block of CoNLL-U. Lines that are not UTF-8, and a file that cannot be read,
    still count: the worker reading them reports them as the local run does."""
    try:
        f = open(path, "rb")
    except OSError:
        yield 0, 1
        return
    with f:
        offset, blank = 0, True
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8", errors="replace").strip()
            if text and (blank or not gold):
                yield offset, number
            blank = not text
            offset += len(raw)


class SegmentParser:
    """`parse` on Ray: a Ray Data actor that reads segments of the inputs and turns their units into
    rows (`pos`, `train`, `dev`, `info`), one a unit. The parser is loaded once, on first use (gold
    CoNLL-U needs none). `info` holds the counts, and what the driver checks in order: a malformed
    CoNLL-U sentence or a repeated `sent_id` (as `read_conllu` would), a file that cannot be read."""

    def __init__(self, files: list[str], gold: list[bool], spec: ParserSpec, max_words: int | None, seed: int,
                 dev_ratio: float, hooks: Any):
        self.files, self.gold, self.hooks = [Path(f) for f in files], gold, hooks
        self.options = (max_words, seed, dev_ratio)
        _init_parser(spec)

    def __call__(self, batch: dict) -> Iterator[dict]:
        for pos, pieces in zip(batch["pos"], batch["pieces"]):
            self.hooks.started(int(pos))
            yield self._rows(int(pos), json.loads(pieces))
            self.hooks.produced()

    def _rows(self, pos: int, pieces: list[list[int]]) -> dict:
        import numpy as np

        rows: dict[str, list] = {"pos": [], "train": [], "dev": [], "info": []}

        def add(out: UnitOutput | None, info: dict) -> None:
            out = out or UnitOutput()
            info.update(t=out.n_train, d=out.n_dev, w=out.words, x=out.dropped)
            for key, value in (("pos", pos + len(rows["pos"])), ("train", out.train), ("dev", out.dev),
                               ("info", json.dumps(info))):
                rows[key].append(value)

        for index, offset, line, before, count in pieces:
            path, gold = self.files[index], self.gold[index]
            units: list = []
            fatal = None
            try:
                reader = _gold_units(_numbered_lines(path, offset, line), before) if gold else \
                    _text_units(path, offset, line)
                units.extend(islice(reader, count))
            except BadInput as e:  # a file that cannot be read, a line that is not UTF-8
                fatal = e
            if gold:
                for ordinal, first, sent_id, sentence in units:
                    info = {"file": index, "line": first, "sent_id": sent_id}
                    if isinstance(sentence, ConlluError):
                        add(None, {**info, "error": [str(sentence), sentence.line]})
                    else:
                        add(unit_output([(_gold_id(path, sent_id, ordinal), sentence)], *self.options), info)
            elif units:
                for sentences in _parse_chunk(Chunk(False, units)):
                    add(unit_output(sentences, *self.options), {})
            if fatal is not None:
                add(None, {"fatal": [fatal.message, fatal.path, fatal.record]})
                break
        return {"pos": np.array(rows["pos"], dtype=np.int64),
                **{key: np.array(rows[key], dtype=object) for key in ("train", "dev", "info")}}


def _ray_outputs(files: Sequence[Path], spec: ParserSpec, *, workers: int, limit: int | None, skip_bad: bool,
                 dropped: Counter, max_words: int | None, seed: int, dev_ratio: float, options: Any,
                 on_total: Any, ray_stats: dict) -> Iterator[UnitOutput]:
    """`_local_outputs` on Ray: the same outputs in the same order, parsed by a pool of `workers`
    `SegmentParser` actors; fills `ray_stats` (the cluster, the pool, the retries)."""
    from kadapter_cli.data import ray_engine
    from kadapter_cli.errors import KadapterError

    gold = [_is_conllu(f, spec.kind) for f in files]
    # With --skip-bad, skipped CoNLL-U sentences do not count towards --limit: read on until it is met.
    segments, total = index_segments(files, spec.kind, None if limit is None or (skip_bad and any(gold)) else limit)
    on_total(total)
    if not segments:
        return
    kwargs = {"files": [str(f) for f in files], "gold": gold, "spec": spec, "max_words": max_words, "seed": seed,
              "dev_ratio": dev_ratio}
    items = [{"pos": s.pos, "pieces": json.dumps(s.pieces)} for s in segments]
    reorder = ray_engine.Reorder()
    first_line: dict[str, int] = {}  # of the current CoNLL-U file, as read_conllu keeps it
    current_file, taken = -1, 0
    with ray_engine.ray_session(options) as session:
        ray_stats.update(session, segments=len(segments))
        batches = ray_engine.map_items(items, SegmentParser, workers=workers, options=options, kwargs=kwargs,
                                       stats=ray_stats)
        with contextlib.closing(batches):
            for batch in batches:
                for row in zip(batch["pos"].tolist(), batch["train"], batch["dev"], batch["info"]):
                    for _, train, dev, info_text in reorder.push(row[0], row):
                        info = json.loads(info_text)
                        if "fatal" in info:
                            ray_engine.raise_error(info["fatal"])
                        if "file" in info:
                            if info["file"] != current_file:
                                current_file, first_line = info["file"], {}
                            error = ConlluError(*info["error"]) if "error" in info else None
                            if not _keep_gold(files[current_file], info["line"], info["sent_id"], error, first_line,
                                              skip_bad, dropped):
                                continue
                        yield UnitOutput(train, dev, info["t"], info["d"], info["w"], info["x"])
                        taken += 1
                        if limit is not None and taken >= limit:
                            return
    if reorder.next < total:
        raise KadapterError(f"the Ray job returned {reorder.next:,} of the {total:,} input units")


def parse(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    spec: ParserSpec | None = None,
    max_words: int | None = None,
    dev_ratio: float = DEV_RATIO,
    seed: int = SPLIT_SEED,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    engine: str = DEFAULT_ENGINE,
    ray_options: "RayOptions | None" = None,
) -> dict:
    """Text or CoNLL-U files (or folders) → a `parsed/` artifact at `out`; returns its manifest.

    `shard=(i, n)` keeps only input units (text lines, CoNLL-U sentences) whose 0-based position
    is `i-1` modulo `n`; `limit` keeps the first N units. Each sentence goes to dev by the seeded
    hash of its id, so the split does not depend on workers or shards.

    `engine="ray"` parses on Ray (`ray_options`: the cluster, GPUs per worker), with `workers`
    parser actors: the same files, and the same manifest but for `config.engine` and `stats.ray`.
    """
    from rich.progress import TextColumn

    from kadapter_cli.data.ray_engine import check_engine
    from kadapter_cli.progress import progress

    spec = spec or ParserSpec()
    if spec.kind not in PARSERS:
        raise BadParameter("{kind} must be one of {parsers}, got {value!r}", spec.kind, parsers=", ".join(PARSERS))
    if not 0.0 <= dev_ratio < 1.0:
        raise BadParameter("{dev_ratio} must be in [0, 1), got {value}", dev_ratio)
    for name, value in (("workers", workers), ("limit", limit), ("max_words", max_words)):
        if value is not None and value < 1:
            raise BadParameter("{%s} must be 1 or more, got {value}" % name, value)
    if shard is not None and limit is not None:
        raise BadParameter("{limit} cannot be combined with {shard} (shards must cover their inputs whole)", limit)
    ray_options = check_engine(engine, ray_options, shard)
    files = input_files(inputs)
    kinds = sorted({"conllu" if _is_conllu(f, spec.kind) else spec.kind for f in files})
    if engine == "ray" and ray_options.num_gpus_per_worker and spec.device == "cpu" and kinds != ["conllu"]:
        raise BadParameter("{num_gpus_per_worker:{value:g}} reserves GPUs, but the parser runs on the CPU: "
                           "add {device:cuda} (or auto)", ray_options.num_gpus_per_worker)

    dropped: Counter = Counter()
    counts: Counter = Counter()
    ray_stats: dict[str, Any] = {}
    started = time.monotonic()

    def shown() -> dict:
        seconds = max(time.monotonic() - started, 1e-9)
        return {"sentences": counts["sentences"], "rate": f"{counts['sentences'] / seconds:,.0f}",
                "words_rate": f"{counts['words'] / seconds:,.0f}"}

    columns = TextColumn("{task.fields[sentences]:,} sentences, {task.fields[rate]} sentences/s, "
                         "{task.fields[words_rate]} words/s")
    with atomic_output(out, overwrite=overwrite) as folder, progress(columns) as bar, \
            open(folder / "train.jsonl", "w", encoding="utf-8") as train, \
            open(folder / "dev.jsonl", "w", encoding="utf-8") as dev:
        task = bar.add_task("parsing", total=None, unit="inputs", **shown())
        options = {"skip_bad": skip_bad, "dropped": dropped, "max_words": max_words, "seed": seed,
                   "dev_ratio": dev_ratio, "workers": workers, "limit": limit}
        if engine == "ray":
            outputs = _ray_outputs(files, spec, options=ray_options, ray_stats=ray_stats,
                                   on_total=lambda n: bar.update(task, total=n), **options)
        else:
            outputs = _local_outputs(files, spec, shard=shard, **options)
        shown_at = 0.0
        for output in outputs:
            train.write(output.train)
            dev.write(output.dev)
            counts.update(units=1, train=output.n_train, dev=output.n_dev, sentences=output.n_train + output.n_dev,
                          words=output.words)
            dropped.update(output.dropped)
            if time.monotonic() - shown_at > 0.2:
                shown_at = time.monotonic()
                bar.update(task, completed=counts["units"], **shown())
        bar.update(task, completed=counts["units"], total=counts["units"], **shown())  # ends full, not at N/?
        seconds = time.monotonic() - started
        if counts["sentences"] == 0 and shard is None:  # (a shard of few inputs may rightly be empty)
            raise BadInput(f"no sentences in the input ({counts['units']} non-blank lines or CoNLL-U sentences read"
                           + (f"; dropped: {dict(dropped)}" if dropped else "") + ")",
                           files[0] if len(files) == 1 else ", ".join(map(str, inputs)))
        train.close()
        dev.close()
        stats = {
            "units": counts["units"],
            "sentences": counts["sentences"],
            "words": counts["words"],
            "train": counts["train"],
            "dev": counts["dev"],
            "dropped": dict(sorted(dropped.items())),
            "parser": kinds,
            "model": "gold" if kinds == ["conllu"] else spec.model_name(),
            "seconds": round(seconds, 3),
            "words_per_second": round(counts["words"] / max(seconds, 1e-9), 1),
        }
        if shard is not None:
            stats["shard"] = f"{shard[0]}/{shard[1]}"
        config = {**asdict(spec), "max_words": max_words, "dev_ratio": dev_ratio, "seed": seed,
                  "workers": workers, "shard": list(shard) if shard else None, "skip_bad": skip_bad, "limit": limit}
        if engine == "ray":
            config["engine"] = engine
            stats["ray"] = ray_stats
        return write_manifest(folder, PARSED_KIND, config=config, inputs=sha256_inputs(files), stats=stats)


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def merge_parsed_shards(shards: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> dict:
    """The N `parsed/` outputs of `parse --shard I/N` → one `parsed/` artifact; returns its manifest.

    Records are concatenated in shard order (1..N). Each record's split comes from its id, so train
    and dev hold the same records as a single run's.
    """
    folders = find_artifacts(shards, "parsed/ shard")
    manifests = []
    for folder in folders:
        manifest = read_manifest(folder)
        if manifest["kind"] != PARSED_KIND or not manifest["config"].get("shard"):
            raise BadInput(ParamText("not a shard written by `parse {shard:I/N}`"), folder)
        verify_files(folder, manifest)
        manifests.append(manifest)
    specs = [tuple(m["config"]["shard"]) for m in manifests]
    totals = {n for _, n in specs}
    if len(totals) != 1 or len(set(specs)) != len(specs):
        raise BadInput("shards must be distinct parts of one sharding, got " + ", ".join(f"{i}/{n}" for i, n in specs))
    (total,) = totals
    missing = sorted(set(range(1, total + 1)) - {i for i, _ in specs})
    if missing:
        raise BadInput(f"shards {', '.join(f'{i}/{total}' for i in missing)} are missing; merge needs all {total}")
    ordered = [f for _, f in sorted(zip(specs, folders))]
    ordered_manifests = [m for _, m in sorted(zip(specs, manifests), key=lambda x: x[0])]
    with atomic_output(out, overwrite=overwrite) as folder:
        for name in ("train.jsonl", "dev.jsonl"):
            with open(folder / name, "w", encoding="utf-8") as f:
                for shard_folder in ordered:
                    with open(shard_folder / name, encoding="utf-8") as part:
                        for line in part:
                            f.write(line)
        stats: dict[str, Any] = {key: sum(m["stats"][key] for m in ordered_manifests)
                                 for key in ("units", "sentences", "words", "train", "dev", "seconds")}
        dropped: Counter = Counter()
        for m in ordered_manifests:
            dropped.update(m["stats"]["dropped"])
        stats["dropped"] = dict(sorted(dropped.items()))
        stats["parser"] = sorted({p for m in ordered_manifests for p in m["stats"]["parser"]})
        stats["model"] = ordered_manifests[0]["stats"]["model"]
        stats["words_per_second"] = round(stats["words"] / max(stats["seconds"], 1e-9), 1)
        config = {**{k: v for k, v in ordered_manifests[0]["config"].items() if k not in ("shard", "workers")},
                  "merged_shards": [str(f) for f in ordered]}
        inputs = [entry for m in ordered_manifests for entry in m["inputs"]]
        return write_manifest(folder, PARSED_KIND, config=config, inputs=inputs, stats=stats)
