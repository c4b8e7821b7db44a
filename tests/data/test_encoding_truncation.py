"""Which sub-tokens an example keeps when its entities alone exceed `max_length` (the `_squeeze_core`
rule in `kadapter_cli.data.encoding`, found untested by mutation testing, docs/MUTATION.md): every opening
marker; then each entity's sub-tokens by their distance from its opening marker, ties to the earlier
one; then the words between the entities, earliest first; kept sub-tokens in their original order.

On MiniLM's WordPiece tokenizer, where these words are one sub-token each except the named long ones.
"""

from __future__ import annotations

import pytest

from kadapter_cli.data.encoding import encode_relation, encode_typing

# "@ red green blue black @ one two # cat dog cow pig #" = 14 sub-tokens
COLOURS_ANIMALS = "red green blue black one two cat dog cow pig".split()
SUBJ, OBJ = (0, 3), (6, 9)


@pytest.fixture(scope="module")
def bert(minilm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm)


def kept(bert, enc) -> list[str]:
    """The kept sub-tokens without [CLS] / [SEP]."""
    tokens = bert.convert_ids_to_tokens(enc["input_ids"])
    assert (tokens[0], tokens[-1]) == ("[CLS]", "[SEP]")
    return tokens[1:-1]


@pytest.mark.parametrize("room, expected", [
    (2, "@ #"),
    (4, "@ red # cat"),
    (6, "@ red green # cat dog"),
    # one more slot: both entities are one sub-token from their next; the earlier (the subject) wins
    (7, "@ red green blue # cat dog"),
    (10, "@ red green blue black # cat dog cow pig"),
    # the closing markers are the entities' last sub-tokens; the words between come after them
    (11, "@ red green blue black @ # cat dog cow pig"),
    (12, "@ red green blue black @ # cat dog cow pig #"),
    (13, "@ red green blue black @ one # cat dog cow pig #"),
])
def test_long_entities_share_the_room_evenly_from_their_opening_markers(bert, room, expected):
    enc = encode_relation(bert, COLOURS_ANIMALS, SUBJ, OBJ, room + 2)
    assert " ".join(kept(bert, enc)) == expected
    words = kept(bert, enc)
    assert (enc["subj_pos"], enc["obj_pos"]) == (1 + words.index("@"), 1 + words.index("#"))


def test_the_earlier_entity_wins_a_tie_also_when_it_is_the_object(bert):
    tokens = "cat dog cow pig one two red green blue black".split()
    enc = encode_relation(bert, tokens, (6, 9), (0, 3), 9)
    assert " ".join(kept(bert, enc)) == "# cat dog cow @ red green"
    assert (enc["subj_pos"], enc["obj_pos"]) == (5, 1)


def test_distance_counts_sub_tokens_not_words(bert):
    # "unbelievably" is un ##bel ##ie ##va ##bly: the subject's first word alone uses its share.
    tokens = "unbelievably red one cat dog cow".split()
    enc = encode_relation(bert, tokens, (0, 1), (3, 5), 10)
    assert " ".join(kept(bert, enc)) == "@ un ##bel ##ie # cat dog cow"
    enc = encode_relation(bert, tokens, (0, 1), (3, 5), 13)
    assert " ".join(kept(bert, enc)) == "@ un ##bel ##ie ##va ##bly # cat dog cow #"


def test_words_between_the_entities_go_first_earliest_kept(bert):
    # A short subject, two words between, a long object: the object's every sub-token (its closing
    # marker, 7 from its opening one, included) ranks above the words between.
    tokens = "red one two cat dog cow pig black blue".split()
    # "@ red @ one two # cat dog cow pig black blue #" = 13
    enc = encode_relation(bert, tokens, (0, 0), (3, 8), 12 + 2)
    assert " ".join(kept(bert, enc)) == "@ red @ one # cat dog cow pig black blue #"
    enc = encode_relation(bert, tokens, (0, 0), (3, 8), 11 + 2)
    assert " ".join(kept(bert, enc)) == "@ red @ # cat dog cow pig black blue #"
    enc = encode_relation(bert, tokens, (0, 0), (3, 8), 10 + 2)
    assert " ".join(kept(bert, enc)) == "@ red @ # cat dog cow pig black blue"
    assert (enc["subj_pos"], enc["obj_pos"]) == (1, 4)


def test_context_outside_the_entities_is_dropped_before_any_word_between_them(bert):
    tokens = "the red one two cat dog cow pig black blue and".split()
    enc = encode_relation(bert, tokens, (1, 1), (4, 9), 12 + 2)
    assert " ".join(kept(bert, enc)) == "@ red @ one # cat dog cow pig black blue #"


def test_a_typing_mention_longer_than_max_length_keeps_its_first_sub_tokens(bert):
    sent = "we saw red green unbelievably blue here"
    enc = encode_typing(bert, sent, 7, 34, 7)
    assert " ".join(kept(bert, enc)) == "@ red green un ##bel"
    assert enc["mention_pos"] == 1
    enc = encode_typing(bert, sent, 7, 34, 11)
    assert " ".join(kept(bert, enc)) == "@ red green un ##bel ##ie ##va ##bly blue"


# ---------------------------------------------------------------- the context window around the entities


def test_a_sequence_that_fits_keeps_every_context_word_on_both_sides(bert):
    # one word before the first entity, several after the last: all kept when they fit
    tokens = "the red cat sat down here .".split()
    enc = encode_relation(bert, tokens, (1, 1), (2, 2), 64)
    assert " ".join(kept(bert, enc)) == "the @ red @ # cat # sat down here ."
    assert (enc["subj_pos"], enc["obj_pos"]) == (2, 5)
    # room for exactly the context: still all of it
    assert " ".join(kept(bert, encode_relation(bert, tokens, (1, 1), (2, 2), 13))) == \
        "the @ red @ # cat # sat down here ."
    # one slot less: the window grows left first, then alternates, so the last word goes
    assert " ".join(kept(bert, encode_relation(bert, tokens, (1, 1), (2, 2), 12))) == "the @ red @ # cat # sat down here"


def test_a_long_word_that_does_not_fit_closes_its_side_only(bert):
    # "unbelievably" (5 pieces) on the left does not fit in 3: the right side still grows
    tokens = "unbelievably red cat sat down here".split()
    enc = encode_relation(bert, tokens, (1, 1), (2, 2), 2 + 6 + 3)  # [CLS] [SEP], the core, 3 more
    assert " ".join(kept(bert, enc)) == "@ red @ # cat # sat down here"
