"""The Python the docs show, run as a user would: the README's "Use from Python" section,
the Python API page and every model card's snippet, against models the commands trained
(`trained_work`: the README's folder names, on the packaged MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.snippets import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]


def cli_predict(cli, workdir: Path, records: list[dict], tmp_path: Path, *flags: str) -> list[dict]:
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    result = cli("predict", workdir / "finetuned" / "openentity-fac+lin", path, *flags, workdir_path=workdir)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_readme_section_runs_and_agrees_with_the_commands(trained_work, cli, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ns = run_blocks(python_blocks(readme, "Use from Python"), trained_work.parent, monkeypatch)

    # predict in memory = `kadapter predict --scores` on a file of the same records
    assert ns["predictions"] == cli_predict(cli, trained_work, ns["records"], tmp_path, "--scores")
    assert set(ns["predictions"][0]["scores"]) == set(ns["predictions"][0]["pred"])

    # the K-Adapter output: backbone + fac + lin side by side, the same on every call and in any batch
    encoder, texts = ns["encoder"], ns["texts"]
    hidden = 384  # the packaged MiniLM
    assert ns["vectors"].shape == (2, 3 * hidden)
    assert ns["tokens"].shape[0] == 2 and ns["tokens"].shape[2] == 3 * hidden
    assert list(ns["parts"]) == ["backbone", "fac", "lin"]
    assert torch.equal(torch.cat(list(ns["parts"].values()), dim=-1), ns["tokens"])
    assert torch.equal(encoder.encode(texts, pool="mean"), ns["vectors"])
    one_by_one = encoder.encode(texts, pool="mean", batch_size=1)
    assert torch.allclose(one_by_one, ns["vectors"], rtol=0, atol=1e-5)  # float rounding (test_python_api.py)

    # Hugging Face: the same fused representation as kadapter's model gives
    ours = ns["model"].encode(texts)
    theirs = ns["hidden"]
    assert theirs.shape == ours.shape
    mask = ns["tokenizer"](texts, padding=True, return_tensors="pt")["attention_mask"].bool()
    assert torch.allclose(theirs[mask], ours[mask], rtol=0, atol=1e-5)


def test_the_python_api_page_runs(trained_work, monkeypatch, tmp_path):
    page = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    (trained_work.parent / "texts.jsonl").write_text(
        '{"id": "a", "text": "Paris is the capital of France ."}\n{"id": "b", "text": "The Seine flows through Paris ."}\n')
    run_blocks(python_blocks(page), trained_work.parent, monkeypatch)


@pytest.mark.parametrize("folder", ["adapters/fac", "adapters/lin", "compositions/fac+lin",
                                    "finetuned/openentity-fac+lin"])
def test_every_model_card_snippet_runs(trained_work, monkeypatch, folder):
    card = (trained_work / folder / "README.md").read_text(encoding="utf-8")
    name = Path(folder).name
    blocks = [b.replace(f"path/to/{name}", str(trained_work / folder)) for b in python_blocks(card)]
    assert all("path/to/" not in b for b in blocks)
    ns = run_blocks(blocks, trained_work.parent, monkeypatch)
    if "predictions" in ns:
        assert len(ns["predictions"]) == 1 and set(ns["predictions"][0]) == {"index", "gold", "pred", "scores"}
    assert "features" in ns or "hidden" in ns
