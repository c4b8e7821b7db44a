"""LAMA probe data (Petroni et al. 2019): T-REx and Google-RE facts, their templates, and the filters.

- T-REx: one `P*.jsonl` per relation (`sub_label`, `obj_label`, `predicate_id`, ...) and the
  templates in `relations.jsonl` (`{"relation": "P19", "template": "[X] was born in [Y] ."}`).
- Google-RE: `{place_of_birth,date_of_birth,place_of_death}_test.jsonl` (`sub_label`, `obj_label`,
  `judgments`), with the templates LAMA's `scripts/run_experiments.py` hard-codes.

A fact becomes a cloze query: the template with `[X]` = the subject and `[Y]` = the model's mask
token. The filters follow LAMA, each counted per relation in the order they apply:

1. `judgments`: Google-RE facts with more "no" than "yes" human judgments;
2. `multi_token`: the object is not one token of the model's vocabulary (for byte-level BPE the
   space-prefixed token, as the object follows a space in every template);
3. `common_vocab`: the object is not in `--common-vocab FILE` (when given);
4. `uhn`: with `--uhn`, the string-match filter of Poerner et al. (the lower-cased object is a
   substring of the lower-cased subject);
5. `duplicate`: a (subject, object) pair already kept for the relation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kadapter_cli.artifacts.io import iter_jsonl, iter_text_lines
from kadapter_cli.errors import BadInput, BadParameter, ParamText

GOOGLE_RE_TEMPLATES = {
    "place_of_birth": "[X] was born in [Y] .",
    "date_of_birth": "[X] (born [Y]).",
    "place_of_death": "[X] died in [Y] .",
}
FILTERS = ("judgments", "multi_token", "common_vocab", "uhn", "duplicate")
TREX_FILE = re.compile(r"P\d+\.jsonl")


@dataclass(frozen=True)
class Fact:
    """One LAMA fact, with where it came from (for error messages and the predictions file)."""

    dataset: str  # "trex" | "google_re"
    relation: str
    subject: str
    obj: str
    template: str
    source: str  # "file, line N"

    def query(self, mask_token: str) -> str:
        """The cloze sentence: `[X]` = subject, `[Y]` = the mask token."""
        return self.template.replace("[X]", self.subject).replace("[Y]", mask_token)


@dataclass
class RelationFacts:
    """A relation's kept facts and how many facts each filter dropped."""

    dataset: str
    relation: str
    template: str
    facts: list[Fact] = field(default_factory=list)
    read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FILTERS})

    def counts(self) -> dict[str, int]:
        return {"read": self.read, "kept": len(self.facts), **{f"dropped_{k}": v for k, v in self.dropped.items()}}


# ---------------------------------------------------------------- templates


def check_template(template: object, path: Path, line: int) -> str:
    if not isinstance(template, str) or "[X]" not in template or "[Y]" not in template:
        raise BadInput(f"template {template!r} must contain both [X] and [Y]", path, f"line {line}")
    return template


def read_templates(path: Path) -> dict[str, str]:
    """`relations.jsonl` → {relation id: template}; a template without `[X]` or `[Y]` is `BadInput`."""
    templates = {}
    for line, rec in iter_jsonl(path):
        for key in ("relation", "template"):
            if key not in rec:
                raise BadInput(f"missing field '{key}'", path, f"line {line}")
        templates[str(rec["relation"])] = check_template(rec["template"], path, line)
    return templates


def parse_template_options(items: Iterable[str]) -> dict[str, str]:
    """`['P17=[X] is located in [Y] .', ...]` → {relation: template}."""
    out = {}
    for item in items:
        relation, sep, template = item.partition("=")
        if not sep or not relation.strip():
            raise BadParameter("{template} expects RELATION=TEMPLATE, got {value!r}", item)
        if "[X]" not in template or "[Y]" not in template:
            raise BadParameter("{template} {value!r}: the template must contain both [X] and [Y]", item)
        out[relation.strip()] = template.strip()
    return out


# ---------------------------------------------------------------- readers


def _fact_fields(rec: dict, path: Path, line: int) -> tuple[str, str]:
    for key in ("sub_label", "obj_label"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise BadInput(f"missing field '{key}'" if key not in rec else f"'{key}' must be a non-empty string",
                           path, f"line {line}")
    return rec["sub_label"].strip(), rec["obj_label"].strip()


def read_trex(folder: Path, extra_templates: dict[str, str] | None = None) -> list[tuple[RelationFacts, list[tuple[Fact, dict]]]]:
    """Every `P*.jsonl` of a LAMA T-REx folder with its template from `relations.jsonl` (found in the
    folder or its parent; `extra_templates` add to or replace them). Returns per relation its
    (empty) `RelationFacts` and the raw facts with their records, before filtering."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("LAMA T-REx folder not found", folder)
    files = sorted((p for p in folder.iterdir() if TREX_FILE.fullmatch(p.name)), key=lambda p: int(p.stem[1:]))
    if not files:
        raise BadInput("no P*.jsonl fact files in the LAMA T-REx folder", folder)
    templates_path = next((p for p in (folder / "relations.jsonl", folder.parent / "relations.jsonl") if p.is_file()), None)
    templates = read_templates(templates_path) if templates_path is not None else {}
    templates.update(extra_templates or {})
    out = []
    for path in files:
        relation = path.stem
        if relation not in templates:
            where = templates_path or folder / "relations.jsonl"
            raise BadInput(ParamText("no template for relation {relation} in {where} (give one with "
                                     "{template} '{relation}=[X] ... [Y] .')", relation=relation, where=where), path)
        rel = RelationFacts("trex", relation, templates[relation])
        raw = []
        for line, rec in iter_jsonl(path):
            subject, obj = _fact_fields(rec, path, line)
            raw.append((Fact("trex", relation, subject, obj, rel.template, f"{path}, line {line}"), rec))
        out.append((rel, raw))
    return out


def read_google_re(folder: Path) -> list[tuple[RelationFacts, list[tuple[Fact, dict]]]]:
    """Google-RE's three `*_test.jsonl` files (those present; at least one) with their built-in templates."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput("LAMA Google-RE folder not found", folder)
    out = []
    for relation, template in GOOGLE_RE_TEMPLATES.items():
        path = folder / f"{relation}_test.jsonl"
        if not path.is_file():
            continue
        rel = RelationFacts("google_re", relation, template)
        raw = []
        for line, rec in iter_jsonl(path):
            subject, obj = _fact_fields(rec, path, line)
            judgments = rec.get("judgments", [])
            if not isinstance(judgments, list) or not all(isinstance(j, dict) for j in judgments):
                raise BadInput("'judgments' must be a list of {\"judgment\": \"yes\"/\"no\"}", path, f"line {line}")
            raw.append((Fact("google_re", relation, subject, obj, template, f"{path}, line {line}"), rec))
        out.append((rel, raw))
    if not out:
        raise BadInput(f"none of {', '.join(f'{r}_test.jsonl' for r in GOOGLE_RE_TEMPLATES)} found", folder)
    return out


def read_common_vocab(path: Path) -> set[str]:
    """LAMA's `common_vocab_cased.txt`: one word a line."""
    words = {line.strip() for _, line in iter_text_lines(path) if line.strip()}
    if not words:
        raise BadInput("the common vocabulary is empty", path)
    return words


# ---------------------------------------------------------------- filters


def more_no_than_yes(record: dict) -> bool:
    """LAMA drops a Google-RE fact whose human judgments hold more "no" than "yes"."""
    judgments = [str(j.get("judgment", "")).lower() for j in record.get("judgments", [])]
    return judgments.count("no") > judgments.count("yes")


def string_match(subject: str, obj: str) -> bool:
    """UHN's string-match filter (Poerner et al.): the object is guessable from the subject's name."""
    return obj.lower() in subject.lower()


def filter_facts(
    relation: RelationFacts,
    raw: Sequence[tuple[Fact, dict]],
    object_token: Callable[[str], int | None],
    common_vocab: set[str] | None = None,
    uhn: bool = False,
) -> RelationFacts:
    """Applies the filters (module docstring) in order, counting the facts each one drops.

    `object_token(obj)` is the object's single vocabulary id, or None when it is not one token.
    """
    seen: set[tuple[str, str]] = set()
    for fact, record in raw:
        relation.read += 1
        if relation.dataset == "google_re" and more_no_than_yes(record):
            reason = "judgments"
        elif object_token(fact.obj) is None:
            reason = "multi_token"
        elif common_vocab is not None and fact.obj not in common_vocab:
            reason = "common_vocab"
        elif uhn and string_match(fact.subject, fact.obj):
            reason = "uhn"
        elif (fact.subject, fact.obj) in seen:
            reason = "duplicate"
        else:
            seen.add((fact.subject, fact.obj))
            relation.facts.append(fact)
            continue
        relation.dropped[reason] += 1
    return relation


# ---------------------------------------------------------------- vocabulary


def single_token_id(tokenizer, word: str) -> int | None:
    """The vocabulary id of `word` when it is exactly one token, as it reads after a space.

    The project's byte-level BPE tokenizers prefix a space (`add_prefix_space=True`), so `word`
    maps to the `Ġword` token RoBERTa predicts after "in"; WordPiece tokenizers lower-case for
    uncased models on their own.
    """
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] in set(tokenizer.all_special_ids) or ids[0] == tokenizer.unk_token_id:
        return None
    return int(ids[0])


def candidate_ids(tokenizer, common_vocab: set[str] | None) -> list[int]:
    """The vocabulary in use at the mask: the common vocabulary's single-token words, or (without
    one) every token but the special ones."""
    special = set(tokenizer.all_special_ids)
    if common_vocab is None:
        return [i for i in range(len(tokenizer)) if i not in special]
    ids = {single_token_id(tokenizer, w) for w in common_vocab}
    ids.discard(None)
    return sorted(ids)
