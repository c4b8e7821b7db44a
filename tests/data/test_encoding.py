"""Encoding: markers, positions, truncation and word alignment, on a BERT WordPiece tokenizer (MiniLM)
and a RoBERTa byte-level BPE tokenizer (the tiny backbone's)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kadapter_cli.data.encoding import (
    IGNORE_INDEX,
    encode_dependency,
    encode_relation,
    encode_typing,
    special_tokens,
    word_pieces,
)

# TACRED, allenai/kb fixture record 1: subject "Douglas Flint" (8..9), object "chairman" (12).
TACRED_TOKENS = ("At the same time , Chief Financial Officer Douglas Flint will become chairman , "
                 "succeeding Stephen Green who is leaving to take a government job .").split()


@pytest.fixture(scope="module")
def bert(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


@pytest.fixture(scope="module")
def roberta(tiny_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_backbone, add_prefix_space=True)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def pieces(tokenizer, words):
    """Sub-token ids of `words`, tokenized on their own (no special tokens)."""
    return [i for p in word_pieces(tokenizer, words) for i in p]


def tokens_of(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


# ---------------------------------------------------------------- relations


def test_relation_bert_exact_sequence(bert):
    enc = encode_relation(bert, TACRED_TOKENS, (8, 9), (12, 12), 64)
    toks = tokens_of(bert, enc["input_ids"])
    assert toks[:18] == ["[CLS]", "at", "the", "same", "time", ",", "chief", "financial", "officer",
                         "@", "douglas", "flint", "@", "will", "become", "#", "chairman", "#"]
    assert toks[-1] == "[SEP]"
    assert (enc["subj_pos"], enc["obj_pos"]) == (9, 15)


def test_relation_markers_wrap_the_entities(tokenizer):
    enc = encode_relation(tokenizer, TACRED_TOKENS, (8, 9), (12, 12), 128)
    ids = enc["input_ids"]
    prefix, suffix = special_tokens(tokenizer)
    at, hash_ = pieces(tokenizer, ["@"]), pieces(tokenizer, ["#"])
    assert ids[: len(prefix)] == prefix and ids[-len(suffix):] == suffix
    s, o = enc["subj_pos"], enc["obj_pos"]
    subject = pieces(tokenizer, ["Douglas", "Flint"])
    assert ids[s: s + len(at)] == at
    assert ids[s + len(at): s + len(at) + len(subject)] == subject
    assert ids[s + len(at) + len(subject): s + 2 * len(at) + len(subject)] == at
    assert ids[o: o + len(hash_)] == hash_
    assert ids[o + len(hash_): o + len(hash_) + len(pieces(tokenizer, ["chairman"]))] == pieces(tokenizer, ["chairman"])


def test_relation_object_before_subject(bert):
    enc = encode_relation(bert, ["Paris", "is", "where", "Anna", "lives"], (3, 3), (0, 0), 32)
    toks = tokens_of(bert, enc["input_ids"])
    assert toks == ["[CLS]", "#", "paris", "#", "is", "where", "@", "anna", "@", "lives", "[SEP]"]
    assert (enc["subj_pos"], enc["obj_pos"]) == (6, 1)


def test_an_at_sign_in_the_text_is_not_taken_for_the_marker(bert):
    enc = encode_relation(bert, ["mail", "@", "home", "John", "works"], (3, 3), (4, 4), 32)
    toks = tokens_of(bert, enc["input_ids"])
    assert toks == ["[CLS]", "mail", "@", "home", "@", "john", "@", "#", "works", "#", "[SEP]"]
    assert (enc["subj_pos"], enc["obj_pos"]) == (4, 7)


def test_relation_span_errors(bert):
    with pytest.raises(ValueError, match="overlap"):
        encode_relation(bert, ["a", "b", "c"], (0, 1), (1, 2), 16)
    with pytest.raises(ValueError, match="not inside"):
        encode_relation(bert, ["a", "b"], (0, 0), (2, 2), 16)
    with pytest.raises(ValueError, match="not inside"):
        encode_relation(bert, ["a", "b", "c"], (2, 1), (0, 0), 16)


def test_relation_truncation_keeps_a_window_around_the_entities(bert):
    enc = encode_relation(bert, TACRED_TOKENS, (8, 9), (12, 12), 12)
    # core "@ douglas flint @ will become # chairman #" = 9 sub-tokens, 1 left for context: the
    # left side grows first.
    assert tokens_of(bert, enc["input_ids"]) == ["[CLS]", "officer", "@", "douglas", "flint", "@", "will",
                                                  "become", "#", "chairman", "#", "[SEP]"]
    assert (enc["subj_pos"], enc["obj_pos"]) == (2, 8)


def test_relation_entities_longer_than_max_length_keep_both_opening_markers(bert):
    enc = encode_relation(bert, TACRED_TOKENS, (8, 9), (12, 12), 6)
    # 4 slots: both opening markers first, then each entity's first word
    assert tokens_of(bert, enc["input_ids"]) == ["[CLS]", "@", "douglas", "#", "chairman", "[SEP]"]
    assert (enc["subj_pos"], enc["obj_pos"]) == (1, 3)
    with pytest.raises(ValueError, match="opening markers"):
        encode_relation(bert, TACRED_TOKENS, (8, 9), (12, 12), 3)


# ---------------------------------------------------------------- typing


def test_typing_real_openentity_record(shared_data, tokenizer):
    from kadapter_cli.artifacts.io import read_json

    record = read_json(shared_data / "openentity" / "ernie-format" / "train.json")[3]
    assert record["sent"][record["start"]:record["end"]] == "USPS"
    enc = encode_typing(tokenizer, record["sent"], record["start"], record["end"], 256)
    at = pieces(tokenizer, ["@"])
    usps = pieces(tokenizer, ["USPS"])
    m = enc["mention_pos"]
    left = pieces(tokenizer, record["sent"][: record["start"]].split())
    assert m == len(special_tokens(tokenizer)[0]) + len(left)
    assert enc["input_ids"][m: m + 2 * len(at) + len(usps)] == at + usps + at


def test_typing_bert_truncation_window(bert):
    sent = "A set of bills would grant USPS greater flexibility ."
    enc = encode_typing(bert, sent, 27, 31, 10)
    assert tokens_of(bert, enc["input_ids"]) == ["[CLS]", "would", "grant", "@", "us", "##ps", "@",
                                                  "greater", "flexibility", "[SEP]"]
    assert enc["mention_pos"] == 3


def test_typing_offset_errors(bert):
    with pytest.raises(ValueError, match="not inside"):
        encode_typing(bert, "abc", 2, 9, 16)
    with pytest.raises(ValueError, match="not inside"):
        encode_typing(bert, "abc", 2, 1, 16)
    with pytest.raises(ValueError, match="blank"):
        encode_typing(bert, "a   b", 1, 3, 16)


def test_byte_level_bpe_without_prefix_space_is_refused(tiny_backbone):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_backbone)
    with pytest.raises(ValueError, match="add_prefix_space=True"):
        encode_typing(plain, "a b c", 2, 3, 16)


# ---------------------------------------------------------------- dependency heads


def test_dependency_targets_point_at_first_sub_tokens(bert):
    enc = encode_dependency(bert, ["USPS", "raised", "rates"], [2, 0, 2], 16)
    assert tokens_of(bert, enc["input_ids"]) == ["[CLS]", "us", "##ps", "raised", "rates", "[SEP]"]
    assert enc["word_starts"] == [1, 3, 4]
    # word 1 → head "raised" at 3; the second piece of USPS is ignored; the root → 0 ([CLS])
    assert enc["head_targets"] == [IGNORE_INDEX, 3, IGNORE_INDEX, 0, 3, IGNORE_INDEX]


def test_dependency_truncation_drops_targets_of_cut_heads(bert):
    enc = encode_dependency(bert, ["USPS", "raised", "rates"], [3, 0, 2], 5)
    # 3 slots: "us ##ps raised"; "rates" (the head of USPS) is cut, so USPS has no target
    assert enc["word_starts"] == [1, 3]
    assert enc["head_targets"] == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]


def test_dependency_input_errors(bert):
    with pytest.raises(ValueError, match="2 heads for 3 tokens"):
        encode_dependency(bert, ["a", "b", "c"], [0, 1], 16)
    with pytest.raises(ValueError, match="outside"):
        encode_dependency(bert, ["a", "b"], [0, 3], 16)
    with pytest.raises(ValueError, match="own head"):
        encode_dependency(bert, ["a", "b"], [0, 2], 16)


def test_words_the_tokenizer_drops_get_the_unknown_token(bert):
    # WordPiece turns a zero-width space into nothing; the word still needs a position.
    assert word_pieces(bert, ["a", "\u200b", "b"])[1] == [bert.unk_token_id]


# ---------------------------------------------------------------- properties

# Letters, digits, punctuation the tokenizers split off, the marker characters, and non-ASCII.
WORD = st.text(alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789.,'-@#éü中")),
               min_size=1, max_size=8)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def sentence_with_two_spans(draw):
    """Words and two disjoint inclusive spans, in either order."""
    words = draw(st.lists(WORD, min_size=2, max_size=25))
    n = len(words)
    b = draw(st.integers(0, n - 2))
    a = draw(st.integers(0, b))
    c = draw(st.integers(b + 1, n - 1))
    d = draw(st.integers(c, n - 1))
    first, second = (a, b), (c, d)
    return words, (first, second) if draw(st.booleans()) else (second, first)


def byte_level(tokenizer) -> bool:
    return "ByteLevel" in repr(tokenizer.backend_tokenizer.pre_tokenizer)


@PROPERTY
@given(case=sentence_with_two_spans())
def test_property_entities_decode_back_between_the_markers(tokenizer, case):
    words, (subj, obj) = case
    enc = encode_relation(tokenizer, words, subj, obj, 512)
    ids = enc["input_ids"]
    at, hash_ = pieces(tokenizer, ["@"]), pieces(tokenizer, ["#"])
    for pos, marker, (start, end) in ((enc["subj_pos"], at, subj), (enc["obj_pos"], hash_, obj)):
        entity = pieces(tokenizer, words[start:end + 1])
        inner = pos + len(marker)
        assert ids[pos:inner] == marker
        assert ids[inner:inner + len(entity)] == entity
        assert ids[inner + len(entity):inner + len(entity) + len(marker)] == marker
        if byte_level(tokenizer):  # byte-level BPE decodes back exactly
            assert tokenizer.decode(ids[inner:inner + len(entity)]) == " " + " ".join(words[start:end + 1])


@PROPERTY
@given(case=sentence_with_two_spans(), max_length=st.integers(4, 40))
def test_property_truncation_never_loses_the_opening_markers(tokenizer, case, max_length):
    words, (subj, obj) = case
    prefix, suffix = special_tokens(tokenizer)
    at, hash_ = pieces(tokenizer, ["@"]), pieces(tokenizer, ["#"])
    if max_length < len(prefix) + len(suffix) + len(at) + len(hash_):
        with pytest.raises(ValueError):
            encode_relation(tokenizer, words, subj, obj, max_length)
        return
    enc = encode_relation(tokenizer, words, subj, obj, max_length)
    ids = enc["input_ids"]
    assert len(ids) <= max_length
    assert ids[:len(prefix)] == prefix and ids[len(ids) - len(suffix):] == suffix
    assert ids[enc["subj_pos"]:enc["subj_pos"] + len(at)] == at
    assert ids[enc["obj_pos"]:enc["obj_pos"] + len(hash_)] == hash_
    assert (enc["subj_pos"] < enc["obj_pos"]) == (subj[0] < obj[0])


@PROPERTY
@given(words=st.lists(WORD, min_size=1, max_size=25), data=st.data(), max_length=st.integers(3, 80))
def test_property_word_starts_are_first_sub_tokens(tokenizer, words, data, max_length):
    n = len(words)
    heads = [data.draw(st.integers(0, n).filter(lambda h, i=i: h != i + 1)) for i in range(n)]
    enc = encode_dependency(tokenizer, words, heads, max_length)
    ids, starts, targets = enc["input_ids"], enc["word_starts"], enc["head_targets"]
    assert len(ids) <= max_length and len(targets) == len(ids)
    ends = starts[1:] + [len(ids) - len(special_tokens(tokenizer)[1])]
    for i, (start, end) in enumerate(zip(starts, ends)):
        assert ids[start:end] == pieces(tokenizer, [words[i]])
        if byte_level(tokenizer):
            assert tokenizer.decode(ids[start:end]) == " " + words[i]
    for i, start in enumerate(starts):
        h = heads[i]
        expected = 0 if h == 0 else (starts[h - 1] if h <= len(starts) else IGNORE_INDEX)
        assert targets[start] == expected
    assert all(t == IGNORE_INDEX for p, t in enumerate(targets) if p not in set(starts))


@PROPERTY
@given(words=st.lists(WORD, min_size=1, max_size=25), data=st.data(), max_length=st.integers(3, 60))
def test_property_typing_mention_between_markers(tokenizer, words, data, max_length):
    first = data.draw(st.integers(0, len(words) - 1))
    last = data.draw(st.integers(first, len(words) - 1))
    sent = " ".join(words)
    start = len(" ".join(words[:first])) + (1 if first else 0)
    end = start + len(" ".join(words[first:last + 1]))
    prefix, suffix = special_tokens(tokenizer)
    at, mention = pieces(tokenizer, ["@"]), pieces(tokenizer, words[first:last + 1])
    if max_length < len(prefix) + len(suffix) + len(at):
        with pytest.raises(ValueError):
            encode_typing(tokenizer, sent, start, end, max_length)
        return
    enc = encode_typing(tokenizer, sent, start, end, max_length)
    ids, m = enc["input_ids"], enc["mention_pos"]
    assert len(ids) <= max_length and ids[m:m + len(at)] == at
    if len(prefix) + len(suffix) + 2 * len(at) + len(mention) <= max_length:  # the mention fits whole
        assert ids[m + len(at):m + len(at) + len(mention) + len(at)] == mention + at


# ---------------------------------------------------------------- Cases found by mutation testing (docs/MUTATION.md) for encoding: each refusal's full message (they
# reach the user as `BadInput` naming the file and record), on MiniLM's WordPiece tokenizer.

def _message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


def test_relation_refusals(bert):
    assert _message(lambda: encode_relation(bert, ["a", "b", "c"], (0, 1), (1, 2), 16)) == \
        "subject span (0, 1) and object span (1, 2) overlap"
    assert _message(lambda: encode_relation(bert, ["a", "b"], (0, 0), (2, 2), 16)) == \
        "object span (2, 2) is not inside the 2 tokens (inclusive, start <= end)"
    assert _message(lambda: encode_relation(bert, ["a", "b", "c"], (2, 1), (0, 0), 16)) == \
        "subject span (2, 1) is not inside the 3 tokens (inclusive, start <= end)"
    assert _message(lambda: encode_relation(bert, ["a", "b", "c"], (0, 0), (2, 2), 3)) == \
        "the opening markers alone need 2 sub-tokens; max_length leaves 1"
    assert _message(lambda: encode_relation(bert, ["a", "b", "c"], (0, 0), (2, 2), 2)) == \
        "max_length 2 leaves no room next to the 2 special tokens"


def test_typing_refusals(bert):
    assert _message(lambda: encode_typing(bert, "abc", 2, 9, 16)) == \
        "mention offsets [2, 9) are not inside the sentence of 3 characters"
    assert _message(lambda: encode_typing(bert, "abc", -1, 2, 16)) == \
        "mention offsets [-1, 2) are not inside the sentence of 3 characters"
    assert _message(lambda: encode_typing(bert, "a   b", 1, 3, 16)) == "mention [1, 3) is blank"


def test_dependency_refusals(bert):
    assert _message(lambda: encode_dependency(bert, ["a", "b", "c"], [0, 1], 16)) == "2 heads for 3 tokens"
    assert _message(lambda: encode_dependency(bert, ["a", "b"], [0, 3], 16)) == "head 3 of word 2 is outside 0..2"
    assert _message(lambda: encode_dependency(bert, ["a", "b"], [-1, 1], 16)) == "head -1 of word 1 is outside 0..2"
    assert _message(lambda: encode_dependency(bert, ["a", "b"], [0, 2], 16)) == "word 2 is its own head"


def test_byte_level_bpe_without_prefix_space_message(tiny_backbone):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_backbone)
    assert _message(lambda: encode_typing(plain, "a b c", 2, 3, 16)) == (
        "byte-level BPE tokenizers must be loaded with add_prefix_space=True "
        "(kadapter_cli.modeling.backbone.load_tokenizer does this)")


def test_dependency_edges_of_the_head_range(bert):
    # Head n (the last word) and 0 (the root) are both valid.
    enc = encode_dependency(bert, ["a", "b"], [2, 0], 16)
    assert enc["word_starts"] == [1, 2] and enc["head_targets"] == [-100, 2, 0, -100]
    # Exactly filling max_length keeps every word.
    assert encode_dependency(bert, ["a", "b"], [2, 0], 4)["word_starts"] == [1, 2]
    assert encode_dependency(bert, ["a", "b"], [2, 0], 3)["word_starts"] == [1]


def test_overlap_and_empty_mention_edges(bert):
    # The same one-word span for both entities, and spans that share only their edge word, overlap.
    assert _message(lambda: encode_relation(bert, ["a", "b", "c"], (2, 2), (2, 2), 16)) == \
        "subject span (2, 2) and object span (2, 2) overlap"
    assert _message(lambda: encode_relation(bert, ["a", "b", "c", "d"], (2, 3), (0, 2), 16)) == \
        "subject span (2, 3) and object span (0, 2) overlap"
    assert _message(lambda: encode_typing(bert, "abc", 1, 1, 16)) == \
        "mention offsets [1, 1) are not inside the sentence of 3 characters"
