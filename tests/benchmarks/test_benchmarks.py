"""The speed benchmarks (`benchmarks/run.py`) run end to end and report what RESULTS.md relies on.

Run at toy size (4-layer, 64-wide backbone, a handful of examples): the numbers mean nothing here,
the keys, the entry format and the FLOP formula behind `mfu` do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import run  # noqa: E402

RATIOS = {
    "adapter_step_vs_full_finetune": "<= 0.35",
    "cached_epoch_vs_uncached": "<= 0.31",
    "bucketed_vs_padded": "<= 0.40",
    "composed_inference_vs_backbone": "<= 1.25",
    "cosmosqa_step_vs_hf_multiple_choice": "<= 1.05",
    "probe_step_masked_rows_vs_every_position": "<= 0.60",
    "mfu": ">= 0.80",
    "qa_eval_vs_hf_pipeline": ">= 1.50",
    "prepare_trex_rss_2x_over_1x": "<= 1.20",  # --toy runs 2 copies instead of 10
}
RATES = ("prepare_trex_docs_per_s", "parse_conllu_words_per_s", "parse_spacy_words_per_s")


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory) -> tuple[dict, dict]:
    """`python benchmarks/run.py --toy --out FILE`: (the object printed on stdout, the file's)."""
    out = tmp_path_factory.mktemp("bench") / "report.json"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        run.main(["--toy", "--out", str(out)])
    return json.loads(stdout.getvalue()), json.loads(out.read_text(encoding="utf-8"))


def test_prints_one_json_object_and_writes_the_same_to_out(toy_report):
    printed, written = toy_report
    assert printed == written


def test_every_ratio_has_value_target_met_and_detail(toy_report):
    report, _ = toy_report
    for name, target in RATIOS.items():
        entry = report[name]
        assert set(entry) == {"value", "target", "met", "detail"}, name
        assert entry["target"] == target
        bound = float(target.split()[1])
        assert entry["value"] > 0
        assert entry["met"] == (entry["value"] <= bound if target.startswith("<=") else entry["value"] >= bound)
    assert report["targets_met"] + len(report["targets_missed"]) == len(RATIOS)


def test_floors_bound_each_cpu_ratio(toy_report):
    """Each CPU ratio's floor is measured in the same run: positive, with the parts it is made of."""
    floors = toy_report[0]["floors"]
    assert set(floors) == {"adapter_step_vs_full_finetune", "cached_epoch_vs_uncached", "bucketed_vs_padded",
                           "composed_inference_vs_backbone", "mfu"}
    step = floors["adapter_step_vs_full_finetune"]
    assert step["parts_sum"] == pytest.approx(step["backbone_forward_share"] + step["adapter_training_share"], abs=2e-4)
    assert 0 < step["backbone_forward_share"] < step["parts_sum"]
    cached = floors["cached_epoch_vs_uncached"]
    assert 0 < cached["floor"]
    # what a cached step adds to its training: the rows gathered from the feature cache, collated
    assert cached["gather_and_collate_ms"] > 0 and cached["gather_and_collate"]["repeats"] >= 1
    assert 0 < cached["gather_and_collate_share_of_cached_step"] < 1
    bucket = floors["bucketed_vs_padded"]
    assert 0 < bucket["token_ratio"] < 1 and bucket["floor"] > 0
    assert floors["composed_inference_vs_backbone"]["floor"] > 1  # adapters and fusion add work
    mfu = floors["mfu"]
    assert 0 < mfu["matmul_time_share"] < 1 and mfu["tokens"] > 0
    assert 0 < mfu["bernoulli_time_share"] < 1 - mfu["matmul_time_share"]  # dropout's masks, beside the matmuls
    assert mfu["ceiling"] == pytest.approx(mfu["gemm_rate_ceiling"] * mfu["matmul_time_share"], abs=2e-4)


def test_rates_are_positive_and_stanza_is_run_or_skipped_with_a_reason(toy_report):
    report, _ = toy_report
    for name in RATES:
        assert report[name]["value"] > 0, name
    stanza = report["parse_stanza_words_per_s"]
    if stanza["value"] is None:
        assert "Stanza models" in stanza["skipped"]
    else:
        assert stanza["value"] > 0


def test_reports_machine_shape_and_timing_details(toy_report):
    report, _ = toy_report
    assert {"cpu", "cores", "threads", "torch"} <= set(report["machine"])
    assert report["machine"]["threads"] == 1
    assert report["shape"] == {**run.TOY_SHAPE.to_dict(), "batch_size": run.TOY.batch_size}
    step = report["adapter_step_vs_full_finetune"]["detail"]
    for member in ("adapter_step", "full_finetune_step"):
        assert step[member]["repeats"] == run.TOY.repeats
        assert step[member]["min_s"] <= step[member]["median_s"] <= step[member]["max_s"]
    rss = report["prepare_trex_rss_2x_over_1x"]["detail"]["runs"]
    assert [r["copies"] for r in rss] == [1, 2]


def test_step_flop_formula_matches_torch_flop_counter():
    """`mfu`'s FLOP count of an adapter step agrees with what torch counts while running one."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.training_bench import _objective
    from benchmarks.workloads import (
        TrainStep,
        adapter_config,
        adapter_pretrainer,
        adapter_step_flops,
        build_backbone,
        fac_examples,
    )

    shape = run.TOY_SHAPE
    backbone = build_backbone(shape)
    config = adapter_config(backbone)
    objective = _objective(config)
    batch = objective.collate(fac_examples([12, 20, 16], shape.vocab, seed=0))
    step = TrainStep(adapter_pretrainer(backbone, config), objective)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    counted = counter.get_total_flops()
    formula = adapter_step_flops(shape, config, batch=3, seq_len=20)["total"]
    # The formula also counts the input gradient of the first adapter layer, which autograd skips.
    assert counted == pytest.approx(formula, rel=0.03)
    assert torch.get_num_threads() >= 1


def test_unknown_only_name_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--toy", "--only", "nonsense"])
    assert exit_info.value.code == 2
    assert "nonsense" in capsys.readouterr().err


def test_pretraining_relation_logits_equal_the_head_over_every_position():
    """The speed fix in `AdapterPretrainer` (com_dense on the two marker rows only) changes no logit."""
    import torch

    from benchmarks.training_bench import _objective
    from benchmarks.workloads import adapter_config, adapter_pretrainer, build_backbone, fac_examples

    backbone = build_backbone(run.TOY_SHAPE)
    config = adapter_config(backbone)
    model = adapter_pretrainer(backbone, config).eval()
    batch = _objective(config).collate(fac_examples([9, 17, 13], run.TOY_SHAPE.vocab, seed=3))
    with torch.no_grad():
        *tapped, last = model.backbone_features(batch["input_ids"], batch["attention_mask"])
        out = model.adapter(tapped, batch["attention_mask"])
        expected = model.head(last, out, batch["subj_pos"], batch["obj_pos"])  # com_dense over all tokens
        logits = model(batch)
    assert logits.shape == (3, 410)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_interleaved_steps_alternates_members_step_by_step_and_sums_each_round():
    from benchmarks import timing

    calls = []
    members = {name: [lambda name=name, i=i: calls.append((name, i)) for i in range(3)] for name in ("a", "b")}
    times = timing.interleaved_steps(members, repeats=2)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 2
    assert {name: len(t) for name, t in times.items()} == {"a": 2, "b": 2}
    assert all(t >= 0 for ts in times.values() for t in ts)
    with pytest.raises(ValueError, match="different numbers of steps"):
        timing.interleaved_steps({"a": members["a"], "b": members["b"][:2]}, repeats=1)


def test_qa_benchmark_runs_the_pipelines_windows_and_finds_its_answers(toy_report):
    """Both sides of `qa_eval_vs_hf_pipeline` run the same windows through the same weights (the
    benchmark refuses to report otherwise); the answers are counted, not required equal: the
    pipeline widens spans to words and merges equal ones (next test: the spans themselves agree)."""
    report, _ = toy_report
    detail = report["qa_eval_vs_hf_pipeline"]["detail"]
    questions = run.TOY.qa_questions
    assert detail["questions"] == questions and detail["windows"] >= questions * run.TOY.qa_paragraphs
    agree, total = map(int, detail["same_answer_as_baseline"].split("/"))
    assert total == questions and 0 <= agree <= questions
    assert set(detail["windows_per_s"]) == {"kadapter", "hf_pipeline", "composed"}
    composed = report["qa_composed_eval_vs_base"]
    assert composed["value"] > 0 and composed["flop_ratio"] > 1


def test_banded_span_decoding_picks_the_pipelines_best_span():
    """kadapter's `best_spans` (log-softmaxes, the answer-length band) and the re-created 4.x
    pipeline's `select_starts_ends` (NumPy softmaxes, the (L × L) outer product cut to the band,
    padding masked) rank the same spans first on the same logits."""
    import torch

    from benchmarks.qa_bench import _select_starts_ends
    from kadapter_cli.tasks.open_qa.decoding import best_spans

    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        length, real, context_start = 40, 40 - trial, 6
        start, end = torch.randn(1, length, generator=generator) * 3, torch.randn(1, length, generator=generator) * 3
        context = torch.zeros(1, length, dtype=torch.bool)
        context[0, context_start: real - 1] = True
        attention = (torch.arange(length) < real).long().unsqueeze(0)
        p_mask = (~context).long()
        p_mask[0, 0] = 0  # the pipeline leaves [CLS] unmasked, then zeroes its score
        starts, ends, _ = _select_starts_ends(start, end, p_mask, attention.numpy(), 12, 5)
        _, k_starts, k_ends = best_spans(start, end, context, 5, top_k=1)
        assert (int(starts[0]), int(ends[0])) == (int(k_starts[0, 0]), int(k_ends[0, 0]))


def test_gpu_check_runs_at_tiny_shapes_on_the_cpu_and_reports_every_figure(capsys):
    """`benchmarks/gpu.py` is for a lent GPU; at tiny shapes on the CPU it must still run end to end
    and print one JSON object whose figures follow from each other."""
    from benchmarks import gpu

    report = gpu.main(["--tiny", "--device", "cpu", "--peak-tflops", "2"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["precision"] == "bf16" and report["peak_tflops"] == 2.0 and report["shape"]["layers"] == 4
    fac, full, cache = report["fac_pretraining"], report["full_finetune"], report["feature_cache"]
    assert fac["tokens_per_s"] == pytest.approx(fac["real_tokens"] / fac["step_s"], rel=1e-3)
    assert fac["mfu"] == pytest.approx(fac["flops_per_step"]["total"] / fac["step_s"] / 2e12, abs=1e-4)
    assert 0 < fac["padded_tokens_per_s"] and fac["tokens_per_s"] <= fac["padded_tokens_per_s"]
    assert full["step_s"] > 0 and full["adapter_step_vs_full_finetune"] > 0
    assert cache["storage"] == "memory" and cache["examples"] == 8 and cache["cached_vs_uncached_epoch"] > 0
    assert report["matmul_bf16"]["tflops"] > 0 and report["wall_s"] > 0
    qa = report["qa_eval"]["qa_eval_vs_hf_pipeline"]
    assert qa["value"] > 0 and qa["detail"]["questions"] == 2 and qa["detail"]["paragraphs_per_question"] == 2
    assert qa["detail"]["windows"] >= 4 and report["qa_eval"]["qa_composed_eval_vs_base"]["flop_ratio"] > 1
    # the full-size shape is RoBERTa-large's
    assert (gpu.ROBERTA_LARGE.layers, gpu.ROBERTA_LARGE.hidden, gpu.ROBERTA_LARGE.heads,
            gpu.ROBERTA_LARGE.ffn) == (24, 1024, 16, 4096)
