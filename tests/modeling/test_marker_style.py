"""Entity-marker style: an adapter records how its pretraining encoded "@" / "#" (kadapter's spaced
words, or the original's bare ids), a model's encoding follows its adapters,
and adapters of different styles do not compose."""

from __future__ import annotations

import json

import pytest

from kadapter_cli.data.encoding import encode_relation, encode_typing, word_pieces
from kadapter_cli.modeling.adapter import load_config
from kadapter_cli.modeling.backbone import load_tokenizer

TOKENS = ["Anna", "lives", "in", "Paris", "."]
SHORT = ["--max-steps", "2", "--limit", "24", "--batch-size", "8", "--max-length", "48", "--eval-every", "2"]


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return load_tokenizer(tiny_backbone)


def test_original_style_relation_markers_are_the_bare_vocabulary_ids(tokenizer):
    spaced = encode_relation(tokenizer, TOKENS, (0, 0), (3, 3), 32)
    original = encode_relation(tokenizer, TOKENS, (0, 0), (3, 3), 32, marker_style="original")
    bare = {m: tokenizer.convert_tokens_to_ids(m) for m in "@#"}
    as_word = {m: word_pieces(tokenizer, [m])[0] for m in "@#"}  # "Ġ@" (or "Ġ" + "@" in a small vocab)
    assert all(as_word[m] != [bare[m]] for m in "@#")
    assert original["input_ids"][original["subj_pos"]] == bare["@"]
    assert original["input_ids"][original["obj_pos"]] == bare["#"]
    assert spaced["input_ids"][spaced["subj_pos"]] == as_word["@"][0]
    # the words are the same; only the four markers' ids differ
    words = word_pieces(tokenizer, TOKENS)
    prefix, suffix = [tokenizer.bos_token_id], [tokenizer.eos_token_id]

    def sequence(marker):
        return prefix + marker["@"] + words[0] + marker["@"] + sum(words[1:3], []) + marker["#"] + words[3] + \
            marker["#"] + words[4] + suffix

    assert spaced["input_ids"] == sequence(as_word)
    assert original["input_ids"] == sequence({m: [bare[m]] for m in "@#"})


def test_typing_keeps_the_spaced_at_in_both_styles(tokenizer):
    # The original typing scripts tokenized "@" as a word: its leading-space form.
    sent = "Anna lives in Paris ."
    assert encode_typing(tokenizer, sent, 14, 19, 32) == encode_typing(tokenizer, sent, 14, 19, 32, "original")
    with pytest.raises(ValueError, match="marker style"):
        encode_typing(tokenizer, sent, 14, 19, 32, "bare")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_backbone, shared_data):
    """Two tiny fac adapters trained with `train-adapter`, one per marker style, and a lin one."""
    from typer.testing import CliRunner

    from kadapter_cli.cli import app

    workdir = tmp_path_factory.mktemp("styles") / "work"

    def cli(*args):
        return CliRunner().invoke(app, ["--workdir", str(workdir), *map(str, args)], catch_exceptions=False)

    for args in (("prepare-trex", shared_data / "trex", "--min-count", "1"),
                 ("parse", "--parser", "conllu", shared_data / "ud-english-ewt" / "en_ewt-ud-dev.first1006.conllu",
                  "--limit", "40"),
                 ("train-adapter", "--kind", "fac", "--backbone", tiny_backbone, *SHORT),
                 ("train-adapter", "--kind", "fac", "--name", "fac-original", "--marker-style", "original",
                  "--backbone", tiny_backbone, *SHORT),
                 ("train-adapter", "--kind", "lin", "--backbone", tiny_backbone, *SHORT)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    return cli, workdir


def test_train_adapter_records_the_marker_style(adapters):
    _, workdir = adapters
    assert load_config(workdir / "adapters" / "fac").marker_style == "spaced"
    assert load_config(workdir / "adapters" / "fac-original").marker_style == "original"
    assert load_config(workdir / "adapters" / "lin").marker_style is None  # reads no markers


def test_adapters_of_different_styles_are_refused_by_compose_and_finetune(adapters, shared_data):
    cli, workdir = adapters
    result = cli("compose", "fac", "fac-original")
    assert result.exit_code == 2
    assert "different entity-marker styles" in result.stderr and "fac-original" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "compositions" / "fac+fac-original").exists()
    result = cli("finetune", "--task", "tacred", "--adapters", "fac,fac-original",
                 "--data", shared_data / "tacred" / "gcn-over-pruned-trees-sample", *SHORT)
    assert result.exit_code == 2 and "different entity-marker styles" in result.stderr
    # a lin adapter has no style: it composes with either
    assert cli("compose", "fac-original", "lin").exit_code == 0
    assert json.loads((workdir / "compositions" / "fac-original+lin" / "composition.json").read_text())[
        "marker_style"] == "original"


def test_an_adapter_written_before_the_field_existed_reads_as_spaced(adapters, tmp_path):
    cli, workdir = adapters
    old = tmp_path / "old-fac"
    old.mkdir()
    for f in (workdir / "adapters" / "fac").iterdir():
        if f.is_file():
            (old / f.name).write_bytes(f.read_bytes())
    config = json.loads((old / "kadapter_adapter.json").read_text())
    del config["marker_style"]
    (old / "kadapter_adapter.json").write_text(json.dumps(config))
    assert load_config(old).marker_style == "spaced"
    assert cli("compose", old, "fac-original").exit_code == 2


def test_finetuning_encodes_with_the_adapters_style_and_evaluate_and_predict_follow_it(adapters, shared_data):
    from kadapter_cli.stages.finetune import load_finetuned

    cli, workdir = adapters
    data = shared_data / "tacred" / "gcn-over-pruned-trees-sample"
    result = cli("finetune", "--task", "tacred", "--adapters", "fac-original", "--data", data, *SHORT)
    assert result.exit_code == 0, result.output
    run = workdir / "finetuned" / "tacred-fac-original"
    assert json.loads((run / "config.json").read_text())["marker_style"] == "original"
    _, tokenizer, task, labels, config = load_finetuned(run)
    assert config["marker_style"] == "original"
    record = task.read(data / "dev.json")[0]
    index = {label: i for i, label in enumerate(labels)}
    encoded = task.encode(tokenizer, record, index, config["max_length"], config["marker_style"])
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][encoded["subj_pos"]]) == "@"
    # evaluate re-encodes the dev split the same way: the same predictions as fine-tuning wrote
    result = cli("evaluate", run, "--data", data, "--split", "dev", "--out", workdir / "eval-original")
    assert result.exit_code == 0, result.output
    finetuned = (run / "predictions-dev.jsonl").read_text().splitlines()
    assert (workdir / "eval-original" / "predictions-dev.jsonl").read_text().splitlines() == finetuned
    # and so does predict, on new records in the task's format
    source = workdir / "new.json"
    source.write_text(json.dumps(json.loads((data / "dev.json").read_text())[:3]))
    result = cli("predict", run, source)
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["pred"] for x in result.stdout.splitlines()] == \
           [json.loads(x)["pred"] for x in finetuned[:3]]
