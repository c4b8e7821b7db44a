"""Every wait shows progress: a labelled bar on a terminal (what, how many, rate, elapsed, remaining),
nothing when piped, and Hugging Face's own bars kept silent."""

from __future__ import annotations

from pathlib import Path

from helpers.terminal import kadapter as _kadapter

REPO = Path(__file__).resolve().parents[2]
TYPING = REPO / "kadapter_cli" / "demo_data" / "typing"
FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


def test_every_wait_shows_a_labelled_bar_on_a_terminal_and_nothing_when_piped(tmp_path, tiny_backbone):
    import re

    args = ("finetune", "--task", "openentity", "--data", TYPING, "--backbone", tiny_backbone, *FAST,
            "--freeze-backbone")
    shown = _kadapter(tmp_path / "tty", *args, terminal=True)
    for label in ("loading backbone", "encoding train", "caching features (train)", "caching features (dev)",
                  "train", "evaluating dev", "evaluating test"):
        assert label in shown, label
    # what, how many, rate, elapsed, remaining: `evaluating test ━━━ 16/16 123.4 examples/s 0:00:00 0:00:00`
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert re.search(r"evaluating test [━╺╸ ]+ 16/16 ([\d,.]+|–) examples/s \d+:\d\d:\d\d \d+:\d\d:\d\d", plain), plain
    piped = _kadapter(tmp_path / "pipe", *args, terminal=False)
    for label in ("loading backbone", "encoding", "caching features", "evaluating", "examples/s"):
        assert label not in piped, label


def test_parse_bar_ends_full_and_hugging_face_bars_stay_silent(tmp_path, shared_data):
    import re

    conllu = shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    shown = _kadapter(tmp_path / "w", "parse", "--parser", "conllu", conllu, "--limit", "30", terminal=True)
    last_frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).split("parsing")[-1]
    assert "30/30" in last_frame and "?" not in last_frame
    made = _kadapter(tmp_path / "w", "tiny-backbone", tmp_path / "tb", terminal=False)
    assert "Writing model shards" not in made and "it/s" not in made


def test_encode_shows_reading_and_encoding_bars_on_a_terminal_and_nothing_when_piped(tmp_path, tiny_backbone):
    """`kadapter encode` counts the texts (reading), then encodes them (encoding: done/total, texts/s)."""
    import json
    import re

    import numpy as np
    import torch

    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import backbone_fingerprint, backbone_shape, load_backbone

    backbone = load_backbone(tiny_backbone)
    config = AdapterConfig.for_backbone(backbone_shape(backbone), "fac", backbone=str(tiny_backbone), max_length=32,
                                        backbone_fingerprint=backbone_fingerprint(tiny_backbone, backbone))
    torch.manual_seed(0)
    save_adapter(tmp_path / "fac", KnowledgeAdapter(config), config)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"Paris is city number {i} ."}) + "\n" for i in range(12)))

    args = ("encode", tmp_path / "fac", texts, "--pool", "mean", "--batch-size", "4")
    shown = _kadapter(tmp_path / "w", *args, "--out", tmp_path / "tty.npy", terminal=True)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    # each bar's last frame: what, done/total (the count known once read), rate, elapsed, remaining
    reading = plain.split("\rreading ")[-1].split("\r")[0]
    assert re.fullmatch(r"[━╺╸ ]+ 12/12 ([\d,.]+|–) texts/s \d+:\d\d:\d\d( \d+:\d\d:\d\d)?\s*", reading), plain
    assert re.search(r"\rencoding [━╺╸ ]+ 12/12 ([\d,.]+|–) texts/s \d+:\d\d:\d\d \d+:\d\d:\d\d", plain), plain
    assert np.load(tmp_path / "tty.npy").shape == (12, 2 * 64)
    piped = _kadapter(tmp_path / "w", *args, "--out", tmp_path / "pipe.npy", terminal=False)
    for label in ("reading ━", "encoding ━", "texts/s"):
        assert label not in piped, label
