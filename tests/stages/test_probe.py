"""Knowledge probing: `kadapter train-probe` (the masked-LM layer) and `kadapter probe` (LAMA P@1).

The commands run as the README shows them, on the real LAMA samples (`../shared/data/lama-trex`,
`../shared/data/lama-google-re`) and on hand-made facts that exercise each filter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

P17 = "P17=[X] is located in [Y] ."


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small WikiText-style corpus: headings and blank lines are skipped."""
    from kadapter_cli.artifacts.layout import DEMO_DATA

    lines = (DEMO_DATA / "corpus" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:120]
    path = tmp_path_factory.mktemp("corpus") / "wiki.train.raw"
    path.write_text(" = Valkyria Chronicles = \n\n" + "\n".join(lines) + "\n = = Gameplay = = \n", encoding="utf-8")
    return path


TRAIN = ("--batch-size", "16", "--micro-batch-size", "8", "--max-steps", "3", "--max-length", "32", "--lr", "1e-2")


@pytest.fixture(scope="module")
def base_probe(tmp_path_factory, tiny_backbone, corpus) -> Path:
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir = tmp_path_factory.mktemp("probe-work")
    result = CliRunner().invoke(app, ["--workdir", str(workdir), "train-probe", "--backbone", str(tiny_backbone),
                                      "--corpus", str(corpus), *TRAIN], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return workdir / "probes" / "base"


# ---------------------------------------------------------------- training the probe layer


def test_train_probe_writes_an_artifact_and_reads_only_text_lines(base_probe, corpus):
    from kadapter_cli.artifacts.manifest import read_manifest, verify_files

    manifest = read_manifest(base_probe)
    verify_files(base_probe, manifest)
    assert manifest["kind"] == "probe"
    assert manifest["config"]["batch_size"] == 16 and manifest["config"]["grad_accum"] == 2
    assert manifest["stats"]["steps"] == 3
    assert manifest["stats"]["lines"] == 120  # the heading lines and the blank line are not text
    assert manifest["stats"]["sequences"] > 120  # lines longer than --max-length are cut into several
    config = json.loads((base_probe / "probe_config.json").read_text())
    assert config["features"] == ["backbone"] and config["vocab_size"] == 1000
    assert not (base_probe / "checkpoints").exists()


def test_masking_is_15_percent_80_10_10_and_logits_come_only_from_masked_rows(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_backbone
    from kadapter_cli.modeling.probe_model import ProbeModel
    from kadapter_cli.training.objectives import MaskedLMObjective

    objective = MaskedLMObjective(pad_id=1, mask_id=4, vocab_size=1000)
    examples = [{"input_ids": [0] + [500 + (i % 7)] * 400 + [2], "maskable": list(range(1, 401))} for i in range(50)]
    generator = torch.Generator().manual_seed(0)
    batch = objective.collate(examples, generator)
    chosen = batch["valid"].sum().item()
    assert abs(chosen / (50 * 400) - 0.15) < 0.01
    picked = batch["input_ids"].gather(1, batch["positions"])[batch["valid"]]
    gold = batch["labels"][batch["valid"]]
    assert abs((picked == 4).float().mean().item() - 0.8) < 0.02
    assert abs((picked == gold).float().mean().item() - 0.1) < 0.02  # unchanged (a random draw may hit gold too)
    assert (batch["positions"][batch["valid"]] >= 1).all() and (batch["positions"][batch["valid"]] <= 400).all()

    model = ProbeModel(load_backbone(tiny_backbone), {}, hidden=64, vocab_size=1000)
    small = objective.collate(examples[:2], generator)
    logits = model(small)
    assert logits.shape == (int(small["valid"].sum()), 1000)  # (masked rows, V), never B × L × V
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["mlm.weight", "mlm.bias"]


def test_train_probe_resumes_exactly(tmp_path, cli, tiny_backbone, corpus, monkeypatch):
    from kadapter_cli.training import loop as training

    args = ("train-probe", "--backbone", tiny_backbone, "--corpus", corpus, "--batch-size", "8", "--micro-batch-size",
            "4", "--max-steps", "4", "--save-every", "2", "--max-length", "32")
    assert cli(*args, "--out", tmp_path / "whole").exit_code == 0

    after_step = training._Loop._after_step

    def interrupted(self, *a, **k):
        after_step(self, *a, **k)
        if self.state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training._Loop, "_after_step", interrupted)
    assert cli(*args, "--out", tmp_path / "cut").exit_code == 130
    monkeypatch.setattr(training._Loop, "_after_step", after_step)
    assert not (tmp_path / "cut").exists()
    assert cli(*args, "--out", tmp_path / "cut", "--resume").exit_code == 0
    whole = (tmp_path / "whole" / "probe.safetensors").read_bytes()
    assert (tmp_path / "cut" / "probe.safetensors").read_bytes() == whole


# ---------------------------------------------------------------- LAMA on the real samples


def test_probe_on_the_real_lama_samples_with_the_tiny_backbone(cli, base_probe, shared_data):
    trex, google_re = shared_data / "lama-trex", shared_data / "lama-google-re"
    # P17 has no template in the sample's relations.jsonl: the command says how to give one.
    refused = cli("probe", base_probe, "--trex", trex)
    assert refused.exit_code == 2
    assert "P17.jsonl" in refused.stderr and "--template" in refused.stderr

    result = cli("probe", base_probe, "--trex", trex, "--google-re", google_re, "--template", P17, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    filters = summary["filters"]["base"]
    assert set(filters) == {"trex/P17", "google_re/place_of_birth", "google_re/date_of_birth", "google_re/place_of_death"}
    assert all(c["read"] == 5 for c in filters.values())
    # The tiny BPE vocabulary (1,000 tokens of the demo text) has none of these objects as one token.
    assert all(c["dropped_multi_token"] == c["read"] - c["dropped_judgments"] for c in filters.values())
    assert (cli.workdir / "probe-results" / "base" / "predictions-base.jsonl").is_file()


def test_probe_on_the_real_lama_samples_with_minilm(cli, minilm, corpus, shared_data):
    train = cli("train-probe", "--backbone", minilm, "--corpus", corpus, *TRAIN)
    assert train.exit_code == 0, train.output
    # The samples' objects as the common vocabulary: every one is a single WordPiece token.
    objects = [json.loads(line)["obj_label"] for f in sorted((shared_data / "lama-google-re").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    objects += [json.loads(line)["obj_label"] for line in (shared_data / "lama-trex" / "P17.jsonl").read_text().splitlines()]
    vocab = cli.workdir / "common_vocab.txt"
    vocab.write_text("\n".join(sorted(set(objects))) + "\n")
    result = cli("probe", "base", "--trex", shared_data / "lama-trex", "--google-re", shared_data / "lama-google-re",
                 "--template", P17, "--common-vocab", vocab, "--top-k", "3", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    kept = {k: c["kept"] for k, c in summary["filters"]["base"].items()}
    assert sum(kept.values()) == summary["results"]["base"]["trex"]["facts"] + summary["results"]["base"]["google_re"]["facts"]
    assert kept["trex/P17"] == 5

    # P@1, P@10 and MRR recomputed from the predictions file equal the printed ones.
    rows = [json.loads(line) for line in
            (cli.workdir / "probe-results" / "base" / "predictions-base.jsonl").read_text().splitlines()]
    assert all(len(r["pred"]) == len(r["pred_ids"]) == 3 for r in rows)
    for dataset, printed in summary["results"]["base"].items():
        by_relation: dict[str, list[dict]] = {}
        for r in rows:
            if r["dataset"] == dataset:
                by_relation.setdefault(r["relation"], []).append(r)
        p1 = [sum(r["pred_ids"][0] == r["gold_id"] for r in rs) / len(rs) for rs in by_relation.values()]
        assert printed["p_at_1"] == pytest.approx(sum(p1) / len(p1), abs=0)
        assert all((r["rank"] == 1) == (r["pred_ids"][0] == r["gold_id"]) for r in rows)
        assert all((r["rank"] <= 3) == (r["gold_id"] in r["pred_ids"]) for r in rows)
        mrr = [sum(1 / r["rank"] for r in rs) / len(rs) for rs in by_relation.values()]
        assert printed["mrr"] == pytest.approx(sum(mrr) / len(mrr))
    table = cli("probe", "base", "--trex", shared_data / "lama-trex", "--template", P17, "--common-vocab", vocab,
                "--out", cli.workdir / "table")
    assert table.exit_code == 0, table.output
    p17 = summary["results"]["base"]["trex"]["p_at_1"]
    assert f"{100 * p17:.2f}" in table.stdout and "T-REx P@1" in table.stdout


# ---------------------------------------------------------------- every filter on hand cases


@pytest.fixture
def hand_lama(tmp_path) -> dict[str, Path]:
    """Facts whose objects are (or are not) single tokens of the tiny vocabulary: city, river, school, book."""
    trex = tmp_path / "lama" / "TREx"
    write_jsonl(tmp_path / "lama" / "relations.jsonl", [{"relation": "P131", "template": "[X] is in the [Y] ."}])
    write_jsonl(trex / "P131.jsonl", [
        {"sub_label": "Quintara", "obj_label": "city"},           # kept
        {"sub_label": "Quintara", "obj_label": "city"},           # duplicate
        {"sub_label": "Ostrava", "obj_label": "Kazakhstan"},      # several tokens
        {"sub_label": "Lake river port", "obj_label": "river"},   # UHN: the object is in the name
        {"sub_label": "Piotr", "obj_label": "school"},            # not in the common vocabulary
        {"sub_label": "Anna", "obj_label": "book"},               # kept
    ])
    google = tmp_path / "google"
    yes, no = {"rater": "a", "judgment": "yes"}, {"rater": "b", "judgment": "no"}
    write_jsonl(google / "place_of_birth_test.jsonl", [
        {"sub_label": "Anna", "obj_label": "city", "judgments": [yes, no, no]},   # more no than yes
        {"sub_label": "Piotr", "obj_label": "city", "judgments": [yes, no]},      # a tie is kept
    ])
    vocab = tmp_path / "common.txt"
    vocab.write_text("city\nriver\nbook\nKazakhstan\n")
    return {"trex": trex, "google": google, "vocab": vocab}


def test_each_filter_drops_what_it_should(cli, base_probe, hand_lama):
    result = cli("probe", base_probe, "--trex", hand_lama["trex"], "--google-re", hand_lama["google"],
                 "--common-vocab", hand_lama["vocab"], "--uhn", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["filters"]["base"]["trex/P131"] == {
        "read": 6, "kept": 2, "dropped_judgments": 0, "dropped_multi_token": 1, "dropped_common_vocab": 1,
        "dropped_uhn": 1, "dropped_duplicate": 1}
    assert summary["filters"]["base"]["google_re/place_of_birth"]["dropped_judgments"] == 1
    assert summary["filters"]["base"]["google_re/place_of_birth"]["kept"] == 1
    rows = [json.loads(line) for line in
            (cli.workdir / "probe-results" / "base-uhn" / "predictions-base.jsonl").read_text().splitlines()]
    assert [(r["sub_label"], r["obj_label"]) for r in rows] == [("Quintara", "city"), ("Anna", "book"), ("Piotr", "city")]
    # Scores are restricted to the common vocabulary's single tokens (Kazakhstan is not one).
    assert all(set(r["pred_ids"]) <= {r2["gold_id"] for r2 in rows} | {397} for r in rows)
    assert all(len(r["pred_ids"]) == 3 for r in rows)

    without = json.loads(cli("probe", base_probe, "--trex", hand_lama["trex"], "--json").stdout)
    counts = without["filters"]["base"]["trex/P131"]
    assert (counts["kept"], counts["dropped_uhn"], counts["dropped_common_vocab"]) == (4, 0, 0)


def test_the_template_option_and_string_match_helpers():
    from kadapter_cli.data import lama
    from kadapter_cli.errors import BadInput

    assert lama.parse_template_options([P17]) == {"P17": "[X] is located in [Y] ."}
    with pytest.raises(BadInput, match=r"\[X\] and \[Y\]"):
        lama.parse_template_options(["P17=[X] is located somewhere ."])
    assert lama.string_match("Apple Watch", "apple") and not lama.string_match("Anna", "city")
    assert lama.more_no_than_yes({"judgments": [{"judgment": "no"}, {"judgment": "no"}, {"judgment": "yes"}]})
    assert not lama.more_no_than_yes({"judgments": [{"judgment": "no"}, {"judgment": "yes"}]})


# ---------------------------------------------------------------- adapters and the pretrained LM head


def test_probe_table_puts_base_and_adapter_probes_side_by_side(cli, tiny_backbone, corpus, hand_lama, tmp_path):
    from kadapter_cli.artifacts.manifest import write_manifest
    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import BackboneShape

    folder = cli.workdir / "adapters" / "fac"
    folder.mkdir(parents=True)
    config = AdapterConfig.for_backbone(BackboneShape("roberta", 64, 4, 4, str(tiny_backbone)), "fac", name="fac",
                                        backbone=str(tiny_backbone), adapter_width=64, num_heads=2, labels=["P17"])
    torch.manual_seed(0)
    save_adapter(folder, KnowledgeAdapter(config), config)
    write_manifest(folder, "adapter")
    for adapters in ([], ["--adapters", "fac"]):
        result = cli("train-probe", "--backbone", tiny_backbone, "--corpus", corpus, *adapters, *TRAIN)
        assert result.exit_code == 0, result.output
    probe_config = json.loads((cli.workdir / "probes" / "fac" / "probe_config.json").read_text())
    assert probe_config["features"] == ["backbone", "adapter:fac"]
    result = cli("probe", "base", "fac", "--trex", hand_lama["trex"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "base" in line and "fac" in line)
    assert header.index("base") < header.index("fac")
    metrics_file = json.loads((cli.workdir / "probe-results" / "base+fac" / "metrics.json").read_text())
    assert set(metrics_file["results"]) == {"base", "fac"}


def test_pretrained_lm_head_baseline_scores_as_the_backbones_own_masked_lm(cli, tiny_mlm, hand_lama):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    result = cli("train-probe", "--backbone", tiny_mlm, "--pretrained-lm-head")
    assert result.exit_code == 0, result.output
    out = cli("probe", "base-lm-head", "--trex", hand_lama["trex"], "--top-k", "5", "--json")
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in
            (cli.workdir / "probe-results" / "base-lm-head" / "predictions-base-lm-head.jsonl").read_text().splitlines()]
    # LAMA's RoBERTa query: the text before and after the mask encoded as written (no leading space)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm, add_prefix_space=False)
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    special = set(tokenizer.all_special_ids)
    for row in rows:
        before = tokenizer(f"{row['sub_label']} is in the", add_special_tokens=False)["input_ids"]
        after = tokenizer(" .", add_special_tokens=False)["input_ids"]
        ids = [tokenizer.cls_token_id, *before, tokenizer.mask_token_id, *after, tokenizer.sep_token_id]
        pos = 1 + len(before)
        with torch.no_grad():
            logits = mlm(input_ids=torch.tensor([ids])).logits[0, pos]
        allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
        best = allowed[torch.sort(-logits[allowed], stable=True).indices[:5]].tolist()
        assert row["pred_ids"] == best


def test_init_from_lm_head_trains_and_a_backbone_without_one_is_refused(cli, tiny_mlm, minilm, corpus):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    result = cli("train-probe", "--backbone", tiny_mlm, "--corpus", corpus, "--init-from-lm-head", "--name", "warm",
                 *TRAIN)
    assert result.exit_code == 0, result.output
    weights = load_file(str(cli.workdir / "probes" / "warm" / "probe.safetensors"))
    decoder = AutoModelForMaskedLM.from_pretrained(tiny_mlm).lm_head.decoder.weight
    assert weights["mlm.weight"].shape == decoder.shape
    assert not torch.equal(weights["mlm.weight"], decoder)  # it trained from there
    assert torch.allclose(weights["mlm.weight"], decoder, atol=0.1)

    refused = cli("train-probe", "--backbone", minilm, "--pretrained-lm-head")
    assert refused.exit_code == 2 and "no pretrained LM head" in refused.stderr


# ---------------------------------------------------------------- bad input


def test_a_template_without_a_slot_is_refused_naming_file_and_line(cli, base_probe, hand_lama):
    relations = hand_lama["trex"].parent / "relations.jsonl"
    write_jsonl(relations, [{"relation": "P19", "template": "[X] was born in [Y] ."},
                            {"relation": "P131", "template": "[X] is somewhere ."}])
    result = cli("probe", base_probe, "--trex", hand_lama["trex"])
    assert result.exit_code == 2
    assert f"{relations}, line 2" in result.stderr and "[Y]" in result.stderr
    assert not (cli.workdir / "probe-results").exists()


def test_a_fact_without_an_object_is_refused_naming_file_and_line(cli, base_probe, hand_lama):
    path = hand_lama["google"] / "place_of_death_test.jsonl"
    write_jsonl(path, [{"sub_label": "Anna", "obj_label": "city"}, {"sub_label": "Piotr"}])
    result = cli("probe", base_probe, "--google-re", hand_lama["google"])
    assert result.exit_code == 2
    assert f"{path}, line 2" in result.stderr and "obj_label" in result.stderr


def test_an_empty_corpus_is_refused_naming_the_file(cli, tiny_backbone, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n = Heading = \n\n")
    result = cli("train-probe", "--backbone", tiny_backbone, "--corpus", empty, *TRAIN)
    assert result.exit_code == 2
    assert str(empty) in result.stderr and "no text lines" in result.stderr
    assert not (cli.workdir / "probes").exists() or not any((cli.workdir / "probes").iterdir())


# ---------------------------------------------------------------- the demo's probe stages


def test_demo_probe_stages_run_and_the_demo_prints_the_probe_table(tmp_path, tiny_backbone, monkeypatch):
    """The demo pipeline's own probe stages (on the tiny backbone, fewer steps) and its table."""
    import yaml
    from typer.testing import CliRunner

    from kadapter_cli.cli import app
    from kadapter_cli.workflow import pipeline as lib

    repo = Path(__file__).resolve().parents[2]
    demo = yaml.safe_load((repo / "pipelines" / "demo.yaml").read_text())
    stages = [s for s in demo["stages"] if s["command"] in ("train-probe", "probe")]
    assert [s["name"] for s in stages] == ["train-probe-base", "train-probe-fac", "probe"]
    for s in stages:
        if s["command"] == "train-probe":
            s["options"].update({"max-steps": 2, "limit": 64})
    workdir = tmp_path / "w"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump({"vars": {**demo["vars"], "workdir": str(workdir), "backbone": str(tiny_backbone)},
                                    "stages": stages}))
    from kadapter_cli.artifacts.manifest import write_manifest
    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import BackboneShape

    fac = workdir / "adapters" / "fac"
    fac.mkdir(parents=True)
    config = AdapterConfig.for_backbone(BackboneShape("roberta", 64, 4, 4, str(tiny_backbone)), "fac", name="fac",
                                        backbone=str(tiny_backbone), adapter_width=64, num_heads=2, labels=["P17"])
    save_adapter(fac, KnowledgeAdapter(config), config)
    write_manifest(fac, "adapter")
    monkeypatch.setattr(lib, "DEMO_PIPELINE", path)
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    probe = json.loads(result.stdout)["probe"]
    assert probe["probes"] == ["base", "fac"] and set(probe["results"]) == {"base", "fac"}
    table = CliRunner().invoke(app, ["demo"])
    assert table.exit_code == 0, table.output
    assert "LAMA probe" in table.stdout
    assert "┃ metric ┃ base ┃ fac ┃" in table.stdout
