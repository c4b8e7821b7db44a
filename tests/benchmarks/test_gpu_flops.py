"""`benchmarks/gpu.py` prices its steps as the training log does: the FLOPs of the step counted by
the loop's counter (`kadapter_cli.training.flops`), per real token, against the same peak table."""

from __future__ import annotations

import pytest


def test_the_gpu_check_counts_its_steps_with_the_training_log_s_counter(monkeypatch, capsys):
    from benchmarks import gpu
    from kadapter_cli.training import flops

    counted = []
    real_step_flops = flops.step_flops

    def recording(step):
        counted.append(real_step_flops(step))
        return counted[-1]

    monkeypatch.setattr(flops, "step_flops", recording)
    report = gpu.main(["--tiny", "--device", "cpu", "--peak-tflops", "2", "--section", "fac_pretraining"])
    fac, full = report["fac_pretraining"], report["full_finetune"]
    adapter_flops, full_flops = counted  # one count of each step
    assert fac["flops_per_step"]["total"] == float(f"{adapter_flops:.4g}")
    assert fac["flops_per_real_token"] == float(f"{adapter_flops / fac['real_tokens']:.4g}")
    assert full["flops_per_real_token"] == float(f"{full_flops / fac['real_tokens']:.4g}")
    # model TFLOP/s = FLOPs per real token × real tokens/s, as in train_log.jsonl
    assert fac["model_tflops"] == pytest.approx(fac["flops_per_real_token"] * fac["tokens_per_s"] / 1e12, rel=2e-3)
    assert fac["mfu"] == pytest.approx(adapter_flops / fac["step_s"] / 2e12, abs=1e-4)


def test_without_a_known_peak_the_gpu_check_reports_no_mfu_and_says_why(monkeypatch):
    import torch

    from benchmarks import gpu

    assert gpu._peak(torch.device("cpu"), None) == (None, "no MFU on cpu: no peak is known")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVL")
    peak, source = gpu._peak(torch.device("cuda", 0), None)
    assert peak == 835.5e12 and "NVIDIA H100 NVL" in source
