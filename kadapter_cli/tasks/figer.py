"""FIGER (Ling & Weld 2012) fine-grained entity typing.

Reads the ERNIE / K-Adapter JSON format (as OpenEntity) and also the original token-per-line BIO
release (`exp.label`), recognised by its content, so the gold test set can be used as it ships.
`convert_figer_raw` writes the BIO file out in the JSON format (`kadapter convert figer-raw`).

The BIO format: `TOKEN<TAB>TAG` per line; `TAG` is `O`, `B-<types>` or `I-<types>` with a
comma-separated list of FIGER types (repeated on every token of the mention). A line that is
blank after stripping ends a sentence (the release separates sentences with a line holding a
single TAB); fields after the second are ignored (some lines end in an extra TAB). Mentions are
chunked as conlleval does: `B-` opens a mention; `I-` continues the open mention when it carries
the same set of types and otherwise opens a new one, so adjacent mentions need no `O` between them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from kadapter_cli.artifacts.io import iter_text_lines
from kadapter_cli.artifacts.output import check_output
from kadapter_cli.errors import BadInput
from kadapter_cli.tasks.base import (
    OWN_LABELS_FIX,
    LabelSet,
    TypingTask,
    argmax,
    detect_format,
    located,
    register_task,
)

# FIGER's 113 types (Ling & Weld 2012, the type map of the FIGER release): the benchmark's label set.
FIGER_TYPES = (
    "/art", "/art/film", "/astral_body", "/award", "/biology", "/body_part", "/broadcast/tv_channel",
    "/broadcast_network", "/broadcast_program", "/building", "/building/airport", "/building/dam",
    "/building/hospital", "/building/hotel", "/building/library", "/building/power_station",
    "/building/restaurant", "/building/sports_facility", "/building/theater", "/chemistry",
    "/computer/algorithm", "/computer/programming_language", "/disease", "/education/department",
    "/education/educational_degree", "/event", "/event/attack", "/event/election", "/event/military_conflict",
    "/event/natural_disaster", "/event/protest", "/event/sports_event", "/event/terrorist_attack",
    "/finance/currency", "/finance/stock_exchange", "/food", "/game", "/geography/glacier",
    "/geography/island", "/geography/mountain", "/god", "/government/government",
    "/government/political_party", "/government_agency", "/internet/website", "/language", "/law",
    "/living_thing", "/livingthing/animal", "/location", "/location/body_of_water", "/location/bridge",
    "/location/cemetery", "/location/city", "/location/country", "/location/county", "/location/province",
    "/medicine/drug", "/medicine/medical_treatment", "/medicine/symptom", "/metropolitan_transit/transit_line",
    "/military", "/music", "/news_agency", "/newspaper", "/organization", "/organization/airline",
    "/organization/company", "/organization/educational_institution", "/organization/fraternity_sorority",
    "/organization/sports_league", "/organization/sports_team", "/organization/terrorist_organization",
    "/park", "/people/ethnicity", "/person", "/person/actor", "/person/architect", "/person/artist",
    "/person/athlete", "/person/author", "/person/coach", "/person/director", "/person/doctor",
    "/person/engineer", "/person/monarch", "/person/musician", "/person/politician",
    "/person/religious_leader", "/person/soldier", "/person/terrorist", "/play", "/product",
    "/product/airplane", "/product/camera", "/product/car", "/product/computer", "/product/engine_device",
    "/product/instrument", "/product/mobile_phone", "/product/ship", "/product/spacecraft", "/product/weapon",
    "/rail/railway", "/religion/religion", "/software", "/time", "/title", "/train", "/transit",
    "/transportation/road", "/visual_art/color", "/written_work",
)

@register_task
class Figer(TypingTask):
    """113 FIGER types; prediction = every label with a positive logit, plus the best one, so a
    mention always gets at least one type."""

    name = "figer"
    # Loose micro F1: it pools every label decision, the steadiest of the paper's three numbers on
    # a small dev set.
    primary_metric = "micro_f1"
    headline_metrics = ("strict_acc", "macro_f1", "micro_f1")
    # Paper appendix: 3 epochs, max_length 256, batch 2048 (on 4 GPUs), lr 5e-6; warm-up 500 with
    # fac, 200 with lin, 1,000 with fac+lin. (The released script: batch 4, lr 3e-5, warm-up 120.)
    defaults = {"lr": 5e-6, "batch_size": 2048, "micro_batch_size": 8, "epochs": 3, "max_length": 256, "warmup": 500}
    adapter_defaults = {"lin": {"warmup": 200}, "fac+lin": {"warmup": 1000}}

    def read(self, path: str | Path, labeled: bool = True) -> list[dict]:
        if looks_like_bio(path):
            return read_figer_raw(path)[0]
        return super().read(path, labeled)

    # FIGER's type paths (`/person/artist`) are its own names: training labels all among them are
    # FIGER's data, in any folder (a sample holds a few of the 113).
    benchmark_labels = FIGER_TYPES
    distinctive_labels = True

    def benchmark_label_set(self, seen: list[str]) -> LabelSet:
        """FIGER's data: its training labels, sorted, so label ids do not depend on the order of
        train.json (the original used first appearance; docs/differences.md)."""
        return LabelSet(list(seen), "from the training split (FIGER types)", benchmark=True, fix=OWN_LABELS_FIX)

    def predicted_ids(self, row: Sequence[float]) -> list[int]:
        best = argmax(row)
        return [j for j, logit in enumerate(row) if logit > 0 or j == best]


# ---------------------------------------------------------------- the raw BIO release

# A first line `TOKEN<TAB>...`: tells the BIO release from JSON even when the first token is "[" (JSON
# writers escape tabs inside strings and do not put one right after a value).
_BIO_LINE = re.compile(r"[^\t]*\S[^\t]*\t")


def looks_like_bio(path: str | Path) -> bool:
    """Whether the file's first non-blank line is a `TOKEN<TAB>...` line."""
    detect_format(path)  # `BadInput` for a missing, unreadable or empty file
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return bool(_BIO_LINE.match(line))
    return False


def iter_bio_sentences(path: str | Path) -> Iterator[tuple[list[str], list[str], list[int]]]:
    """`(tokens, tags, line numbers)` of each sentence of a token-per-line BIO file; tags are checked."""
    path = Path(path)
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            if tokens:
                yield tokens, tags, lines
            tokens, tags, lines = [], [], []
            continue
        fields = line.split("\t")  # the token and tag are stripped, and with them the line end
        if len(fields) < 2:
            raise BadInput("expected TOKEN<TAB>TAG", path, f"line {lineno}")
        token, tag = fields[0].strip(), fields[1].strip()
        if not token:
            raise BadInput("empty token", path, f"line {lineno}")
        _check_tag(tag, path, lineno)
        tokens.append(token)
        tags.append(tag)
        lines.append(lineno)
    if tokens:
        yield tokens, tags, lines


def _check_tag(tag: str, path: Path, lineno: int) -> None:
    if tag == "O":
        return
    if tag[:2] not in ("B-", "I-"):
        raise BadInput(f"tag {tag!r} is not O, B-<types> or I-<types>", path, f"line {lineno}")
    if not all(_split_types(tag)):
        raise BadInput(f"tag {tag!r} has an empty type", path, f"line {lineno}")


def _split_types(tag: str) -> list[str]:
    return [t.strip() for t in tag[2:].split(",")]


def bio_mentions(tags: Sequence[str]) -> list[tuple[int, int, list[str]]]:
    """Mentions as `(first token, last token + 1, types)`; types keep their order, without repeats."""
    mentions: list[tuple[int, int, list[str]]] = []
    open_start, open_types = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        types = None if tag == "O" else list(dict.fromkeys(_split_types(tag)))
        continues = tag.startswith("I-") and open_types is not None and set(types) == set(open_types)
        if open_start is not None and not continues:
            mentions.append((open_start, i, open_types))
            open_start, open_types = None, None
        if types is not None and not continues:
            open_start, open_types = i, types
    return mentions


def read_figer_raw(path: str | Path) -> tuple[list[dict], int]:
    """Typing records `{"sent", "start", "end", "labels"}` of a BIO file, and its number of sentences.

    `sent` is the sentence's tokens joined by single spaces; `start`/`end` are the character
    offsets of a mention in it (end exclusive). Sentences without mentions give no record. Each
    record is located at the line of its mention's first token (errors found later name it).
    """
    records: list[dict] = []
    sentences = 0
    for tokens, tags, lines in iter_bio_sentences(path):
        sentences += 1
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token) + 1
        sent = " ".join(tokens)
        for first, stop, types in bio_mentions(tags):
            start = offsets[first]
            end = offsets[stop - 1] + len(tokens[stop - 1])
            records.append(located({"sent": sent, "start": start, "end": end, "labels": types},
                                   f"line {lines[first]}"))
    if not records:
        raise BadInput("no mentions (no B-/I- tags) in the file", path)
    return records, sentences


def convert_figer_raw(source: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, int]:
    """Writes the BIO file `source` as an ERNIE / K-Adapter JSON list to `output`; returns counts.

    Each record also gets `"ents": []` (ERNIE's entity links, which cannot be recreated offline)
    so the file loads in the original ERNIE / K-Adapter code too. The file appears complete or
    not at all; an existing `output` is refused unless `overwrite`.
    """
    output = Path(output)
    if output.is_dir():
        raise BadInput("is a folder; give the file to write, e.g. tasks/figer/test.json", output)
    check_output(output, overwrite=overwrite)
    records, sentences = read_figer_raw(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump([{**r, "ents": []} for r in records], f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    labels = {label for r in records for label in r["labels"]}
    return {"sentences": sentences, "mentions": len(records), "labels": len(labels)}
