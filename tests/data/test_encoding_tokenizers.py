"""Cases found by mutation testing (docs/MUTATION.md) for encoding: the `original` marker style's ids,
and what each kind of tokenizer a user may bring is told (their messages reach the user as
`BadInput`). Small word-level tokenizers built here stand for the unusual ones."""

from __future__ import annotations

import pytest

from kadapter_cli.data.encoding import encode_dependency, encode_relation, encode_typing
from kadapter_cli.modeling.backbone import load_tokenizer

WORDS = ["[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "@", "#"]
ID = {w: i for i, w in enumerate(WORDS)}


def word_level(*, vocab=WORDS, specials: bool = True, pre_tokenizer=None, single: str = "[CLS] $A [SEP]"):
    """A fast word-level tokenizer: `single` (`[CLS] A [SEP]`) around a sequence if `specials`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.WhitespaceSplit()
    if specials:
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


@pytest.fixture(scope="module")
def roberta(tiny_backbone):
    return load_tokenizer(tiny_backbone)


def test_original_style_relation_on_byte_level_bpe_is_the_bare_markers_exactly(roberta):
    tokens = ["she", "was", "born", "in", "the", "city"]
    enc = encode_relation(roberta, tokens, (0, 0), (5, 5), 32, marker_style="original")
    assert roberta.convert_ids_to_tokens(enc["input_ids"]) == [
        "<s>", "@", "Ġshe", "@", "Ġwas", "Ġborn", "Ġin", "Ġthe", "#", "Ġcity", "#", "</s>"]
    assert (enc["subj_pos"], enc["obj_pos"]) == (1, 8)
    # kadapter's spaced style: each marker is a word with its leading space (" @" is two pieces in the
    # tiny vocabulary, " #" one)
    spaced = encode_relation(roberta, tokens, (0, 0), (5, 5), 32)
    assert roberta.convert_ids_to_tokens(spaced["input_ids"]) == [
        "<s>", "Ġ", "@", "Ġshe", "Ġ", "@", "Ġwas", "Ġborn", "Ġin", "Ġthe", "Ġ#", "Ġcity", "Ġ#", "</s>"]
    assert (spaced["subj_pos"], spaced["obj_pos"]) == (1, 10)


def test_original_style_markers_are_one_sub_token_when_the_entities_are_squeezed(roberta):
    # "@ she was @ in # the city #": 9 sub-tokens, 5 kept
    enc = encode_relation(roberta, ["she", "was", "in", "the", "city"], (0, 1), (3, 4), 7, marker_style="original")
    assert roberta.convert_ids_to_tokens(enc["input_ids"]) == ["<s>", "@", "Ġshe", "Ġwas", "#", "Ġthe", "</s>"]


def test_original_style_on_word_level_tokenizers():
    tok = word_level()
    enc = encode_relation(tok, ["a", "b", "c"], (0, 0), (2, 2), 16, marker_style="original")
    assert enc == {"input_ids": [ID[w] for w in "[CLS] @ a @ b # c # [SEP]".split()], "subj_pos": 1, "obj_pos": 5}
    no_at = word_level(vocab=[w for w in WORDS if w != "@"])
    assert _message(lambda: encode_relation(no_at, ["a", "b", "c"], (0, 0), (2, 2), 16, marker_style="original")) \
        == "the tokenizer has no bare '@' token for the original marker style"
    no_hash = word_level(vocab=[w for w in WORDS if w != "#"])
    assert _message(lambda: encode_relation(no_hash, ["a", "b", "c"], (0, 0), (2, 2), 16, marker_style="original")) \
        == "the tokenizer has no bare '#' token for the original marker style"
    # the spaced style encodes a missing marker as the unknown word, like any other word
    assert encode_relation(no_at, ["a", "b", "c"], (0, 0), (2, 2), 16)["subj_pos"] == 1
    assert _message(lambda: encode_relation(tok, ["a", "b", "c"], (0, 0), (2, 2), 16, marker_style="bare")) == \
        "marker style must be one of spaced, original, got 'bare'"


def test_dependency_needs_a_leading_special_token_for_the_root():
    assert _message(lambda: encode_dependency(word_level(specials=False), ["a", "b"], [0, 1], 8)) == \
        "the tokenizer adds no leading special token, so the root has no position to point at"
    enc = encode_dependency(word_level(), ["a", "b"], [0, 1], 8)
    assert enc == {"input_ids": [ID["[CLS]"], ID["a"], ID["b"], ID["[SEP]"]], "word_starts": [1, 2],
                   "head_targets": [-100, 0, 1, -100]}


def test_byte_level_inside_a_pre_tokenizer_sequence_also_needs_the_prefix_space():
    from tokenizers import pre_tokenizers

    def sequence(add_prefix_space: bool):
        return word_level(pre_tokenizer=pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)]))

    assert _message(lambda: encode_typing(sequence(False), "a b c", 2, 3, 16)) == (
        "byte-level BPE tokenizers must be loaded with add_prefix_space=True "
        "(kadapter_cli.modeling.backbone.load_tokenizer does this)")
    assert encode_typing(sequence(True), "a b c", 2, 3, 16)["mention_pos"] == 2


def test_a_python_tokenizer_is_told_that_encoding_needs_a_fast_one():
    from transformers import ByT5Tokenizer  # pure Python: no backend_tokenizer, no word_ids()

    from kadapter_cli.data.encoding import encode_segments

    slow = ByT5Tokenizer()
    assert _message(lambda: encode_typing(slow, "a b c", 2, 3, 16)) == \
        "encoding needs a fast tokenizer (one that reports word_ids())"
    assert _message(lambda: encode_segments(slow, [[1], [2]], 16)) == \
        "encoding needs a fast tokenizer (one that reports sequence_ids())"


def test_a_word_without_sub_tokens_needs_an_unknown_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from kadapter_cli.data.encoding import word_pieces

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    no_unk = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert _message(lambda: word_pieces(no_unk, ["", "a", " "])) == \
        "word 0 ('') has no sub-tokens and the tokenizer has no unknown token"


def test_long_sentences_raise_no_false_length_warning(minilm, capfd):
    # kadapter truncates to max_length itself; the tokenizer's "longer than the maximum ... will result in
    # indexing errors" warning about the untruncated words would only mislead.
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(minilm)  # a fresh one: the tokenizer warns once per instance
    tokens = ["word"] * 600
    assert len(encode_relation(bert, tokens, (0, 0), (599, 599), 64)["input_ids"]) == 64
    assert "longer than the specified maximum" not in capfd.readouterr().err


def test_special_tokens_of_different_lengths_before_and_after_are_kept_whole():
    tok = word_level(single="[CLS] $A [SEP] [SEP]")
    enc = encode_relation(tok, ["a", "b", "c"], (0, 0), (2, 2), 16)
    assert enc["input_ids"] == [ID[w] for w in "[CLS] @ a @ b # c # [SEP] [SEP]".split()]
    assert len(encode_relation(tok, ["a", "b", "c"], (0, 0), (2, 2), 7)["input_ids"]) == 7


def test_segments_also_refuse_byte_level_bpe_without_the_prefix_space(tiny_backbone):
    from transformers import AutoTokenizer

    from kadapter_cli.data.encoding import encode_segments

    plain = AutoTokenizer.from_pretrained(tiny_backbone)
    assert _message(lambda: encode_segments(plain, [[5], [6]], 16)) == (
        "byte-level BPE tokenizers must be loaded with add_prefix_space=True "
        "(kadapter_cli.modeling.backbone.load_tokenizer does this)")
