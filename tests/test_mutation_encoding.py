"""Cases found by mutation testing (docs/MUTATION.md) for encoding: each refusal's full message (they
reach the user as `BadInput` naming the file and record), on MiniLM's WordPiece tokenizer."""

from __future__ import annotations

import pytest

from kadapter_cli.data.encoding import encode_dependency, encode_relation, encode_typing


@pytest.fixture(scope="module")
def bert(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


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
