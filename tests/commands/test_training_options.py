"""Training options as a user gives them to `train-adapter`: `--max-steps` over the epoch count, a
warmup as long as the run warned about, `--threads` (explicit, or from what is idle), and the
numbers a run prints."""

from __future__ import annotations

import json
from pathlib import Path

FAST = ("--max-steps", "2", "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--limit", "16")


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_max_steps_overrides_the_epoch_count_and_a_long_warmup_is_warned(cli, tmp_path, tiny_backbone,
                                                                         make_trex_rc):
    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    base = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, "--batch-size", "4",
            "--max-length", "24", "--device", "cpu", "--cache-features", "off", "--epochs", "1")
    # 16 examples, batch 4: 4 steps an epoch; --max-steps 10 runs 10 steps (3 epochs), not 4.
    longer = cli(*base, "--max-steps", "10", "--warmup", "0.1")
    assert longer.exit_code == 0, longer.stderr
    assert _manifest(cli.workdir / "adapters" / "fac")["stats"]["steps"] == 10
    assert "warning" not in longer.stderr
    warned = cli(*base, "--max-steps", "3", "--warmup", "1000", "--overwrite")
    assert warned.exit_code == 0
    assert ("warning: --warmup 1,000 steps is not shorter than the run (3 steps): the learning rate never reaches "
            "--lr 2e-05; give a share instead (--warmup 0.1 = the first 10%)") in warned.stderr
    assert _manifest(cli.workdir / "adapters" / "fac")["stats"]["steps"] == 3


def test_threads_are_set_explicitly_or_from_what_is_idle(cli, tmp_path, tiny_backbone, monkeypatch,
                                                         make_trex_rc):
    import os

    import torch

    data = make_trex_rc(tmp_path / "trex-rc", 16, 4)
    args = ("train-adapter", "--kind", "fac", "--data", data, "--backbone", tiny_backbone, *FAST,
            "--cache-features", "off", "--overwrite")
    before = torch.get_num_threads()
    try:
        assert cli(*args, "--threads", "2").exit_code == 0 and torch.get_num_threads() == 2
        # Automatic: every core busy → one thread; OMP_NUM_THREADS, when set, wins.
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
        assert cli(*args).exit_code == 0 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cli(*args).exit_code == 0 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    refused = cli(*args, "--threads", "0")
    assert refused.exit_code == 2 and "--threads must be at least 1, got 0" in refused.stderr


def test_lin_word_counts_print_as_whole_numbers(cli, shared_data, tiny_backbone, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "200")
    conllu = shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    assert cli("parse", "--parser", "conllu", conllu, "--limit", "40").exit_code == 0
    result = cli("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *FAST, "--cache-features", "off")
    assert result.exit_code == 0, result.stderr
    words = json.loads((cli.workdir / "adapters" / "lin" / "metrics.json").read_text())["dev"]["words"]
    assert isinstance(words, int)
    assert re.search(rf"│\s+{words:,}\s+│", result.stdout) and ".0000" not in result.stdout


def test_arc_dim_sets_the_lin_pointer_head_s_width_and_is_recorded_so_the_head_loads(cli, shared_data, tiny_backbone,
                                                                                      tmp_path, make_trex_rc):
    from kadapter_cli.modeling.adapter import load_adapter
    from kadapter_cli.modeling.heads import build_head

    conllu = shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu"
    assert cli("parse", "--parser", "conllu", conllu, "--limit", "24").exit_code == 0
    result = cli("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *FAST, "--cache-features", "off",
                 "--arc-dim", "48")
    assert result.exit_code == 0, result.stderr
    adapter, config, head_state = load_adapter(cli.workdir / "adapters" / "lin")
    assert config.head["arc_dim"] == 48
    head = build_head(config.head, config.backbone_hidden_size)  # what loading the adapter with its head builds
    head.load_state_dict(head_state)
    assert head.inner.arc_weight.shape == (48, 48)
    # Without it, the head config is what it always was: the width stays implicit (min(500, hidden)).
    default = cli("train-adapter", "--kind", "lin", "--name", "lin-default", "--backbone", tiny_backbone, *FAST,
                  "--cache-features", "off")
    assert default.exit_code == 0, default.stderr
    assert "arc_dim" not in load_adapter(cli.workdir / "adapters" / "lin-default")[1].head
    refused = cli("train-adapter", "--kind", "fac", "--data", make_trex_rc(tmp_path / "trex-rc", 8, 4),
                  "--backbone", tiny_backbone, *FAST, "--arc-dim", "48")
    assert refused.exit_code == 2
    assert "--arc-dim applies to the lin adapter's pointer head only (--kind lin with --lin-head pointer)" in refused.stderr
