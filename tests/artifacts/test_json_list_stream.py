"""`iter_json_list`: a JSON list file parsed one item at a time (what `kadapter encode` reads a JSON
list with), giving `read_json`'s items and, for a file that is not one valid JSON list, its error."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadapter_cli.artifacts.io import iter_json_list, read_json
from kadapter_cli.errors import BadInput

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(JSON_VALUES, max_size=6), indent=st.sampled_from([None, 0, 2, "\t"]),
       separators=st.sampled_from([None, (",", ":"), (" ,\r\n ", " : ")]), chunk_size=st.integers(1, 9),
       bom=st.booleans(), ascii_only=st.booleans())
def test_the_items_are_read_jsons_whatever_the_chunks(tmp_path_factory, items, indent, separators, chunk_size, bom,
                                                      ascii_only):
    """Chunks of 1 to 9 characters cut every item, number (`1|e+16`), escape and blank somewhere."""
    path = tmp_path_factory.mktemp("list") / "items.json"
    text = json.dumps(items, indent=indent, separators=separators, ensure_ascii=ascii_only) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    assert list(iter_json_list(path, chunk_size)) == list(enumerate(read_json(path)))


@pytest.mark.parametrize("content", [
    b'[{"text": "a"}, {"text": "b"},]',  # a trailing comma
    b'[{"text": "a"} {"text": "b"}]',  # no comma
    b'[{"text": "a"}, {"text": "b"}',  # never closed
    b'[{"text": "a"}, {"text": "b"}]\n{"text": "c"}',  # something after the list
    b'[{"text": "a"}, {"text": "b\n',  # a string never closed
    b'[{"text": "a"}, 12x]',
    b'[{"text": "a"}, {"text": "\xff"}]',  # not UTF-8
    b'[\n  {"text": "a"},\n  {"text": "b"},\n  ,\n]',
])
@pytest.mark.parametrize("chunk_size", [3, 1 << 16])
def test_a_bad_file_raises_read_jsons_error_naming_line_and_column(tmp_path, content, chunk_size):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(BadInput) as expected:
        read_json(path)
    with pytest.raises(BadInput) as got:
        list(iter_json_list(path, chunk_size))
    assert str(got.value) == str(expected.value)


def test_memory_holds_one_item_not_the_list(tmp_path):
    """Peak memory (tracemalloc) over a 4.4 MB list: a few read chunks streamed (0.46 MB with 64 KiB
    chunks), more than the file read whole. A first small read imports the parser outside the count."""
    path = tmp_path / "texts.json"
    path.write_text(json.dumps([{"id": i, "text": f"sentence number {i} about Paris and France ."}
                                for i in range(60_000)]))
    size = path.stat().st_size
    assert size > 3_000_000
    small = tmp_path / "small.json"
    small.write_text(json.dumps([{"text": "a"}]))
    assert list(iter_json_list(small)) == [(0, {"text": "a"})]

    def peak(read) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(lambda: sum(1 for _ in iter_json_list(path))) < 8 * (1 << 16) < size / 8
    assert peak(lambda: read_json(path)) > size


def test_a_missing_file_and_a_stream_that_stops_short_fall_back_to_read_json(tmp_path, monkeypatch):
    from kadapter_cli.artifacts import io

    with pytest.raises(BadInput, match="file not found"):
        list(iter_json_list(tmp_path / "missing.json"))
    path = tmp_path / "items.json"
    path.write_text(json.dumps(["a", {"text": "b"}, 3]))

    def stops_after_one(path, chunk_size):
        yield "a"
        raise io._NotStreamable

    monkeypatch.setattr(io, "_stream_json_list", stops_after_one)
    assert list(iter_json_list(path)) == [(0, "a"), (1, {"text": "b"}), (2, 3)]  # each item once, in order
