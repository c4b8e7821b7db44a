"""`make_tiny_backbone` / `kadapter tiny-backbone`: an offline, deterministic tiny RoBERTa + BPE tokenizer."""

from __future__ import annotations

import json

import pytest

from kadapter_cli.modeling.tiny_backbone import SPECIAL_TOKENS, corpus_lines, make_tiny_backbone


def test_bundled_corpus_is_a_few_hundred_lines_of_prose():
    lines = corpus_lines()
    assert 150 <= len(lines) <= 400
    assert any("@" in line for line in lines) and any("#" in line for line in lines)


def test_loads_with_auto_classes_and_has_roberta_special_tokens(tiny_backbone):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token, tok.mask_token) == (
        "<s>", "</s>", "<pad>", "<unk>", "<mask>")
    for marker in ("@", "#"):
        assert tok.convert_tokens_to_ids(marker) != tok.unk_token_id
    model = AutoModel.from_pretrained(tiny_backbone)
    assert model.config.model_type == "roberta"
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (64, 4, 4)
    assert len(tok) == model.config.vocab_size <= 1000


@pytest.mark.parametrize("text", [
    "Paris is the capital of France.",
    "Mail data@example.org about #results: 3.5% (up $40)!",
    "Her résumé mentions São Paulo, Zürich and Kraków.",
])
def test_tokenization_round_trips_text(tiny_backbone, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    # A working BPE merges frequent words; a broken one falls back to single bytes.
    assert len(ids) - 2 < len(text) * 0.8


def test_pretokenized_words_and_512_token_inputs_work(tiny_backbone):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone, add_prefix_space=True)
    enc = tok(["The", "river", "@", "runs", "#"], is_split_into_words=True)
    assert enc.word_ids()[1:-1] == sorted(enc.word_ids()[1:-1])
    assert set(enc.word_ids()[1:-1]) == {0, 1, 2, 3, 4}
    model = AutoModel.from_pretrained(tiny_backbone)
    out = model(input_ids=torch.full((1, 512), 5), attention_mask=torch.ones(1, 512, dtype=torch.long))
    assert out.last_hidden_state.shape == (1, 512, 64)


def test_cli_writes_a_deterministic_backbone_and_refuses_to_overwrite(cli, tmp_path):
    target = tmp_path / "tiny"
    args = ("tiny-backbone", target, "--hidden-size", "32", "--layers", "2", "--heads", "2")
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["kind"] == "backbone" and manifest["config"]["hidden_size"] == 32
    config = json.loads((target / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (32, 2, 2)

    again = make_tiny_backbone(tmp_path / "again", hidden_size=32, num_layers=2, num_heads=2)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (target / name).read_bytes(), name

    shown = cli("inspect", target, "--json")
    assert shown.exit_code == 0, shown.stderr
    rows = json.loads(shown.stdout)["parameters"]
    assert [r["component"] for r in rows] == ["backbone"]
    from transformers import AutoModel
    assert rows[0]["total"] == sum(p.numel() for p in AutoModel.from_pretrained(target).parameters())

    refused = cli(*args)
    assert refused.exit_code == 2
    assert "already exists" in refused.stderr and str(target) in refused.stderr
    assert cli(*args, "--overwrite").exit_code == 0


def test_cli_refuses_heads_that_do_not_divide_the_hidden_size(cli, tmp_path):
    result = cli("tiny-backbone", tmp_path / "bad", "--hidden-size", "32", "--heads", "3")
    assert result.exit_code == 2
    assert "not a multiple" in result.stderr
    assert not (tmp_path / "bad").exists()
