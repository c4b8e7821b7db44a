"""Writes OpenQA- and Quasar-T-format data sets from the real Quasar-T dev questions.

The real Quasar-T sample (`../shared/data/quasar-t/quasarT-dev.first300.json`) holds questions and
answers only: neither its passages nor the thunlp/OpenQA files could be found
(`../shared/data/quasar-t/README.md`). So the questions and answers here are real, the paragraphs
are made up by these helpers: one that states the answer, one that states another question's
answer (a distractor), one of only 5 tokens (which OpenQA's rule drops).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path


def kadapter_in(workdir: Path) -> Callable:
    """`run(args..., code=0)`: `kadapter --workdir <workdir> args...` in-process, its exit code
    asserted (the output shown when it differs); returns the click result. For module fixtures
    that build one workdir and reuse it (the `cli` fixture is per test)."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    runner = CliRunner()

    def run(*args, code: int = 0):
        result = runner.invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)
        assert result.exit_code == code, f"kadapter {' '.join(map(str, args))}:\n{result.output}"
        return result

    run.workdir = workdir
    return run


def quasart_questions(shared_data: Path, n: int) -> list[dict]:
    return json.loads((shared_data / "quasar-t" / "quasarT-dev.first300.json").read_text())[:n]


def made_up_paragraphs(records: list[dict], i: int) -> list[str]:
    """The made-up paragraphs of question i (whitespace-tokenised text)."""
    record, other = records[i], records[(i + 1) % len(records)]
    answer, distractor = record["answers"][0], other["answers"][0]
    return [
        f"Quiz notes : the answer is {answer} , as the clue `` {record['question']} '' says .",
        f"A different clue asks about {distractor} , which is unrelated to this one .",
        "too short to keep here",
    ]


def write_openqa(folder: Path, split: str, records: list[dict]) -> tuple[Path, Path]:
    """`{split}.txt` + `{split}.json` as thunlp/OpenQA lays them out (token-list paragraphs)."""
    folder.mkdir(parents=True, exist_ok=True)
    txt, js = folder / f"{split}.txt", folder / f"{split}.json"
    with open(txt, "w") as q, open(js, "w") as p:
        for i, record in enumerate(records):
            q.write(json.dumps({"question": record["question"], "answers": record["answers"]}) + "\n")
            docs = [{"question": record["question"].split(), "document": text.split()}
                    for text in made_up_paragraphs(records, i)]
            p.write(json.dumps(docs) + "\n")
    return txt, js


def write_quasar(folder: Path, split: str, records: list[dict], kind: str = "short") -> tuple[Path, Path]:
    """The official layout: `questions/{split}_questions.json.gz`, `contexts/<kind>/{split}_contexts.json.gz`."""
    questions = folder / "questions" / f"{split}_questions.json.gz"
    contexts = folder / "contexts" / kind / f"{split}_contexts.json.gz"
    questions.parent.mkdir(parents=True, exist_ok=True)
    contexts.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(questions, "wt") as q, gzip.open(contexts, "wt") as c:
        for i, record in enumerate(records):
            q.write(json.dumps({"uid": record["question_id"], "question": record["question"],
                                "answer": record["answers"][0], "tags": []}) + "\n")
            scored = [[1.0 / (k + 1), text] for k, text in enumerate(made_up_paragraphs(records, i))]
            c.write(json.dumps({"uid": record["question_id"], "contexts": scored}) + "\n")
    return questions, contexts
