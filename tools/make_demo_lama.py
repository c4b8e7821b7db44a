#!/usr/bin/env python
"""Writes the demo's LAMA probe data (`kadapter_cli/demo_data/lama/`) from the bundled T-REx demo documents.

    python tools/make_demo_lama.py [--demo-data kadapter_cli/demo_data] [--per-relation 40]

`tools/make_demo_data.py` calls it after writing `trex/`, so regenerating the demo data
regenerates these files too.

Deterministic (no randomness): the same documents give byte-identical files. What it writes:

- `TREx/P*.jsonl`: the documents' facts in LAMA's T-REx probe format (`uuid`, `sub_uri`,
  `sub_label`, `obj_uri`, `obj_label`, `predicate_id`, `evidences` with `masked_sentence`), one
  file per relation that LAMA has a template for, at most `--per-relation` distinct facts each;
  labels are the entities' names in the documents (a subject's name is its document's title).
- `relations.jsonl`: those relations' templates, as LAMA's `relations.jsonl` words them.
- `corpus.txt`: the documents' text, one document a line: the demo's probe corpus (the paper uses
  WikiText; the demo's grammar sentences in `corpus/` name none of the facts' objects).
"""

from __future__ import annotations

import argparse
import gzip
import json
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTITY = "http://www.wikidata.org/entity/"
PROP = "http://www.wikidata.org/prop/direct/"
MAX_EVIDENCES = 2  # per fact: LAMA keeps several; two show the format without bloating the package

# LAMA's templates (facebookresearch/LAMA data/relations.jsonl) for the demo's relations.
TEMPLATES = {
    "P17": ("[X] is located in [Y] .", "country", "N-1"),
    "P19": ("[X] was born in [Y] .", "place of birth", "N-1"),
    "P27": ("[X] is [Y] citizen .", "country of citizenship", "N-M"),
    "P30": ("[X] is located in [Y] .", "continent", "N-1"),
    "P36": ("The capital of [X] is [Y] .", "capital", "1-1"),
    "P37": ("The official language of [X] is [Y] .", "official language", "N-1"),
    "P47": ("[X] shares border with [Y] .", "shares border with", "N-M"),
    "P106": ("[X] is a [Y] by profession .", "occupation", "N-M"),
    "P108": ("[X] works for [Y] .", "employer", "N-M"),
    "P159": ("The headquarter of [X] is in [Y] .", "headquarters location", "N-1"),
}


def read_documents(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".json.gz"):
            docs += json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
        elif path.name.endswith(".json"):
            docs += json.loads(path.read_text(encoding="utf-8"))
    return docs


def entity_names(docs: list[dict]) -> dict[str, str]:
    """uri → name: a document's title names its subject; linked mentions (not pronouns) name the rest."""
    names = {d["uri"]: d["title"] for d in docs}
    for d in docs:
        for e in d["entities"]:
            if e["annotator"] != "Simple_Coreference" and e["surfaceform"]:
                names.setdefault(e["uri"], e["surfaceform"])
    return names


def lama_facts(docs: list[dict], per_relation: int) -> dict[str, list[dict]]:
    names = entity_names(docs)
    facts: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in TEMPLATES}
    for d in docs:
        for t in d["triples"]:
            relation = t["predicate"]["uri"].removeprefix(PROP)
            sub, obj = t["subject"]["uri"], t["object"]["uri"]
            if relation not in TEMPLATES or sub not in names or obj not in names:
                continue
            key = (sub, obj)
            start, end = d["sentences_boundaries"][t["sentence_id"]]
            sentence = d["text"][start:end]
            o_start, o_end = t["object"]["boundaries"]
            masked = sentence[: o_start - start] + "[MASK]" + sentence[o_end - start:]
            evidence = {"sub_surface": t["subject"]["surfaceform"] or names[sub],
                        "obj_surface": t["object"]["surfaceform"], "masked_sentence": masked}
            if key in facts[relation]:
                evidences = facts[relation][key]["evidences"]
                if len(evidences) < MAX_EVIDENCES:
                    evidences.append(evidence)
            elif len(facts[relation]) < per_relation:
                facts[relation][key] = {
                    "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sub}|{relation}|{obj}")),
                    "sub_uri": sub.removeprefix(ENTITY), "sub_label": names[sub],
                    "obj_uri": obj.removeprefix(ENTITY), "obj_label": names[obj],
                    "predicate_id": relation, "evidences": [evidence]}
    return {r: list(f.values()) for r, f in facts.items() if f}


def write_lama(demo_data: Path, per_relation: int = 40) -> str:
    """Writes `demo_data/lama/` from `demo_data/trex/`; returns a one-line summary."""
    docs = read_documents(demo_data / "trex")
    out = demo_data / "lama"
    (out / "TREx").mkdir(parents=True, exist_ok=True)
    facts = lama_facts(docs, per_relation)
    for relation, records in facts.items():
        (out / "TREx" / f"{relation}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    (out / "relations.jsonl").write_text("".join(
        json.dumps({"relation": r, "template": t, "label": label, "type": kind}) + "\n"
        for r, (t, label, kind) in TEMPLATES.items() if r in facts), encoding="utf-8")
    (out / "corpus.txt").write_text("".join(" ".join(d["text"].split()) + "\n" for d in docs), encoding="utf-8")
    return f"{sum(map(len, facts.values()))} facts over {len(facts)} relations from {len(docs)} documents"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-data", type=Path, default=REPO / "kadapter_cli" / "demo_data")
    parser.add_argument("--per-relation", type=int, default=40, help="distinct facts kept per relation")
    args = parser.parse_args()
    print(f"wrote {write_lama(args.demo_data, args.per_relation)} → {args.demo_data / 'lama'}")


if __name__ == "__main__":
    main()
