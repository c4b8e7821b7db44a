"""Reading and writing the files artifacts are made of: sha256 hashes, JSON, JSON Lines, text lines
and YAML, each failure a `BadInput` naming the file and line; the seeded train/dev split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from kadapter_cli.artifacts.hub import describe_source
from kadapter_cli.errors import BadInput

# ---------------------------------------------------------------- hashing


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_inputs(paths: Iterable[str | Path]) -> list[dict[str, str]]:
    """`[{"path", "sha256"}]` for every file under the given files and folders (sorted, stable). A file
    that came from the Hub is named `hf://org/name@<commit>/<path>` (`hub.describe_source`), not by its
    place in this machine's cache."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out.append({"path": describe_source(f), "sha256": sha256_file(f)})
    return out


# ---------------------------------------------------------------- JSON and JSON Lines


def write_json(path: str | Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is skipped
            return json.load(f)
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except UnicodeDecodeError as e:
        raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
    except json.JSONDecodeError as e:
        raise BadInput(f"malformed JSON: {e.msg}", path, f"line {e.lineno} column {e.colno}") from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None


def iter_json_list(path: str | Path, chunk_size: int = 1 << 16) -> Iterator[tuple[int, Any]]:
    """Yields `(index, item)` of a file holding one JSON list, parsing one item at a time: memory holds
    one item and one read chunk, never the whole list. The items are `read_json`'s, and a file that is
    not one valid JSON list raises what `read_json` raises (the file is then read whole, to name the
    line and column; items before the fault have been yielded already)."""
    path = Path(path)
    done = 0
    try:
        for done, item in enumerate(_stream_json_list(path, chunk_size), start=1):
            yield done - 1, item
        return
    except (_NotStreamable, UnicodeDecodeError, OSError):
        pass
    values = read_json(path)  # raises the error, naming its line and column
    if not isinstance(values, list):
        raise BadInput(f"expected a JSON list, got {type(values).__name__}", path)
    yield from enumerate(values[done:], start=done)  # never reached for a file the stream read wrong


class _NotStreamable(Exception):
    """The file is not one well-formed JSON list (`read_json` then says where)."""


def _stream_json_list(path: Path, chunk_size: int) -> Iterator[Any]:
    """The items of the JSON list in `path`, parsed one at a time by ijson (numbers as `json` reads
    them: int, or float); `_NotStreamable` where the file is not one well-formed list."""
    import ijson

    with open(path, "rb") as f:
        head = f.read(3)
        f.seek(3 if head == b"\xef\xbb\xbf" else 0)  # a byte-order mark (Windows editors) is skipped
        while (first := f.read(1)) in b" \t\r\n" and first:
            pass
        if first != b"[":
            raise _NotStreamable  # not a list (or empty): read_json names what it is
        f.seek(-1, 1)
        try:
            yield from ijson.items(f, "item", use_float=True, buf_size=chunk_size)
        except ijson.JSONError:
            raise _NotStreamable from None


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yields `(line_number, record)`; a malformed line is `BadInput` naming the file and line."""
    path = Path(path)
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"malformed JSON: {e.msg}", path, f"line {lineno}") from None
        if not isinstance(rec, dict):
            raise BadInput(f"expected a JSON object, got {type(rec).__name__}", path, f"line {lineno}")
        yield lineno, rec


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line)` of a UTF-8 text file, newline kept, a leading byte-order mark
    dropped (every reader built on it accepts files saved by Windows editors); unreadable files and
    invalid UTF-8 are `BadInput` naming the file and the line that holds the bad bytes.

    Lines are decoded one at a time: a text-mode reader decodes whole chunks ahead of the line it
    returns, so its error would point at the wrong line.
    """
    for lineno, _, line in iter_text_line_offsets(path):
        yield lineno, line


def iter_text_line_offsets(path: str | Path, offset: int = 0, first_line: int = 1) -> Iterator[tuple[int, int, str]]:
    """`iter_text_lines` with each line's byte offset: `(line_number, offset, line)`, starting at byte
    `offset`, which is the start of line `first_line` (a reader of one part of a file starts there)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput("file not found", path) from None
    except IsADirectoryError:
        raise BadInput("is a folder, expected a file", path) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", path) from None
    with f:
        f.seek(offset)
        for lineno, raw in enumerate(f, start=first_line):
            try:
                yield lineno, offset, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", path,
                               f"line {lineno}") from None
            offset += len(raw)


def read_jsonl(path: str | Path) -> list[dict]:
    return [r for _, r in iter_jsonl(path)]


# ---------------------------------------------------------------- train/dev split

DEV_RATIO = 0.1  # the data stages' default share of records that go to dev
SPLIT_SEED = 42  # and the default seed of their split


def in_dev_split(record_id: str, seed: int, dev_ratio: float) -> bool:
    """Whether the record with this id goes to dev: a seeded sha256 of the id, so the split is
    reproducible and independent of input order, workers and shards (Python's `hash` is salted)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < dev_ratio * 2.0**64


def input_files(inputs: Iterable[str | Path], wanted, description: str) -> list[Path]:
    """Files as given; folders walked in sorted order for files where `wanted(path)` holds.
    `description` names those files in the error for a folder that holds none."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p))
            if not found:
                raise BadInput(f"folder holds no {description} files", path)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise BadInput("file not found", path)
    return files


def load_yaml_mapping(path: str | Path, what: str = "YAML file", shape: str = "expected a mapping") -> dict:
    """A YAML mapping read with `yaml.safe_load` (no `!!python` tags); empty file → {}.
    `shape` says in errors what the mapping should be."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{what} not found", path) from None
    except UnicodeDecodeError as e:
        raise BadInput(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
    except OSError as e:
        raise BadInput(f"cannot read {what}: {e.strerror or e}", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise BadInput(f"malformed YAML: {getattr(e, 'problem', e)}", path,
                       f"line {mark.line + 1}" if mark else None) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{shape}, got {type(data).__name__}", path)
    return data
