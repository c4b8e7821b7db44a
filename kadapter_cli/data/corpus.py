"""The knowledge probe's text corpus: one paragraph a line (raw WikiText-2 or -103; blank lines and
` = Heading = ` lines skipped), each line cut into chunks of the maximum length."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from kadapter_cli.artifacts.io import iter_text_lines
from kadapter_cli.errors import BadInput, BadParameter
from kadapter_cli.progress import progress

WIKITEXT_HEADING = re.compile(r"^\s*(=\s+)+.*?(\s+=)+\s*$")


# ---------------------------------------------------------------- the corpus


def read_corpus(path: Path) -> list[str]:
    """One paragraph a line (raw WikiText-2/103 or any text file); blank lines and WikiText's
    ` = Heading = ` lines are skipped. No text left is `BadInput` naming the file."""
    lines = [line.strip() for _, line in iter_text_lines(path)]
    text = [line for line in lines if line and not WIKITEXT_HEADING.match(line)]
    if not text:
        raise BadInput("the corpus has no text lines (blank lines and ' = Heading = ' lines are skipped)", path,
                       f"all {len(lines)} lines" if lines else None)
    return text


def encode_corpus(tokenizer, lines: Sequence[str], max_length: int) -> list[dict]:
    """Each line → token chunks of at most `max_length`, each framed by the backbone's sequence
    start and end tokens (`<s> … </s>`, `[CLS] … [SEP]`); those two are never masked."""
    if max_length < 3:
        raise BadParameter("{max_length} must be at least 3, got {value}", max_length)
    first, last = tokenizer.cls_token_id, tokenizer.sep_token_id
    if first is None or last is None:
        raise BadInput("the tokenizer has no sequence start/end tokens (cls/sep)")
    body = max_length - 2
    examples = []
    with progress() as bar:
        task = bar.add_task("encoding corpus", total=len(lines))
        # verbose=False: lines longer than the model are expected here, they are cut into chunks below.
        for ids in tokenizer(list(lines), add_special_tokens=False, verbose=False)["input_ids"]:
            for start in range(0, len(ids), body):
                chunk = ids[start:start + body]
                examples.append({"input_ids": [first, *chunk, last], "maskable": list(range(1, len(chunk) + 1))})
            bar.advance(task)
    return examples
