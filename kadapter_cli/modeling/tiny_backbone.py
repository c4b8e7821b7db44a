"""A tiny randomly initialised RoBERTa with its own byte-level BPE tokenizer, for smoke tests.

Everything is built offline and deterministically: the tokenizer is trained with the `tokenizers`
library on a short English text bundled with the package (`resources/tiny_corpus.txt`), and the
weights come from a seeded RNG. Two calls with the same arguments write byte-identical files, and
the folder loads with `AutoTokenizer.from_pretrained` / `AutoModel.from_pretrained` like any hub
model, so every command can be exercised end to end without downloading anything.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kadapter_cli.errors import BadInput

# RoBERTa's special tokens, in RoBERTa's id order (<s>=0, <pad>=1, </s>=2, <unk>=3); <mask> follows.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# RoBERTa numbers positions from padding_idx + 1 = 2, so 512 real tokens need 514 position slots;
# two more leave room for callers that count <s>/</s> on top of a 512-token budget.
MAX_POSITIONS = 516
MODEL_MAX_LENGTH = 512


def corpus_lines() -> list[str]:
    """The bundled training text of the tiny tokenizer, one sentence a line."""
    text = resources.files("kadapter_cli").joinpath("resources/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def train_tokenizer(vocab_size: int):
    """A RoBERTa tokenizer (byte-level BPE) trained on the bundled text; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so no text is ever <unk> ("@" and "#" included).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus_lines(), trainer=trainer)
    vocab = bpe.get_vocab()
    merges = _merges_of(bpe)
    if any(vocab.get(tok) != i for i, tok in enumerate(SPECIAL_TOKENS)):
        raise AssertionError(f"special tokens got unexpected ids: {[vocab.get(t) for t in SPECIAL_TOKENS]}")
    # transformers 5: pass vocab/merges as objects (the old vocab_file= form builds a broken tokenizer).
    return RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)


def _merges_of(bpe) -> list[tuple[str, str]]:
    """The trained merge list, read back from the tokenizer's JSON form (the only public accessor)."""
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def make_tiny_backbone(
    folder: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Writes a tiny random `RobertaModel` and its tokenizer to `folder` (created); returns `folder`.

    The model has `hidden_size` / `num_layers` / `num_heads`, an FFN of 4×hidden and 516 position
    slots (inputs up to 512 tokens). The tokenizer is byte-level BPE with at most `vocab_size`
    entries, trained on the bundled text. Same arguments → byte-identical files.
    """
    import torch
    from transformers import RobertaConfig, RobertaModel

    if hidden_size < 1 or num_layers < 1 or num_heads < 1:
        raise BadInput(f"hidden size, layers and heads must be positive (got {hidden_size}, {num_layers}, {num_heads})")
    if hidden_size % num_heads:
        raise BadInput(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
    if vocab_size < 300:
        raise BadInput(f"vocab size {vocab_size} is too small: the byte alphabet alone needs 256 + 5 special tokens")

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # A private RNG stream: building the tiny model must not disturb the caller's seeded state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
