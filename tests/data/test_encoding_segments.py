"""Cases found by mutation testing (docs/MUTATION.md) for the segment encoders of `kadapter_cli.data.encoding`
(CosmosQA's context + question + answer, sentence pairs): the exact layouts, where each segment lands,
longest-first truncation against Hugging Face's token-by-token rule, and every refusal's message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encoding_tokenizers import ID, word_level

from kadapter_cli.data.encoding import encode_segments, pair_template, truncate_longest_first
from kadapter_cli.modeling.backbone import load_tokenizer

A, B, C = [11, 12, 13, 14], [21, 22], [31, 32, 33]


@pytest.fixture(scope="module")
def roberta(tiny_backbone):
    return load_tokenizer(tiny_backbone)


@pytest.fixture(scope="module")
def bert(minilm):
    return load_tokenizer(minilm)


def _message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def test_roberta_pair_and_single_layouts_and_where_each_segment_starts(roberta):
    s, e = roberta.bos_token_id, roberta.eos_token_id
    assert pair_template(roberta) == ([s], [e, e], [e])
    enc = encode_segments(roberta, [A, B, C], 64)
    assert enc == {"input_ids": [s, *A, e, e, *B, e, e, *C, e], "segment_starts": [1, 7, 11],
                   "segment_lengths": [4, 2, 3]}
    enc = encode_segments(roberta, [A, B, C], 64, separator="single")
    assert enc == {"input_ids": [s, *A, e, *B, e, *C, e], "segment_starts": [1, 6, 9], "segment_lengths": [4, 2, 3]}
    assert encode_segments(roberta, [A, B, C], 64, template=pair_template(roberta)) == \
        encode_segments(roberta, [A, B, C], 64)


def test_bert_pair_layout(bert):
    cls, sep = bert.cls_token_id, bert.sep_token_id
    assert pair_template(bert) == ([cls], [sep], [sep])
    enc = encode_segments(bert, [A, B], 64)
    assert enc == {"input_ids": [cls, *A, sep, *B, sep], "segment_starts": [1, 6], "segment_lengths": [4, 2]}


def test_segments_are_truncated_longest_first_to_exactly_max_length(roberta):
    s, e = roberta.bos_token_id, roberta.eos_token_id
    # 6 special tokens, 7 left for 4 + 2 + 3: the longest (A) gives up one, then C (the later of two
    # equally long ones)
    enc = encode_segments(roberta, [A, B, C], 13)
    assert enc == {"input_ids": [s, *A[:3], e, e, *B, e, e, *C[:2], e], "segment_starts": [1, 6, 10],
                   "segment_lengths": [3, 2, 2]}
    # exactly the special tokens: every segment keeps nothing, and still has its place
    enc = encode_segments(roberta, [A, B, C], 6)
    assert enc == {"input_ids": [s, e, e, e, e, e], "segment_starts": [1, 3, 5], "segment_lengths": [0, 0, 0]}
    assert _message(lambda: encode_segments(roberta, [A, B, C], 5)) == \
        "max_length 5 leaves no room next to the 6 special tokens"
    assert _message(lambda: encode_segments(roberta, [A, B, C], 3, separator="single")) == \
        "max_length 3 leaves no room next to the 4 special tokens"


def test_segment_refusals():
    tok = word_level()  # no sep_token of its own
    assert _message(lambda: encode_segments(tok, [A, B], 16, separator="double")) == \
        "separator must be one of pair, single, got 'double'"
    assert _message(lambda: encode_segments(tok, [A, B], 16, separator="single")) == \
        "the tokenizer has no sep_token for the single-separator layout"
    assert pair_template(tok) == ([ID["[CLS]"]], [ID["[SEP]"]], [ID["[SEP]"]])
    assert _message(lambda: truncate_longest_first([1, 2], -1)) == "no room for the segments (budget -1)"
    assert truncate_longest_first([1, 2], 0) == [0, 0]


def _token_by_token(lengths: list[int], budget: int) -> list[int]:
    """Hugging Face's `longest_first`: one token at a time off the longest; between equals, the later one."""
    kept = list(lengths)
    while sum(kept) > budget:
        longest = max(kept)
        kept[max(i for i, n in enumerate(kept) if n == longest)] -= 1
    return kept


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(0, 40))
def test_longest_first_equals_the_token_by_token_rule(lengths, budget):
    assert truncate_longest_first(lengths, budget) == _token_by_token(lengths, budget)
