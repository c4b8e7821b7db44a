"""Open-domain QA data in the four formats users hold → one record per question.

Every reader returns records `{"id", "question", "answers": [str], "paragraphs": [str]}`
(docs/tasks.md shows each one's files):

- `openqa`: thunlp/OpenQA's `{split}.txt` (JSON Lines `{"question", "answers"}`) + `{split}.json`
  (line-aligned, each line a JSON list of `{"question": [tok], "document": [tok]}`). OpenQA's rules:
  paragraphs of 5 tokens or fewer are dropped, and the raw gold answers are tokenised as the
  paragraphs were (CoreNLP's PTB tokens, approximated offline by `open_qa.ptb`: `halley's comet`
  → `halley 's comet`), so that they are matched and scored under the same tokenisation.
- `searchqa`: the original SearchQA JSON, one file per question (`question`, `answer`,
  `search_results[].snippet`, optional `title`), in a folder or a zip per split.
- `mrqa`: MRQA 2019 JSON Lines (`.jsonl` or `.jsonl.gz`), a header line, then one context per line
  with its `qas`; the context's `[DOC]`s (and `[PAR]`s within one) are the paragraphs, `[TLE]`
  marks a title. `detected_answers` char spans (end inclusive) are checked against the context.
- `quasar`: the official Quasar-T `questions/{split}_questions.json(.gz)` (JSON Lines `uid`,
  `question`, `answer`) + `contexts/short|long/{split}_contexts.json(.gz)` (`uid`,
  `contexts`: [[score, text]]), joined on `uid`.
- `records`: the internal record itself, as JSON Lines or a JSON list (what `predict` is usually
  given; `answers` may be absent there).

In every format a question keeps at most `max_paragraphs` paragraphs (OpenQA: 50). Bad input is
`BadInput` naming the file and line (or record), or with `skip_bad` the question is skipped and
counted. A question left without paragraphs is bad input too, but with `skip_bad` it is kept, with
no paragraphs, and counted apart: it cannot be trained on, but a dev or test question still counts,
as wrong, as the SQuAD script and OpenQA count a question they have no answer for. An OpenQA `.json` whose line count differs from its `.txt` is always an error: the
alignment of every later line is then unknown.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from kadapter_cli.errors import BadInput, record_text
from kadapter_cli.tasks.open_qa.ptb import ptb_join

FORMATS = ("openqa", "searchqa", "mrqa", "quasar", "records")
SPLIT_NAMES = {"train": ("train",), "dev": ("dev", "val", "validation"), "test": ("test",)}
OPENQA_MIN_TOKENS = 6  # OpenQA keeps paragraphs of more than 5 tokens
QUASAR_CONTEXTS = ("short", "long")


@dataclass
class QASource:
    """Where one split lives: its format and the files that make it up."""

    format: str
    paths: list[Path]

    @property
    def main(self) -> Path:
        return self.paths[0]


@dataclass
class QAReadOptions:
    max_paragraphs: int = 50
    titles: bool = False  # SearchQA / MRQA: put the result's title before its snippet
    skip_bad: bool = False


@dataclass
class QAData:
    records: list[dict]
    skipped: int = 0
    source: QASource | None = None
    without_paragraphs: int = 0  # kept with `skip_bad`, no paragraphs (scored as wrong)


class _BadCounter:
    """Raises each `BadInput`, or with `skip_bad` counts it (the manifest reports the count)."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.where: list[str] = []

    def __call__(self, error: BadInput) -> None:
        if not self.skip:
            raise error
        self.where.append(str(error))


# ---------------------------------------------------------------- finding a split's files


def find_split(data_dir: str | Path, split: str, format: str = "auto", contexts: str = "short") -> QASource | None:
    """The files of `split` in `data_dir` (None when it has none), in the named format or the first
    one found: OpenQA `{split}.txt`+`.json`, MRQA `{split}.jsonl(.gz)` (or a `{split}/` folder holding
    one), SearchQA `{split}/` folder or `{split}.zip` of per-question JSON, Quasar-T
    `questions/` + `contexts/<contexts>/`, internal records `{split}.json(l)`. `dev` is also found as
    `val` or `validation` (SearchQA's and MRQA's names)."""
    _check_format(format)
    data_dir = Path(data_dir)
    for name in SPLIT_NAMES.get(split, (split,)):
        for found in _candidates(data_dir, name, contexts):
            if format in ("auto", found.format):
                return found
    return None


def _candidates(data_dir: Path, name: str, contexts: str) -> Iterator[QASource]:
    txt, js = data_dir / f"{name}.txt", data_dir / f"{name}.json"
    if txt.is_file():
        if not js.is_file():
            raise BadInput(f"OpenQA questions file without its paragraphs file {js.name}", txt)
        yield QASource("openqa", [txt, js])
    for suffix in (".jsonl", ".jsonl.gz", ".json"):
        path = data_dir / f"{name}{suffix}"
        if path.is_file() and not (suffix == ".json" and txt.is_file()):
            yield QASource(_sniff_lines_format(path), [path])
    folder = data_dir / name
    if folder.is_dir():
        mrqa = sorted([*folder.glob("*.jsonl"), *folder.glob("*.jsonl.gz")])
        if mrqa:
            yield QASource("mrqa", mrqa)
        elif any(folder.rglob("*.json")):
            yield QASource("searchqa", [folder])
    if (data_dir / f"{name}.zip").is_file():
        yield QASource("searchqa", [data_dir / f"{name}.zip"])
    questions = _first_file(data_dir / "questions", f"{name}_questions")
    if questions is not None:
        yield QASource("quasar", [questions, _quasar_contexts(questions, name, contexts)])


def detect_input(path: str | Path, contexts: str = "short", format: str = "auto") -> QASource:
    """The format of one input given by path (what `predict` reads): an OpenQA `.txt` (its `.json`
    beside it), a Quasar-T `*_questions.json(.gz)` (contexts found beside its folder), a SearchQA
    folder, zip or single question file, an MRQA or records JSON Lines file."""
    _check_format(format)
    path = Path(path)
    if not path.exists():
        raise BadInput("file not found", path)
    if path.is_dir() or path.suffix == ".zip":
        source = QASource("searchqa", [path])
    elif path.suffix == ".txt":
        js = path.with_suffix(".json")
        if not js.is_file():
            raise BadInput(f"OpenQA questions file without its paragraphs file {js.name}", path)
        source = QASource("openqa", [path, js])
    elif re.search(r"_questions\.json(\.gz)?$", path.name):
        split = path.name.split("_questions")[0]
        source = QASource("quasar", [path, _quasar_contexts(path, split, contexts)])
    else:
        source = QASource(_sniff_lines_format(path), [path])
    if format not in ("auto", source.format):
        raise BadInput(f"expected {format} input, but this looks like {source.format}", path)
    return source


def _check_format(format: str) -> None:
    if format != "auto" and format not in FORMATS:
        raise BadInput(f"unknown QA format {format!r} (known: auto, {', '.join(FORMATS)})")


def _first_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".json.gz", ".json", ".jsonl.gz", ".jsonl"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _quasar_contexts(questions: Path, split: str, contexts: str) -> Path:
    if contexts not in QUASAR_CONTEXTS:
        raise BadInput(f"Quasar-T contexts must be short or long, got {contexts!r}")
    folder = questions.parent.parent / "contexts" / contexts
    found = _first_file(folder, f"{split}_contexts")
    if found is None:
        raise BadInput(f"Quasar-T questions without contexts: expected {folder / (split + '_contexts.json.gz')}",
                       questions)
    return found


def _sniff_lines_format(path: Path) -> str:
    """`mrqa`, `searchqa` (one question object) or `records`, from the first JSON value in the file."""
    first = _first_json_value(path)
    if isinstance(first, dict) and ("header" in first or "qas" in first):
        return "mrqa"
    if isinstance(first, dict) and "search_results" in first:
        return "searchqa"
    if isinstance(first, dict) and "paragraphs" in first:
        return "records"
    raise BadInput("not a QA file this reader knows: expected MRQA JSON Lines, SearchQA JSON or records with "
                   "'question' and 'paragraphs'", path, "line 1")


def _first_json_value(path: Path) -> Any:
    for _, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            break  # one JSON value over many lines (a JSON list or an indented object)
        return value[0] if isinstance(value, list) and value else value
    value = _load_json(path)
    return value[0] if isinstance(value, list) and value else value


# ---------------------------------------------------------------- reading


def read_qa(source: QASource, options: QAReadOptions | None = None, labeled: bool = True) -> QAData:
    """Records of one split; `labeled=False` allows questions without answers (`predict`)."""
    options = options or QAReadOptions()
    reader: Callable[..., Iterator[tuple]] = {
        "openqa": _read_openqa, "searchqa": _read_searchqa, "mrqa": _read_mrqa, "quasar": _read_quasar,
        "records": _read_records}[source.format]
    return _collect(lambda bad: reader(source.paths, options, bad), options, labeled, source.main, source)


def read_qa_records(values: Sequence[Any], options: QAReadOptions | None = None, labeled: bool = True,
                    name: str = "<records>") -> QAData:
    """Records given in memory, as the `records` format holds them (`{"id", "question", "answers",
    "paragraphs"}`, `id` defaulting to `record N` as in a JSON list file); errors name `name`."""
    options = options or QAReadOptions()
    where_values = ((f"record {i}", value) for i, value in enumerate(values))
    return _collect(lambda bad: _record_values(where_values, Path(name), bad), options, labeled, Path(name))


def _collect(read: Callable[[_BadCounter], Iterator[tuple]], options: QAReadOptions, labeled: bool, main: Path,
             source: QASource | None = None) -> QAData:
    """The records `read(bad)` yields as `(record, path, where)`, paragraphs cut to `max_paragraphs`;
    a question without paragraphs (or, when `labeled`, without answers) is bad."""
    if options.max_paragraphs < 1:
        raise BadInput(f"max_paragraphs must be at least 1, got {options.max_paragraphs}")
    bad = _BadCounter(options.skip_bad)
    records = []
    without_paragraphs = 0
    for record, path, where in read(bad):
        record["paragraphs"] = record["paragraphs"][: options.max_paragraphs]
        if not record["paragraphs"] and not options.skip_bad:
            raise BadInput("the question has no paragraphs", path, where)
        if labeled and not record["answers"]:
            bad(BadInput("the question has no answers", path, where))
            continue
        without_paragraphs += not record["paragraphs"]
        records.append(record)
    if not records:
        raise BadInput("no questions" + (f" ({len(bad.where)} skipped as bad)" if bad.where else ""), main)
    return QAData(records, len(bad.where), source, without_paragraphs)


def _record(id_: Any, question: Any, answers: Any, paragraphs: list[str], path: Path, where: str) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise BadInput("'question' must be a non-empty string", path, where)
    if answers is None:
        answers = []
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise BadInput("'answers' must be a list of strings", path, where)
    return {"id": str(id_), "question": question.strip(), "answers": [a for a in answers if a.strip()],
            "paragraphs": paragraphs}


def _read_openqa(paths: Sequence[Path], options: QAReadOptions, bad: _BadCounter) -> Iterator[tuple]:
    txt, js = paths
    question_lines = _iter_json_lines(txt)
    paragraph_lines = _iter_json_lines(js)
    while True:
        q, p = next(question_lines, None), next(paragraph_lines, None)
        if q is None and p is None:
            return
        if q is None or p is None:
            longer, (lineno, _) = (js, p) if q is None else (txt, q)
            shorter = txt if q is None else js
            raise BadInput(f"has more lines than {shorter.name}: the two files must be line-aligned", longer,
                           f"line {lineno}")
        (lineno, question), (_, docs) = q, p
        where = f"line {lineno}"
        try:
            if isinstance(question, BadInput):
                raise question
            if isinstance(docs, BadInput):
                raise docs
            if not isinstance(question, dict) or "question" not in question:
                raise BadInput("expected an object with 'question' and 'answers'", txt, where)
            if not isinstance(docs, list):
                raise BadInput("expected a JSON list of paragraphs", js, where)
            paragraphs = []
            for doc in docs:
                tokens = doc.get("document") if isinstance(doc, dict) else None
                if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                    raise BadInput("each paragraph must be an object with a 'document' token list", js, where)
                if len(tokens) >= OPENQA_MIN_TOKENS:
                    paragraphs.append(" ".join(tokens))
            record = _record(lineno, question["question"], question.get("answers"), paragraphs, js, where)
            record["answers"] = [ptb_join(answer) for answer in record["answers"]]
            yield record, js, where
        except BadInput as e:
            bad(e)


def _read_searchqa(paths: Sequence[Path], options: QAReadOptions, bad: _BadCounter) -> Iterator[tuple]:
    for path, where, default_id, load in _searchqa_files(paths[0]):
        try:
            data = load()
            if not isinstance(data, dict):
                raise BadInput("expected one JSON object (a SearchQA question)", path, where)
            results = data.get("search_results")
            if not isinstance(results, list):
                raise BadInput("missing 'search_results' list", path, where)
            paragraphs = []
            for result in results:
                if not isinstance(result, dict):
                    raise BadInput("each search result must be an object", path, where)
                snippet, title = result.get("snippet"), result.get("title")
                if isinstance(snippet, str) and snippet.strip():
                    paragraphs.append(_titled(title, snippet, options.titles))
            yield _record(data.get("id", default_id), data.get("question"), data.get("answer"),
                          paragraphs, path, where), path, where
        except BadInput as e:
            bad(e)


def _searchqa_files(path: Path) -> Iterator[tuple[Path, str | None, str, Callable[[], Any]]]:
    """`(file, where, default id, load)` for every question file of a folder, a zip or a single file, by name."""
    if path.is_dir():
        for f in sorted(path.rglob("*.json")):
            yield f, None, f.stem, (lambda f=f: _load_json(f))
    elif path.suffix == ".zip":
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise BadInput(f"not a readable zip file: {e}", path) from None
        with archive:
            for name in sorted(n for n in archive.namelist() if n.endswith(".json")):
                yield path, f"member {name}", Path(name).stem, (lambda name=name: _parse_json(archive.read(name), path, f"member {name}"))
    else:
        yield path, None, path.stem, (lambda: _load_json(path))


def _titled(title: Any, text: str, titles: bool) -> str:
    text = text.strip()
    if titles and isinstance(title, str) and title.strip():
        return f"{title.strip()}\n{text}"
    return text


_MRQA_DOC = re.compile(r"\s*\[DOC\]\s*")
_MRQA_PAR = re.compile(r"\s*\[PAR\]\s*")
_MRQA_TITLE = re.compile(r"^\[TLE\]\s*")


def _read_mrqa(paths: Sequence[Path], options: QAReadOptions, bad: _BadCounter) -> Iterator[tuple]:
    for path in paths:
        for where, line in _parsed(_iter_json_lines(path), bad):
            try:
                if isinstance(line, dict) and "header" in line:
                    continue
                if not isinstance(line, dict) or not isinstance(line.get("context"), str) \
                        or not isinstance(line.get("qas"), list):
                    raise BadInput("expected an MRQA context object with 'context' and 'qas'", path, where)
            except BadInput as e:
                bad(e)
                continue
            context = line["context"]
            paragraphs = _mrqa_paragraphs(context, options.titles)
            for qa in line["qas"]:
                try:
                    if not isinstance(qa, dict):
                        raise BadInput("each element of 'qas' must be an object", path, where)
                    _check_mrqa_spans(qa, len(context), path, where)
                    yield (_record(qa.get("qid", qa.get("id")), qa.get("question"), qa.get("answers"),
                                   list(paragraphs), path, where), path, where)
                except BadInput as e:
                    bad(e)


def _mrqa_paragraphs(context: str, titles: bool) -> list[str]:
    paragraphs = []
    for doc in _MRQA_DOC.split(context):
        parts = _MRQA_PAR.split(doc)
        title = None
        if _MRQA_TITLE.match(parts[0]):
            title = _MRQA_TITLE.sub("", parts[0])
            parts = parts[1:]
        for i, part in enumerate(parts):
            if part.strip():
                paragraphs.append(_titled(title if i == 0 else None, part, titles))
    return paragraphs


def _check_mrqa_spans(qa: dict, context_length: int, path: Path, where: str) -> None:
    for answer in qa.get("detected_answers") or []:
        spans = answer.get("char_spans", []) if isinstance(answer, dict) else None
        if not isinstance(spans, list):
            raise BadInput("'detected_answers' must hold objects with 'char_spans'", path, where)
        for span in spans:
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)
                    and 0 <= span[0] <= span[1] < context_length):
                raise BadInput(f"answer char span {span} is outside its context ({context_length} characters; "
                               "end inclusive)", path, where)


def _read_quasar(paths: Sequence[Path], options: QAReadOptions, bad: _BadCounter) -> Iterator[tuple]:
    questions_path, contexts_path = paths
    questions: dict[str, tuple[dict, str]] = {}
    for where, q in _parsed(_iter_json_lines(questions_path), bad):
        try:
            if not isinstance(q, dict) or not isinstance(q.get("uid"), str):
                raise BadInput("expected a Quasar-T question object with a 'uid'", questions_path, where)
            if q["uid"] in questions:
                raise BadInput(f"uid {q['uid']!r} is given twice", questions_path, where)
            questions[q["uid"]] = (q, where)
        except BadInput as e:
            bad(e)
    paragraphs: dict[str, list[str]] = {}
    for where, c in _parsed(_iter_json_lines(contexts_path), bad):
        try:
            if not isinstance(c, dict) or not isinstance(c.get("contexts"), list):
                raise BadInput("expected a Quasar-T context object with 'uid' and 'contexts'", contexts_path, where)
            if c.get("uid") not in questions:
                raise BadInput(f"context uid {c.get('uid')!r} has no question in {questions_path.name}",
                               contexts_path, where)
            texts = []
            for item in c["contexts"]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], str)):
                    raise BadInput("each context must be a [score, text] pair", contexts_path, where)
                if item[1].strip():
                    texts.append(item[1].strip())
            paragraphs[c["uid"]] = texts
        except BadInput as e:
            bad(e)
    for uid, (q, where) in questions.items():
        try:
            yield (_record(uid, q.get("question"), q.get("answer"), paragraphs.get(uid, []), questions_path, where),
                   questions_path, where)
        except BadInput as e:
            bad(e)


def _read_records(paths: Sequence[Path], options: QAReadOptions, bad: _BadCounter) -> Iterator[tuple]:
    yield from _record_values(_parsed(_iter_json_values(paths[0]), bad), paths[0], bad)


def _record_values(values: Iterable[tuple[str, Any]], path: Path, bad: _BadCounter) -> Iterator[tuple]:
    """`(record, path, where)` of records in the internal format, given as `(where, value)`."""
    for where, raw in values:
        try:
            if not isinstance(raw, dict):
                raise BadInput("expected a JSON object", path, where)
            paragraphs = raw.get("paragraphs")
            if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
                raise BadInput("'paragraphs' must be a list of strings", path, where)
            record = _record(raw.get("id", where), raw.get("question"), raw.get("answers"),
                             [p.strip() for p in paragraphs if p.strip()], path, where)
            yield record, path, where
        except BadInput as e:
            bad(e)


# ---------------------------------------------------------------- low-level JSON reading


def _open_binary(path: Path) -> io.BufferedIOBase:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                try:
                    yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", path,
                                   f"line {lineno}") from None
        except (gzip.BadGzipFile, EOFError, OSError) as e:
            raise BadInput(f"cannot read: {e}", path) from None


def _iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """`(line, value)` for every non-blank line; a malformed line yields a `BadInput` as its value
    (the caller decides whether it is skipped: line alignment must survive a bad line)."""
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, BadInput(f"malformed JSON: {e.msg}", path, f"line {lineno}")


def _parsed(values: Iterator[tuple[int | str, Any]], bad: _BadCounter) -> Iterator[tuple[str, Any]]:
    """`("line N" or "record N", value)` of the values that parsed; a malformed one goes to `bad`."""
    for where, value in values:
        if isinstance(value, BadInput):
            bad(value)
        else:
            yield (f"line {where}" if isinstance(where, int) else where), value


def _iter_json_values(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of a JSON list (`record N (counted from 0)`) or JSON Lines (`line N`)."""
    first = next((line for _, line in _iter_lines(path) if line.strip()), "")
    if first.lstrip().startswith("["):
        data = _load_json(path)
        if not isinstance(data, list):
            raise BadInput("expected a JSON list of records", path)
        for i, value in enumerate(data):
            yield record_text(i), value
    else:
        for lineno, value in _iter_json_lines(path):
            yield f"line {lineno}", value


def _load_json(path: Path) -> Any:
    with _open_binary(path) as f:
        try:
            data = f.read()
        except (gzip.BadGzipFile, EOFError, OSError) as e:
            raise BadInput(f"cannot read: {e}", path) from None
    return _parse_json(data, path, None)


def _parse_json(data: bytes, path: Path, where: str | None) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start})", path, where) from None
    except json.JSONDecodeError as e:
        raise BadInput(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", path, where) from None
