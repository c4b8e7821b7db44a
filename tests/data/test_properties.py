"""Property-based tests (hypothesis): random inputs never crash the readers, and every span the
code emits covers exactly the entity it stands for.

- T-REx: random documents (words, sentences, entities, triples, some of them misaligned) give
  examples whose `tokens[subj_start..subj_end]` spell the subject's surface form (and the same for
  the object), modulo spacing; arbitrary JSON gives a `ValueError` naming the field, nothing else.
- The streaming JSON array reader returns what `json.loads` does, whatever the chunk size, and a
  truncated file is `BadInput`.
- CoNLL-U: random trees round-trip; random damage is `BadInput` (or a skipped sentence).
- Task records: arbitrary JSON is `BadInput`, nothing else.
- Markers: the sub-tokens after the opening `@`/`#` are the entity's own, and truncation keeps the
  markers where the heads read them.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kadapter_cli.errors import BadInput

# derandomize: the suite explores the same examples on every run (no flaky CI, nothing written to
# .hypothesis/); run with a new seed by hand to explore further.
_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SETTINGS = settings(max_examples=120, **_COMMON)
FEW = settings(max_examples=60, **_COMMON)

# Words as third-party text has them: letters, digits, punctuation, accents, CJK, '@' and '#'.
WORD = st.text(st.sampled_from(list("abcXYZ019.,'-()@#éßü東京") + ["\u200b"]), min_size=1, max_size=6)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def squeeze(text: str) -> str:
    return "".join(text.split())


# ---------------------------------------------------------------- T-REx documents


@st.composite
def trex_documents(draw):
    """A T-REx document built from words, with entities (word-aligned or not) and triples over them.

    Each entity occurrence gets its own Q-id, so an example's labels say which boundaries it came from.
    """
    sentences = draw(st.lists(st.lists(WORD, min_size=1, max_size=7), min_size=1, max_size=4))
    text, words, sentence_bounds = "", [], []
    for s, sentence in enumerate(sentences):
        if s:
            text += draw(st.sampled_from([" ", "  ", "\n"]))
        first = len(text)
        for i, word in enumerate(sentence):
            if i:
                text += draw(st.sampled_from([" ", "", "  ", "\t"]))
            words.append([len(text), len(text) + len(word)])
            text += word
        sentence_bounds.append([first, len(text)])
    n = len(text)

    def boundaries():
        if draw(st.booleans()):  # a word-aligned span inside one sentence
            s = draw(st.integers(0, len(sentences) - 1))
            first_word = sum(len(x) for x in sentences[:s])
            i = draw(st.integers(0, len(sentences[s]) - 1))
            j = draw(st.integers(i, len(sentences[s]) - 1))
            return [words[first_word + i][0], words[first_word + j][1]]
        if draw(st.integers(0, 9)) == 0:
            return None  # T-REx has entities it could not place
        a = draw(st.integers(0, n))
        return [a, draw(st.integers(a, n))]

    entities = [(f"Q{k + 1}", boundaries()) for k in range(draw(st.integers(2, 6)))]
    triples = []
    for _ in range(draw(st.integers(0, 8))):
        (subj_q, subj_b), (obj_q, obj_b) = draw(st.sampled_from(entities)), draw(st.sampled_from(entities))
        triples.append({
            "sentence_id": draw(st.integers(0, len(sentences) - 1)),
            "subject": {"uri": f"http://www.wikidata.org/entity/{subj_q}", "boundaries": subj_b},
            "predicate": {"uri": "http://www.wikidata.org/prop/direct/" + draw(st.sampled_from(["P17", "P131", "X"])),
                          "boundaries": None},
            "object": {"uri": f"http://www.wikidata.org/entity/{obj_q}", "boundaries": obj_b},
        })
    doc = {"docid": "http://www.wikidata.org/entity/Q0", "text": text, "sentences_boundaries": sentence_bounds,
           "words_boundaries": words, "triples": triples}
    return doc, dict(entities)


@SETTINGS
@given(trex_documents())
def test_trex_example_spans_spell_the_entities(drawn):
    from kadapter_cli.data.trex import document_examples

    doc, entities = drawn
    result = document_examples(doc)
    text = doc["text"]
    assert len(result.examples) + sum(result.dropped.values()) == len(doc["triples"])
    for example in result.examples:
        tokens = example["tokens"]
        for role, label in (("subj", "subj_label"), ("obj", "obj_label")):
            start, end = entities[example[label]]
            words = tokens[example[f"{role}_start"]:example[f"{role}_end"] + 1]
            assert words, example
            assert squeeze("".join(words)) == squeeze(text[start:end])
        # The tokens are the words of one sentence, in order.
        assert squeeze("".join(tokens)) in squeeze(text)


@SETTINGS
@given(trex_documents(), st.data())
def test_trex_damaged_word_boundaries_are_refused_or_still_spell_the_entities(drawn, data):
    """Word boundaries from a broken aligner (overlapping, unordered, empty) never yield a span
    whose words differ from the entity: the document is refused, or its examples are still right."""
    from kadapter_cli.data.trex import document_examples

    doc, entities = drawn
    n = len(doc["text"])
    words = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)).map(sorted).map(list),
                               min_size=1, max_size=12))
    doc = {**doc, "words_boundaries": words + doc["words_boundaries"] if data.draw(st.booleans()) else words}
    try:
        result = document_examples(doc)
    except ValueError as e:
        assert "words_boundaries" in str(e)
        return
    for example in result.examples:
        for role, label in (("subj", "subj_label"), ("obj", "obj_label")):
            start, end = entities[example[label]]
            words_ = example["tokens"][example[f"{role}_start"]:example[f"{role}_end"] + 1]
            assert squeeze("".join(words_)) == squeeze(doc["text"][start:end])


@SETTINGS
@given(st.one_of(JSON, st.dictionaries(
    st.sampled_from(["docid", "text", "sentences_boundaries", "words_boundaries", "triples", "entities"]),
    JSON, max_size=6)))
def test_trex_arbitrary_json_is_a_value_error_never_a_crash(doc):
    from kadapter_cli.data.trex import document_examples

    try:
        document_examples(doc)
    except ValueError:
        pass


# ---------------------------------------------------------------- the streaming JSON array reader


@SETTINGS
@given(st.lists(JSON, max_size=6), st.integers(1, 40), st.sampled_from([None, 1]))
def test_json_array_stream_equals_json_loads_at_any_chunk_size(tmp_path_factory, values, chunk, indent):
    from kadapter_cli.data.trex import iter_json_array

    path = tmp_path_factory.mktemp("stream") / "dump.json"
    path.write_text(json.dumps(values, indent=indent, ensure_ascii=False), encoding="utf-8")
    assert [v for _, v in iter_json_array(path, chunk_chars=chunk)] == json.loads(path.read_text(encoding="utf-8"))


@SETTINGS
@given(st.lists(JSON, min_size=1, max_size=5), st.integers(1, 40), st.data())
def test_json_array_stream_truncated_anywhere_is_bad_input(tmp_path_factory, values, chunk, data):
    from kadapter_cli.data.trex import iter_json_array

    text = json.dumps(values, ensure_ascii=False)
    cut = data.draw(st.integers(0, len(text) - 1))
    path = tmp_path_factory.mktemp("stream") / "dump.json"
    path.write_text(text[:cut], encoding="utf-8")
    with pytest.raises(BadInput) as error:
        list(iter_json_array(path, chunk_chars=chunk))
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- CoNLL-U


@st.composite
def conllu_trees(draw):
    n = draw(st.integers(1, 8))
    words = [draw(WORD.filter(lambda w: "\u200b" not in w)) for _ in range(n)]
    root = draw(st.integers(1, n))
    heads = [0 if i + 1 == root else draw(st.integers(1, n).filter(lambda h, i=i: h != i + 1)) for i in range(n)]
    return words, heads


def conllu_text(trees, sent_ids: bool) -> str:
    blocks = []
    for k, (words, heads) in enumerate(trees):
        lines = [f"# sent_id = s{k}"] if sent_ids else []
        lines += [f"{i + 1}\t{w}\t_\tX\t_\t_\t{h}\tdep\t_\t_" for i, (w, h) in enumerate(zip(words, heads))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@SETTINGS
@given(st.lists(conllu_trees(), min_size=1, max_size=4), st.booleans())
def test_conllu_trees_round_trip(tmp_path_factory, trees, sent_ids):
    from kadapter_cli.data.parsing import read_conllu, sentence_record

    path = tmp_path_factory.mktemp("conllu") / "trees.conllu"
    path.write_text(conllu_text(trees, sent_ids), encoding="utf-8")
    read = list(read_conllu(path))
    assert [(s.words, s.heads) for _, s in read] == [(w, h) for w, h in trees]
    assert len({record_id for record_id, _ in read}) == len(trees)
    for record_id, sentence in read:
        record = sentence_record(record_id, sentence)
        assert all(0 <= h <= len(record["tokens"]) for h in record["heads"])


@SETTINGS
@given(st.lists(conllu_trees(), min_size=1, max_size=3), st.data())
def test_conllu_damage_is_bad_input_or_skipped(tmp_path_factory, trees, data):
    from collections import Counter

    from kadapter_cli.data.parsing import read_conllu

    lines = conllu_text(trees, sent_ids=True).split("\n")
    k = data.draw(st.integers(0, len(lines) - 1))
    damage = data.draw(st.sampled_from(["drop_column", "garbage", "head", "duplicate", "delete"]))
    if damage == "drop_column":
        lines[k] = "\t".join(lines[k].split("\t")[:-1])
    elif damage == "garbage":
        lines[k] = data.draw(st.text(max_size=30))
    elif damage == "head" and "\t" in lines[k]:
        columns = lines[k].split("\t")
        columns[6] = data.draw(st.sampled_from(["-1", "99", "x", "", "1.5"]))
        lines[k] = "\t".join(columns)
    elif damage == "duplicate":
        lines.insert(k, lines[k])
    else:
        del lines[k]
    path = tmp_path_factory.mktemp("conllu") / "damaged.conllu"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        sentences = list(read_conllu(path))
    except BadInput as e:
        assert str(e).startswith(f"{path}, line ")
    else:
        for _, sentence in sentences:
            assert all(0 <= h <= len(sentence.words) for h in sentence.heads)
    dropped: Counter = Counter()
    kept = list(read_conllu(path, skip_bad=True, dropped=dropped))
    assert len(kept) + sum(dropped.values()) >= 1
    for _, sentence in kept:
        assert len(sentence.heads) == len(sentence.words)
        assert all(0 <= h <= len(sentence.words) for h in sentence.heads)


# ---------------------------------------------------------------- task records


@SETTINGS
@given(JSON | st.fixed_dictionaries({}, optional={
    "sent": JSON | st.text(max_size=10), "start": JSON | st.integers(-3, 12), "end": JSON | st.integers(-3, 12),
    "labels": JSON, "token": JSON | st.lists(WORD, max_size=5), "subj_start": JSON | st.integers(-1, 6),
    "subj_end": st.integers(-1, 6), "obj_start": st.integers(-1, 6), "obj_end": st.integers(-1, 6),
    "relation": JSON}))
def test_task_records_are_normalized_or_bad_input(raw):
    from kadapter_cli.tasks import get_task

    for name in ("openentity", "tacred"):
        task = get_task(name)
        try:
            record = task.normalize(raw, "data.json", 3, labeled=True)
        except BadInput as e:
            assert str(e).startswith("data.json, record 3 (counted from 0): ")
            continue
        if task.head == "typing":
            assert 0 <= record["start"] < record["end"] <= len(record["sent"])
        else:
            n = len(record["tokens"])
            assert 0 <= record["subj_start"] <= record["subj_end"] < n and 0 <= record["obj_start"] <= record["obj_end"] < n


# ---------------------------------------------------------------- markers and sub-tokens


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    from kadapter_cli.modeling.backbone import load_tokenizer

    return load_tokenizer(str(tiny_backbone))


@st.composite
def relation_inputs(draw):
    # Two disjoint inclusive spans in either order, drawn directly (filtering overlapping draws
    # discards most of them, and Hypothesis' health check then fails the test for some seeds).
    tokens = draw(st.lists(WORD, min_size=2, max_size=12))
    n = len(tokens)
    first = sorted(draw(st.lists(st.integers(0, n - 2), min_size=2, max_size=2)))
    start = draw(st.integers(first[1] + 1, n - 1))
    second = [start, draw(st.integers(start, n - 1))]
    a, b = (first, second) if draw(st.booleans()) else (second, first)
    return tokens, tuple(a), tuple(b)


@FEW
@given(relation_inputs(), st.booleans())
def test_relation_markers_wrap_exactly_the_entity_sub_tokens(tokenizer, drawn, swap):
    from kadapter_cli.data.encoding import encode_relation, word_pieces

    tokens, subj, obj = drawn
    if swap:
        subj, obj = obj, subj
    encoded = encode_relation(tokenizer, tokens, subj, obj, max_length=512)
    ids = encoded["input_ids"]
    (at,), (hash_,) = word_pieces(tokenizer, ["@"]), word_pieces(tokenizer, ["#"])
    for position, span, marker in ((encoded["subj_pos"], subj, at), (encoded["obj_pos"], obj, hash_)):
        inner = [p for pieces in word_pieces(tokenizer, tokens[span[0]:span[1] + 1]) for p in pieces]
        assert ids[position:position + len(marker)] == marker
        after = position + len(marker)
        assert ids[after:after + len(inner)] == inner
        assert ids[after + len(inner):after + len(inner) + len(marker)] == marker


@FEW
@given(relation_inputs(), st.integers(3, 24))
def test_relation_truncation_keeps_the_markers_the_heads_read(tokenizer, drawn, max_length):
    from kadapter_cli.data.encoding import encode_relation, word_pieces

    tokens, subj, obj = drawn
    try:
        encoded = encode_relation(tokenizer, tokens, subj, obj, max_length=max_length)
    except ValueError as e:
        assert "max_length" in str(e)
        return
    ids = encoded["input_ids"]
    assert len(ids) <= max_length
    assert ids[encoded["subj_pos"]] == word_pieces(tokenizer, ["@"])[0][0]
    assert ids[encoded["obj_pos"]] == word_pieces(tokenizer, ["#"])[0][0]


@st.composite
def typing_inputs(draw):
    sent = draw(st.lists(WORD, min_size=1, max_size=10).map(" ".join))
    start = draw(st.integers(0, len(sent) - 1))
    end = draw(st.integers(start + 1, len(sent)))
    assume(sent[start:end].strip())
    return sent, start, end


@FEW
@given(typing_inputs())
def test_typing_marker_wraps_exactly_the_mention(tokenizer, drawn):
    from kadapter_cli.data.encoding import encode_typing, word_pieces

    sent, start, end = drawn
    encoded = encode_typing(tokenizer, sent, start, end, max_length=512)
    ids = encoded["input_ids"]
    (at,) = word_pieces(tokenizer, ["@"])
    inner = [p for pieces in word_pieces(tokenizer, sent[start:end].split()) for p in pieces]
    position = encoded["mention_pos"]
    assert ids[position:position + len(at)] == at
    assert ids[position + len(at):position + len(at) + len(inner)] == inner
    assert ids[position + len(at) + len(inner):position + 2 * len(at) + len(inner)] == at
