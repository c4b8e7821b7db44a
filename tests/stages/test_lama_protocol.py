"""LAMA as facebookresearch/LAMA runs it (docs/probing.md): Google-RE judgments other than "yes" count as
"no", a gold object outside the model's vocabulary is never ranked first, and a RoBERTa query's
first word is encoded without a leading space (`--query-prefix-space` for the other)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kadapter_cli.data import lama

REPO = Path(__file__).resolve().parents[2]

def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- 6. Google-RE judgments


def test_every_judgment_other_than_yes_counts_as_no():
    yes, no, skip = {"judgment": "yes"}, {"judgment": "no"}, {"judgment": "skip"}
    assert lama.more_no_than_yes({"judgments": [yes, skip, skip]})  # LAMA: 1 yes, 2 no → dropped
    assert lama.more_no_than_yes({"judgments": [yes, no, skip]})
    assert not lama.more_no_than_yes({"judgments": [yes, skip]})  # a tie is kept
    assert not lama.more_no_than_yes({"judgments": [yes, yes, skip]})


def test_a_fact_judged_yes_once_and_skipped_twice_is_dropped(cli, tiny_mlm, tmp_path):
    assert cli("train-probe", "--backbone", tiny_mlm, "--pretrained-lm-head").exit_code == 0
    yes, skip = {"rater": "a", "judgment": "yes"}, {"rater": "b", "judgment": "skip"}
    google = tmp_path / "google"
    _write_jsonl(google / "place_of_birth_test.jsonl", [
        {"sub_label": "Anna", "obj_label": "city", "judgments": [yes, skip, skip]},
        {"sub_label": "Piotr", "obj_label": "city", "judgments": [yes, skip]},
    ])
    result = cli("probe", "base-lm-head", "--google-re", google, "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)["filters"]["base-lm-head"]["google_re/place_of_birth"]
    assert (counts["read"], counts["dropped_judgments"], counts["kept"]) == (2, 1, 1)


# ---------------------------------------------------------------- 7. a gold object outside the candidates


@pytest.fixture(scope="module")
def added_token_backbone(tmp_path_factory, tiny_mlm) -> Path:
    """The tiny RoBERTa whose tokenizer has one added token beyond its 1,000-row embedding matrix."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("added") / "backbone"
    shutil.copytree(tiny_mlm, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["Zyxquor"])
    tokenizer.save_pretrained(folder)
    return folder


def test_a_gold_object_the_model_cannot_predict_is_dropped_not_ranked_first(cli, added_token_backbone, tmp_path):
    from kadapter_cli.modeling.backbone import load_tokenizer

    tokenizer = load_tokenizer(added_token_backbone)
    assert lama.single_token_id(tokenizer, "Zyxquor") == 1000  # one token of the tokenizer, not of the model
    assert cli("train-probe", "--backbone", added_token_backbone, "--pretrained-lm-head", "--name", "added").exit_code == 0
    trex = tmp_path / "TREx"
    _write_jsonl(tmp_path / "relations.jsonl", [{"relation": "P131", "template": "[X] is in the [Y] ."}])
    _write_jsonl(trex / "P131.jsonl", [{"sub_label": "Quintara", "obj_label": "city"},
                                       {"sub_label": "Anna", "obj_label": "Zyxquor"}])
    result = cli("probe", "added", "--trex", trex, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    counts = summary["filters"]["added"]["trex/P131"]
    assert (counts["kept"], counts["dropped_multi_token"]) == (1, 1)
    rows = [json.loads(line) for line in
            (cli.workdir / "probe-results" / "added" / "predictions-added.jsonl").read_text().splitlines()]
    assert [r["obj_label"] for r in rows] == ["city"] and rows[0]["gold_id"] == lama.single_token_id(tokenizer, "city")


def test_rank_predictions_refuses_a_gold_outside_the_candidates():
    from kadapter_cli.stages.probe import rank_predictions

    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    candidates = torch.tensor([10, 20, 30])
    (first, second) = rank_predictions(scores, torch.tensor([2, 0]), candidates, top_k=2)
    assert (first["gold_id"], first["rank"], first["pred_ids"]) == (30, 2, [20, 30])
    assert (second["gold_id"], second["rank"]) == (10, 1)
    with pytest.raises(ValueError, match="not among the candidates"):
        rank_predictions(scores, torch.tensor([2, -1]), candidates, top_k=2)


# ---------------------------------------------------------------- 8. the query's first word


def _fact(subject: str, template: str) -> lama.Fact:
    return lama.Fact("trex", "P19", subject, "city", template, "hand")


def test_a_roberta_query_starts_without_a_space_as_lamas_connector_encodes_it(tiny_backbone):
    from transformers import AutoTokenizer

    from kadapter_cli.modeling.backbone import load_tokenizer
    from kadapter_cli.stages.probe import encode_query

    tokenizer = load_tokenizer(tiny_backbone)  # byte-level BPE with add_prefix_space=True
    plain = AutoTokenizer.from_pretrained(tiny_backbone, add_prefix_space=False)

    def bpe(text: str, tok=plain) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    for template, before, after in (("[X] was born in [Y] .", "Paris was born in", " ."),
                                    ("[X] (born [Y]).", "Paris (born", ")."),
                                    ("[Y] is where [X] lives .", "", " is where Paris lives .")):
        query = encode_query(tokenizer, _fact("Paris", template))
        assert query["input_ids"] == [cls, *bpe(before), mask, *bpe(after), sep]
        assert query["mask_pos"] == 1 + len(bpe(before))
        spaced = encode_query(tokenizer, _fact("Paris", template), prefix_space=True)
        assert spaced["input_ids"] == [cls, *bpe(before, tokenizer), mask, *bpe(after), sep]
    assert tokenizer.convert_ids_to_tokens(encode_query(tokenizer, _fact("Paris", "[X] was born in [Y] ."))["input_ids"][1]) == "P"


def test_wordpiece_queries_are_unchanged_by_the_prefix_space_option(minilm):
    from kadapter_cli.modeling.backbone import load_tokenizer
    from kadapter_cli.stages.probe import encode_query

    tokenizer = load_tokenizer(minilm)
    fact = _fact("Paris", "[X] was born in [Y] .")
    expected = tokenizer(fact.query(tokenizer.mask_token))["input_ids"]
    assert encode_query(tokenizer, fact)["input_ids"] == expected == encode_query(tokenizer, fact, prefix_space=True)["input_ids"]


def test_on_the_real_samples_the_prefix_space_changes_every_bpe_query_and_no_wordpiece_one(tiny_backbone, minilm,
                                                                                           shared_data):
    # What docs/probing.md and docs/differences.md state, measured: the 20 facts of the LAMA samples
    # (T-REx P17 with the docs' template, Google-RE's three relations), before any filter.
    from kadapter_cli.modeling.backbone import is_byte_level, load_tokenizer
    from kadapter_cli.stages.probe import LamaSpec, query_encoder, read_lama

    relations = read_lama(LamaSpec(trex=shared_data / "lama-trex", google_re=shared_data / "lama-google-re",
                                   templates={"P17": "[X] is located in [Y] ."}))
    facts = [fact for _, raw in relations for fact, _ in raw]
    changed = {}
    for kind, backbone in (("byte-level", tiny_backbone), ("wordpiece", minilm)):
        tokenizer = load_tokenizer(backbone)
        assert is_byte_level(tokenizer) == (kind == "byte-level")
        lamas, spaced = query_encoder(tokenizer), query_encoder(tokenizer, prefix_space=True)
        changed[kind] = sum(lamas(f)["input_ids"] != spaced(f)["input_ids"] for f in facts)
    assert (len(facts), changed) == (20, {"byte-level": 20, "wordpiece": 0})
    probing = " ".join((REPO / "docs" / "probing.md").read_text().split())
    assert (f"changes the ids of all {changed['byte-level']} queries with a byte-level tokenizer and "
            f"none with MiniLM's WordPiece") in probing
    differences = (REPO / "docs" / "differences.md").read_text().split("## Open QA and LAMA")[1]
    row = next((line for line in differences.splitlines() if "--query-prefix-space" in line), "")
    assert row.startswith("| LAMA") and f"all {changed['byte-level']} queries" in row and "none with WordPiece" in row


def test_query_prefix_space_scores_the_queries_as_the_corpus_lines_are_encoded(cli, tiny_mlm, tmp_path):
    # Without the flag (LAMA's encoding) tests/stages/test_probe.py checks the same against the masked LM.
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert cli("train-probe", "--backbone", tiny_mlm, "--pretrained-lm-head").exit_code == 0
    trex = tmp_path / "TREx"
    _write_jsonl(tmp_path / "relations.jsonl", [{"relation": "P131", "template": "[X] is in the [Y] ."}])
    _write_jsonl(trex / "P131.jsonl", [{"sub_label": s, "obj_label": "city"} for s in ("Quintara", "Anna", "Ostrava")])
    result = cli("probe", "base-lm-head", "--trex", trex, "--top-k", "5", "--json", "--query-prefix-space")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["query_prefix_space"] is True
    rows = [json.loads(line) for line in (cli.workdir / "probe-results" / "base-lm-head" /
                                          "predictions-base-lm-head.jsonl").read_text().splitlines()]
    spaced = AutoTokenizer.from_pretrained(tiny_mlm, add_prefix_space=True)
    plain = AutoTokenizer.from_pretrained(tiny_mlm, add_prefix_space=False)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    allowed = torch.tensor([i for i in range(len(plain)) if i not in set(plain.all_special_ids)])
    for row in rows:
        before = spaced(f"{row['sub_label']} is in the", add_special_tokens=False)["input_ids"]
        after = plain(" .", add_special_tokens=False)["input_ids"]
        ids = [plain.cls_token_id, *before, plain.mask_token_id, *after, plain.sep_token_id]
        with torch.no_grad():
            logits = mlm(input_ids=torch.tensor([ids])).logits[0, len(before) + 1]
        assert row["pred_ids"] == allowed[torch.sort(-logits[allowed], stable=True).indices[:5]].tolist()
