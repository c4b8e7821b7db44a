"""Extractive QA encoding: distant-supervision labels and question + paragraph windows.

- Labels are distant (`answer_char_spans`): every occurrence of a gold answer in a paragraph,
  matched after the SQuAD normalisation (lower-case, punctuation and a/an/the dropped, whitespace
  collapsed), so `"(Lou) Gehrig"` is found in "Lou Gehrig played", and `"the \\"Mystery Train\\""`
  in "mystery train". Matching runs on the paragraph's normalised words, each of which remembers
  its characters in the original text, so a match maps back to an exact character span.
- A window is the tokenizer's pair layout around the question and a slice of the paragraph's
  sub-tokens (`<s> question </s></s> paragraph </s>` for RoBERTa, `[CLS] q [SEP] p [SEP]` for
  BERT; the layout is read from the tokenizer, not hard-coded). The question keeps at most half
  of `max_length`; a paragraph longer than the room left is cut into windows that overlap by
  `stride` sub-tokens (at most half the room). Character spans become sub-token start/end
  positions through the tokenizer's offsets; a span counts in a window only when it lies wholly
  inside it.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from kadapter_cli.data.encoding import pair_template
from kadapter_cli.tasks.metrics import SQUAD_ARTICLES, SQUAD_PUNCTUATION, squad_normalize

_WORD = re.compile(r"\S+")


# ---------------------------------------------------------------- distant supervision


def normalized_words(text: str) -> list[tuple[str, int, int]]:
    """`(word, start, end)` of the SQuAD-normalised words of `text`, each with the character span
    (end exclusive) of its original word less leading and trailing punctuation. Joined with spaces,
    the words are exactly `squad_normalize(text)`: whitespace splits the same way before and after
    normalising, so normalising word by word is normalising the whole."""
    words = []
    for match in _WORD.finditer(text):
        raw = match.group()
        kept = [i for i, ch in enumerate(raw) if ch.lower() not in SQUAD_PUNCTUATION]
        if not kept:
            continue
        start, end = match.start() + kept[0], match.start() + kept[-1] + 1
        lowered = "".join(ch for ch in raw.lower() if ch not in SQUAD_PUNCTUATION)
        for piece in SQUAD_ARTICLES.sub(" ", lowered).split():
            words.append((piece, start, end))
    return words


def answer_char_spans(paragraph: str, answers: Sequence[str]) -> list[tuple[int, int]]:
    """Every occurrence of every answer in the paragraph, as sorted distinct character spans (end
    exclusive), matched on normalised words. An answer that normalises to nothing matches nothing."""
    words = normalized_words(paragraph)
    tokens = [w for w, _, _ in words]
    spans = set()
    for answer in answers:
        target = squad_normalize(answer).split()
        n = len(target)
        if not n:
            continue
        for i in range(len(tokens) - n + 1):
            if tokens[i:i + n] == target:
                spans.add((words[i][1], words[i + n - 1][2]))
    return sorted(spans)


# ---------------------------------------------------------------- windows


def encode_qa_windows(tokenizer, question: str, paragraph: str, max_length: int, stride: int,
                      answers: Sequence[str] = (), template: tuple[list[int], list[int], list[int]] | None = None
                      ) -> list[dict[str, Any]]:
    """The windows of one question + paragraph pair:
    `{"input_ids", "context_start", "offsets", "starts", "ends"}` — `context_start` is the position
    of the window's first paragraph sub-token, `offsets[i]` the character span (in `paragraph`) of
    the sub-token at `context_start + i`, and `starts`/`ends` the positions (in `input_ids`) of the
    answer occurrences wholly inside the window (empty when none or no answers are given).
    `template` is `encoding.pair_template(tokenizer)`, read once by callers that encode many pairs."""
    return encode_qa_paragraphs(tokenizer, question, [paragraph], max_length, stride, answers, template)[0]


def encode_qa_paragraphs(tokenizer, question: str, paragraphs: Sequence[str], max_length: int, stride: int,
                         answers: Sequence[str] = (),
                         template: tuple[list[int], list[int], list[int]] | None = None) -> list[list[dict[str, Any]]]:
    """The windows (as `encode_qa_windows`) of each of a question's paragraphs, one list per
    paragraph: the question is tokenised once and all paragraphs in one batched call, which a fast
    tokenizer runs in Rust instead of one Python round trip per paragraph."""
    prefix, middle, suffix = template or pair_template(tokenizer)
    n_special = len(prefix) + len(middle) + len(suffix)
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"][: max(1, (max_length - n_special) // 2)]
    room = max_length - n_special - len(q_ids)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for the paragraph")
    if not paragraphs:
        return []
    enc = tokenizer(list(paragraphs), add_special_tokens=False, return_offsets_mapping=True)
    step = room - min(stride, room // 2)
    head = [*prefix, *q_ids, *middle]
    return [_paragraph_windows(head, suffix, p_ids, [tuple(o) for o in offsets],
                               _token_spans(answer_char_spans(paragraph, answers), offsets) if answers else [],
                               room, step)
            for paragraph, p_ids, offsets in zip(paragraphs, enc["input_ids"], enc["offset_mapping"])]


def _paragraph_windows(head: list[int], suffix: list[int], p_ids: list[int], offsets: list[tuple[int, int]],
                       token_spans: Sequence[tuple[int, int]], room: int, step: int) -> list[dict[str, Any]]:
    """A paragraph's sub-tokens cut into windows of `room` starting every `step`, each between the
    question's `head` and the `suffix`; answer spans kept where wholly inside."""
    windows = []
    context_start = len(head)
    for lo in range(0, max(len(p_ids), 1), step):
        hi = min(lo + room, len(p_ids))
        inside = [(s, e) for s, e in token_spans if lo <= s and e < hi]
        windows.append({
            "input_ids": [*head, *p_ids[lo:hi], *suffix],
            "context_start": context_start,
            "offsets": offsets[lo:hi],
            "starts": [context_start + s - lo for s, _ in inside],
            "ends": [context_start + e - lo for _, e in inside],
        })
        if hi >= len(p_ids):
            break
    return windows


def _token_spans(char_spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans → inclusive sub-token spans: the first and last sub-token that overlap each."""
    out = []
    for cs, ce in char_spans:
        covering = [i for i, (s, e) in enumerate(offsets) if e > s and s < ce and e > cs]
        if covering:
            out.append((covering[0], covering[-1]))
    return out
