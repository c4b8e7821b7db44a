"""Mention offsets are character offsets, end exclusive (docs/tasks.md). A mention that starts or ends
inside a word is refused, naming the record — as spaCy's `Doc.char_span` refuses a span that does
not align with its tokens. That catches inclusive end offsets (`end - 1`: the model would train on
"aspiri") and word offsets read as characters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kadapter_cli.errors import BadInput

BIOMED = Path(__file__).resolve().parent / "biomed"
SENT = "Patients given aspirin had fewer recurrent strokes over two years."


def test_an_inclusive_end_offset_is_refused_through_the_cli_naming_the_record(cli, tmp_path):
    data = Path(shutil.copytree(BIOMED, tmp_path / "biomed"))
    train = json.loads((data / "train.json").read_text())
    assert train[0]["sent"] == SENT and (train[0]["start"], train[0]["end"]) == (15, 22)
    train[0]["end"] -= 1  # inclusive: the offset of the last character
    (data / "train.json").write_text(json.dumps(train))
    result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tmp_path / "no-backbone",
                 "--max-steps", "1")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {data / 'train.json'}, record 0 (counted from 0): mention [15, 21) 'aspiri' ends inside the word "
        "'aspirin': start and end are character offsets into 'sent', end exclusive (the offset just after the "
        "mention's last character)")


def _read(tmp_path, start: int, end: int, sent: str = SENT) -> dict:
    from kadapter_cli.tasks import get_task

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"sent": sent, "start": start, "end": end, "labels": ["drug"]}) + "\n")
    return get_task("openentity").read(path)[0]


@pytest.mark.parametrize("start, end, message", [
    (15, 21, "line 1: mention [15, 21) 'aspiri' ends inside the word 'aspirin'"),  # inclusive end
    (2, 3, "line 1: mention [2, 3) 't' starts inside the word 'Patients'"),  # word 2 read as characters
    (16, 22, "line 1: mention [16, 22) 'spirin' starts inside the word 'aspirin'"),
])
def test_a_mention_cutting_a_word_is_refused(tmp_path, start, end, message):
    with pytest.raises(BadInput) as e:
        _read(tmp_path, start, end)
    assert str(e.value).startswith(f"{tmp_path / 'train.jsonl'}, {message}: start and end are character offsets")


@pytest.mark.parametrize("sent, mention", [
    (SENT, "aspirin"),
    (SENT, "Patients"),
    ("Trials of anti-TNF drugs in Crohn's disease.", "TNF"),  # words joined by a hyphen
    ("Trials of anti-TNF drugs in Crohn's disease.", "Crohn"),  # before an apostrophe
    ("The U.S. approved it.", "U.S."),
    ("東京都に住む医師が発表した。", "東京都"),  # Japanese: no spaces between words
])
def test_a_mention_on_word_boundaries_is_read(tmp_path, sent, mention):
    start = sent.index(mention)
    record = _read(tmp_path, start, start + len(mention), sent)
    assert record["sent"][record["start"]:record["end"]] == mention
