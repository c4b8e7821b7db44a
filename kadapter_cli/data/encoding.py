"""Words, entity markers and text segments → sub-token ids, marker positions and word alignment.

Every encoder here works on *words* and lets the tokenizer split each word on its own
(`tokenizer(words, is_split_into_words=True)` + `word_ids()`), so the same code serves RoBERTa's
byte-level BPE (loaded with `add_prefix_space=True`: every word, markers included, gets the same
leading-space form — the original mixed "@" and "Ġ@"; docs/differences.md) and BERT WordPiece.
Because each word is tokenized independently, dropping context words never changes the pieces of
the words that remain, which is what lets truncation work at word level.

Entity markers are separate words: `@ subject @` / `# object #` for relations, `@ mention @` for
typing, as the original code does. Their positions are tracked while the sequence is built, never searched
for, so an "@" that occurs in the text itself cannot be mistaken for a marker. How a marker becomes
ids is its *marker style*, which an adapter records (`AdapterConfig.marker_style`) and a model's
encoding follows:

- `spaced` (kadapter's): a marker is encoded like any word, with its leading space ("Ġ@");
- `original` (microsoft/K-Adapter's): relation markers are the bare vocabulary
  tokens "@" / "#" (no leading space), as the released fac adapter learned them; the typing "@"
  keeps its leading space, as the original's `tokenize("@")` gave it.

Truncation never drops an example (the original silently skipped long ones; docs/differences.md):
context words are trimmed from both ends around the entities; if even the entities do not fit,
sub-tokens inside them are dropped, keeping every opening marker (the positions the heads read).

Segments (a sentence pair, context + question + answer) are joined with the tokenizer's own pair
template (`pair_template`: `<s> A </s></s> B </s>` for RoBERTa, `[CLS] A [SEP] B [SEP]` for BERT)
and truncated longest first (`encode_segments`).
"""

from __future__ import annotations

import json
import weakref
from typing import Any, Sequence

IGNORE_INDEX = -100  # target of positions that carry no label (torch CrossEntropyLoss's default ignore_index)
SUBJECT_MARKER = "@"
OBJECT_MARKER = "#"
MENTION_MARKER = "@"
SPACED_MARKERS = "spaced"
ORIGINAL_MARKERS = "original"
MARKER_STYLES = (SPACED_MARKERS, ORIGINAL_MARKERS)

Span = tuple[int, int]

_special_cache: "weakref.WeakKeyDictionary[Any, tuple[list[int], list[int]]]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------- tokenizer plumbing


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (`<s>`/`</s>`, `[CLS]`/`[SEP]`)."""
    try:
        return _special_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    _check_prefix_space(tokenizer)
    enc = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True, verbose=False)
    word_ids = _word_ids(enc)
    ids = list(enc["input_ids"])
    first = word_ids.index(0)
    last = len(word_ids) - 1 - word_ids[::-1].index(0)
    result = (ids[:first], ids[last + 1:])
    try:
        _special_cache[tokenizer] = result
    except TypeError:  # a tokenizer that cannot be weakly referenced is simply not cached
        pass
    return result


def _check_prefix_space(tokenizer) -> None:
    """Byte-level BPE must add the leading space to every word: without it each word is encoded in
    its sentence-initial form, unlike anything the backbone saw in pre-training."""
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre_tokenizer is None:
        return
    state = json.loads(pre_tokenizer.__getstate__())
    for step in state.get("pretokenizers", [state]):
        if step.get("type") == "ByteLevel" and not step.get("add_prefix_space"):
            raise ValueError(
                "byte-level BPE tokenizers must be loaded with add_prefix_space=True "
                "(kadapter_cli.modeling.backbone.load_tokenizer does this)")


def _word_ids(enc) -> list[int | None]:
    try:
        return enc.word_ids()
    except ValueError:
        raise ValueError("encoding needs a fast tokenizer (one that reports word_ids())") from None


def word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """The sub-token ids of each word, tokenized as a pre-split sequence (no special tokens).

    A word the tokenizer turns into nothing (an empty string; a zero-width character under
    WordPiece) becomes the unknown token, so that every word owns at least one position: the
    markers, the mention and the dependency targets all point at "the first sub-token of a word".
    """
    words = list(words)
    if not words:
        return []
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token_id, w in zip(enc["input_ids"], _word_ids(enc)):
        if w is not None:
            pieces[w].append(int(token_id))
    empty = [i for i, p in enumerate(pieces) if not p]
    if empty:
        if tokenizer.unk_token_id is None:
            raise ValueError(f"word {empty[0]} ({words[empty[0]]!r}) has no sub-tokens "
                             "and the tokenizer has no unknown token")
        for i in empty:
            pieces[i].append(int(tokenizer.unk_token_id))
    return pieces


def check_marker_style(style: str) -> None:
    if style not in MARKER_STYLES:
        raise ValueError(f"marker style must be one of {', '.join(MARKER_STYLES)}, got {style!r}")


def bare_token_ids(tokenizer, marker: str) -> list[int]:
    """The vocabulary id of `marker` itself, without the leading space a word gets ("@", not "Ġ@")."""
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no bare {marker!r} token for the original marker style")
    return [int(token_id)]


def _budget(tokenizer, max_length: int) -> tuple[list[int], list[int], int]:
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room next to the "
                         f"{len(prefix) + len(suffix)} special tokens")
    return prefix, suffix, budget


# ---------------------------------------------------------------- marked sequences (relations, typing)


def _marked_words(
    tokens: Sequence[str], spans: Sequence[tuple[Span, str]]
) -> tuple[list[str], list[int], list[int]]:
    """Inserts the markers; returns (words, opening-marker indices, closing-marker indices), in span order."""
    opening: dict[int, int] = {}
    closing: dict[int, int] = {}
    words: list[str] = []
    starts = {span[0]: k for k, (span, _) in enumerate(spans)}
    ends = {span[1]: k for k, (span, _) in enumerate(spans)}
    for i, token in enumerate(tokens):
        if i in starts:
            k = starts[i]
            opening[k] = len(words)
            words.append(spans[k][1])
        words.append(token)
        if i in ends:
            k = ends[i]
            closing[k] = len(words)
            words.append(spans[k][1])
    return words, [opening[k] for k in range(len(spans))], [closing[k] for k in range(len(spans))]


def _fit_marked(
    pieces: list[list[int]], opening: list[int], closing: list[int], budget: int
) -> tuple[list[int], list[int]]:
    """Chooses what to keep of a marked sequence within `budget` sub-tokens.

    Returns (kept ids, position of each opening marker's first sub-token within the kept ids).
    """
    first, last = min(opening), max(closing)
    core = sum(len(p) for p in pieces[first:last + 1])
    if core <= budget:
        lo, hi = _window(pieces, first, last, budget - core)
        kept_units = [(u, k) for u in range(lo, hi + 1) for k in range(len(pieces[u]))]
    else:
        kept_units = _squeeze_core(pieces, opening, closing, budget)
    ids, positions = [], {}
    for u, k in kept_units:
        if k == 0 and u in opening:
            positions[u] = len(ids)
        ids.append(pieces[u][k])
    return ids, [positions[u] for u in opening]


def _window(pieces: list[list[int]], lo: int, hi: int, room: int) -> tuple[int, int]:
    """Grows the word window [lo, hi] one word at a time, alternating sides, while it fits in `room`.

    Whole words only: a word that does not fit closes its side (the window stays contiguous).
    """
    grow_left, grow_right, left_turn = lo > 0, hi < len(pieces) - 1, True
    while grow_left or grow_right:
        if left_turn and grow_left:
            if len(pieces[lo - 1]) <= room:
                lo -= 1
                room -= len(pieces[lo])
                grow_left = lo > 0
            else:
                grow_left = False
        elif not left_turn and grow_right:
            if len(pieces[hi + 1]) <= room:
                hi += 1
                room -= len(pieces[hi])
                grow_right = hi < len(pieces) - 1
            else:
                grow_right = False
        left_turn = not left_turn
    return lo, hi


def _squeeze_core(
    pieces: list[list[int]], opening: list[int], closing: list[int], budget: int
) -> list[tuple[int, int]]:
    """The entities alone exceed the budget: keep sub-tokens of the entity region by priority.

    Priority: every opening marker; then each entity's sub-tokens by their distance from its
    opening marker (so each entity keeps its head words, shared evenly); then the words between
    the entities, earliest first. The kept sub-tokens stay in their original order.
    """
    first, last = min(opening), max(closing)
    needed = sum(len(pieces[u]) for u in opening)
    if needed > budget:
        raise ValueError(f"the opening markers alone need {needed} sub-tokens; max_length leaves {budget}")
    entity_of = {}
    for open_u, close_u in zip(opening, closing):
        for u in range(open_u + 1, close_u + 1):
            entity_of[u] = open_u
    ranked = []
    position = 0
    distance_from_anchor: dict[int, int] = {}
    for u in range(first, last + 1):
        for k in range(len(pieces[u])):
            if u in opening:
                rank: tuple[int, int] = (0, 0)
            elif u in entity_of:
                anchor = entity_of[u]
                distance_from_anchor[anchor] = distance_from_anchor.get(anchor, 0) + 1
                rank = (1, distance_from_anchor[anchor])
            else:
                rank = (2, position)
            ranked.append((rank, position, (u, k)))
            position += 1
    chosen = sorted(ranked)[:budget]
    return [unit for _, _, unit in sorted(chosen, key=lambda r: r[1])]


def _check_span(name: str, span: Span, n_tokens: int) -> None:
    start, end = span
    if not (0 <= start <= end < n_tokens):
        raise ValueError(f"{name} span ({start}, {end}) is not inside the {n_tokens} tokens (inclusive, start <= end)")


def encode_relation(
    tokenizer, tokens: Sequence[str], subj: Span, obj: Span, max_length: int, marker_style: str = SPACED_MARKERS
) -> dict[str, Any]:
    """Encodes a sentence with a marked subject (`@ … @`) and object (`# … #`).

    `subj` and `obj` are inclusive word spans into `tokens` (the TACRED / T-REx convention) and
    must not overlap (`ValueError` otherwise; callers turn it into `BadInput`). Returns
    `{"input_ids", "subj_pos", "obj_pos"}`: the positions of the opening "@" and "#", counting the
    leading special token. At most `max_length` ids, special tokens included. `marker_style`: see
    the module docstring (`original` = bare "@" / "#" ids).
    """
    check_marker_style(marker_style)
    n = len(tokens)
    _check_span("subject", subj, n)
    _check_span("object", obj, n)
    if subj[0] <= obj[1] and obj[0] <= subj[1]:
        raise ValueError(f"subject span {tuple(subj)} and object span {tuple(obj)} overlap")
    prefix, suffix, budget = _budget(tokenizer, max_length)
    spans = [(tuple(subj), SUBJECT_MARKER), (tuple(obj), OBJECT_MARKER)]
    words, opening, closing = _marked_words(tokens, spans)
    pieces = word_pieces(tokenizer, words)
    if marker_style == ORIGINAL_MARKERS:
        for i in opening + closing:
            pieces[i] = bare_token_ids(tokenizer, words[i])
    ids, (subj_pos, obj_pos) = _fit_marked(pieces, opening, closing, budget)
    return {
        "input_ids": prefix + ids + suffix,
        "subj_pos": len(prefix) + subj_pos,
        "obj_pos": len(prefix) + obj_pos,
    }


def encode_typing(tokenizer, sent: str, start: int, end: int, max_length: int,
                  marker_style: str = SPACED_MARKERS) -> dict[str, Any]:
    """Encodes a sentence with the mention `sent[start:end]` wrapped in `@ … @`.

    `start`/`end` are character offsets, end exclusive (the ERNIE / K-Adapter format). Words are
    the whitespace split of the left context, "@", the mention's words, "@", the right context.
    Returns `{"input_ids", "mention_pos"}` (position of the opening "@"). Both marker styles give
    the spaced "@" here: the original's typing scripts tokenized it as a word too.
    """
    check_marker_style(marker_style)
    if not (0 <= start < end <= len(sent)):
        raise ValueError(f"mention offsets [{start}, {end}) are not inside the sentence of {len(sent)} characters")
    mention = sent[start:end].split()
    if not mention:
        raise ValueError(f"mention [{start}, {end}) is blank")
    left = sent[:start].split()
    span = (len(left), len(left) + len(mention) - 1)
    words, opening, closing = _marked_words(left + mention + sent[end:].split(), [(span, MENTION_MARKER)])
    prefix, suffix, budget = _budget(tokenizer, max_length)
    ids, (mention_pos,) = _fit_marked(word_pieces(tokenizer, words), opening, closing, budget)
    return {"input_ids": prefix + ids + suffix, "mention_pos": len(prefix) + mention_pos}


# ---------------------------------------------------------------- segments (sentence pairs, question + answers)

SEGMENT_SEPARATORS = ("pair", "single")


def pair_template(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """The ids the tokenizer puts before, between and after the two sequences of a pair:
    `<s>`, `</s></s>`, `</s>` for RoBERTa; `[CLS]`, `[SEP]`, `[SEP]` for BERT."""
    _check_prefix_space(tokenizer)
    enc = tokenizer(["a"], ["b"], is_split_into_words=True, add_special_tokens=True, verbose=False)
    try:
        sequence_ids = enc.sequence_ids()
    except ValueError:
        raise ValueError("encoding needs a fast tokenizer (one that reports sequence_ids())") from None
    ids = list(enc["input_ids"])
    first = [i for i, s in enumerate(sequence_ids) if s == 0]
    second = [i for i, s in enumerate(sequence_ids) if s == 1]
    return ids[: first[0]], ids[first[-1] + 1: second[0]], ids[second[-1] + 1:]


def truncate_longest_first(lengths: Sequence[int], budget: int) -> list[int]:
    """How many leading tokens of each segment to keep so that they sum to at most `budget`.

    Longest first, as Hugging Face's `truncation="longest_first"`: tokens are removed one at a time
    from the end of the currently longest segment; between equally long segments the later one
    loses first. Computed in closed form (a cap on every length), not token by token.
    """
    lengths = list(lengths)
    if budget < 0:
        raise ValueError(f"no room for the segments (budget {budget})")
    if sum(lengths) <= budget:
        return lengths
    lo, hi = 0, max(lengths)  # binary search for the largest cap with sum(min(n, cap)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    cap = lo
    kept = [min(n, cap) for n in lengths]
    room = budget - sum(kept)
    for i, n in enumerate(lengths):  # one more token for the earliest segments that were capped
        if room and n > cap:
            kept[i] += 1
            room -= 1
    return kept


def encode_segments(tokenizer, segments: Sequence[Sequence[int]], max_length: int,
                    separator: str = "pair", template: tuple[list[int], list[int], list[int]] | None = None
                    ) -> dict[str, Any]:
    """Joins sub-token id segments with the tokenizer's own special tokens, truncating longest first.

    `separator="pair"` puts the tokenizer's pair separator between segments (RoBERTa
    `<s> A </s></s> B </s></s> C </s>`, BERT `[CLS] A [SEP] B [SEP] C [SEP]`); `"single"` puts one
    `sep_token` (RoBERTa `<s> A </s> B </s> C </s>`, the original K-Adapter CosmosQA layout). At most
    `max_length` ids. Returns `{"input_ids", "segment_starts", "segment_lengths"}`: where each
    segment's kept tokens start in `input_ids` and how many were kept. `template` is
    `pair_template(tokenizer)`, read once by callers that encode many sequences.
    """
    if separator not in SEGMENT_SEPARATORS:
        raise ValueError(f"separator must be one of {', '.join(SEGMENT_SEPARATORS)}, got {separator!r}")
    prefix, middle, suffix = template or pair_template(tokenizer)
    if separator == "single":
        if tokenizer.sep_token_id is None:
            raise ValueError("the tokenizer has no sep_token for the single-separator layout")
        middle = [int(tokenizer.sep_token_id)]
    specials = len(prefix) + len(suffix) + len(middle) * (len(segments) - 1)
    budget = max_length - specials
    if budget < 0:
        raise ValueError(f"max_length {max_length} leaves no room next to the {specials} special tokens")
    kept = truncate_longest_first([len(s) for s in segments], budget)
    ids, starts = list(prefix), []
    for i, (segment, n) in enumerate(zip(segments, kept)):
        if i:
            ids += middle
        starts.append(len(ids))
        ids += list(segment[:n])
    ids += suffix
    return {"input_ids": ids, "segment_starts": starts, "segment_lengths": kept}


def text_pieces(tokenizer, text: str) -> list[int]:
    """The sub-token ids of a whitespace-separated text (each word tokenized as in `word_pieces`)."""
    return [token for pieces in word_pieces(tokenizer, text.split()) for token in pieces]


# ---------------------------------------------------------------- dependency heads (lin adapter)


def encode_dependency(
    tokenizer, tokens: Sequence[str], heads: Sequence[int], max_length: int
) -> dict[str, Any]:
    """Encodes a parsed sentence with per-sub-token head targets (the lin adapter's pretraining task).

    `heads[i]` is the 1-based index of word i's head, 0 for the root (the `parsed/` format). Words
    are kept from the start while they fit whole. Returns:

    - `input_ids`
    - `word_starts[i]`: position of the first sub-token of word i (kept words only)
    - `head_targets`: one entry per position of `input_ids`; at `word_starts[i]` the position of
      the first sub-token of word i's head (the root points at position 0, the `<s>`/`[CLS]`
      slot), everywhere else `IGNORE_INDEX`, as it is for a word whose head was truncated away.

    Targets are sub-token positions, so word and sub-token indices cannot be confused (the
    original trained position j on word j's head; docs/differences.md).
    """
    n = len(tokens)
    if len(heads) != n:
        raise ValueError(f"{len(heads)} heads for {n} tokens")
    for i, h in enumerate(heads):
        if not 0 <= h <= n:
            raise ValueError(f"head {h} of word {i + 1} is outside 0..{n}")
        if h == i + 1:
            raise ValueError(f"word {i + 1} is its own head")
    prefix, suffix, budget = _budget(tokenizer, max_length)
    if not prefix:
        raise ValueError("the tokenizer adds no leading special token, so the root has no position to point at")
    ids: list[int] = []
    word_starts: list[int] = []
    for pieces in word_pieces(tokenizer, tokens):
        if len(ids) + len(pieces) > budget:
            break
        word_starts.append(len(prefix) + len(ids))
        ids.extend(pieces)
    input_ids = prefix + ids + suffix
    head_targets = [IGNORE_INDEX] * len(input_ids)
    for i, position in enumerate(word_starts):
        h = heads[i]
        if h == 0:
            head_targets[position] = 0
        elif h <= len(word_starts):
            head_targets[position] = word_starts[h - 1]
    return {"input_ids": input_ids, "word_starts": word_starts, "head_targets": head_targets}
