"""Extractive QA decoding: the best answer spans of each window, then one answer per question.

`best_spans` scores every span start s, end e (s ≤ e < s + max_answer_length) of a batch of
windows as log p_start(s) + log p_end(e), without materialising (L × L) matrices: the end scores
are viewed as an (L × max_answer_length) band (`unfold`) beside each start, so the work is
O(L · max_answer_length). Both softmaxes run over the positions the model was trained to choose
among (`norm_mask`: the paragraph, plus `<s>` for a model trained with `no_answer=cls`), and spans
start and end on the paragraph only: a window that puts its mass on `<s>` ("no answer here") gives
its spans little probability, so they lose to the spans of a window that holds the answer.

`combine_answers` turns the spans of all a question's windows (over all its paragraphs) into one
answer: equal answer strings after the SQuAD normalisation have their probabilities combined by
`max` (default: the paper's "no ranking", each paragraph on its own) or `sum` (OpenQA's
aggregation without its paragraph selector).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from kadapter_cli.tasks.metrics import squad_normalize

if TYPE_CHECKING:  # torch is imported inside `best_spans`: the task registry stays cheap to import
    import torch

COMBINE_MODES = ("max", "sum")
SPANS_PER_WINDOW = 5  # candidates kept per window: `sum` can only add up what is kept


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor,
               max_answer_length: int, top_k: int = SPANS_PER_WINDOW, norm_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(log_probs, starts, ends)`, each (B, k): the k best spans of each window, best first.

    `context_mask` (B, L) marks the paragraph positions; spans start and end on them only.
    `norm_mask` (B, L) marks the positions of the softmaxes (the training loss's; default the
    paragraph). A window with fewer than k spans has `-inf` log-probabilities in the rest.
    """
    import torch

    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be at least 1, got {max_answer_length}")
    mask = context_mask.bool()
    norm = mask if norm_mask is None else norm_mask.bool() | mask
    neg_inf = torch.finfo(torch.float32).min

    def log_probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float().masked_fill(~norm, neg_inf), dim=-1).masked_fill(~mask, -torch.inf)

    log_start, log_end = log_probs(start_logits), log_probs(end_logits)
    batch, length = log_start.shape
    width = min(max_answer_length, length)
    # band[b, s, d] = log_end[b, s + d]: the end scores of the spans that start at s
    padded = torch.nn.functional.pad(log_end, (0, width - 1), value=-torch.inf)
    band = padded.unfold(1, width, 1)  # (B, L, width), a view
    scores = (log_start.unsqueeze(-1) + band).reshape(batch, length * width)
    k = min(top_k, length * width)
    best, flat = scores.topk(k, dim=-1)
    starts = flat // width
    return best, starts, starts + flat % width


def ranked_answers(candidates: Iterable[tuple[str, float]], mode: str = "max") -> list[tuple[str, float]]:
    """`(answer, score)` for every normalised answer string among `(text, probability)` candidates,
    best first: its probabilities combined (`max` or `sum`), spelled as its single best candidate.
    Texts that normalise to nothing (punctuation, an article) rank after every other answer."""
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {mode!r}")
    totals: dict[str, float] = {}
    spelled: dict[str, tuple[float, str]] = {}
    for text, probability in candidates:
        key = squad_normalize(text)
        if mode == "sum":
            totals[key] = totals.get(key, 0.0) + probability
        else:
            totals[key] = max(totals.get(key, 0.0), probability)
        if key not in spelled or probability > spelled[key][0]:
            spelled[key] = (probability, text)
    ranked = sorted(totals, key=lambda key: (key != "", totals[key]), reverse=True)
    return [(spelled[key][1], totals[key]) for key in ranked]


def combine_answers(candidates: Iterable[tuple[str, float]], mode: str = "max") -> str:
    """One answer from `(text, probability)` candidates: the first of `ranked_answers`. No
    candidates: the empty answer."""
    ranked = ranked_answers(candidates, mode)
    return ranked[0][0] if ranked else ""
