"""A backbone that cannot be loaded is said at once, in words: one not cached while offline (or with
the Hub unreachable), a local folder that does not exist."""

from __future__ import annotations


def test_an_uncached_backbone_offline_is_said_at_once(cli, tmp_path, monkeypatch, make_trex_rc):
    import time

    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", "kadapter-test/no-such-model")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    began = time.monotonic()
    result = cli(*args)
    assert time.monotonic() - began < 20
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: tokenizer 'kadapter-test/no-such-model' is not a local folder and not in the Hugging Face cache, "
        "and http://127.0.0.1:9 cannot be reached: download it where there is a network "
        "(`hf download kadapter-test/no-such-model`) or pass a local folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli(*args)
    assert result.exit_code == 2 and "and HF_HUB_OFFLINE is set: download it" in result.stderr


def test_a_missing_backbone_folder_is_called_missing(cli, tmp_path, make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    missing = tmp_path / "nope"
    result = cli("train-adapter", "--kind", "fac", "--data", data, "--backbone", missing)
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f"error: {missing}: no such folder (expected a Hugging Face model id or a local model folder)"
