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
