"""LAMA scoring under a precision: `kadapter probe --precision` loads the probe's frozen backbone in
the compute dtype and scores under that autocast; the default on a CPU stays fp32."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("args, dtype", [((), None), (("--precision", "bf16"), torch.bfloat16)])
def test_probe_loads_the_backbone_in_the_compute_dtype(cli, tiny_mlm, shared_data, monkeypatch, args, dtype):
    from kadapter_cli.stages import probe as probe_stage

    assert cli("train-probe", "--backbone", tiny_mlm, "--pretrained-lm-head").exit_code == 0
    loaded = []
    load = probe_stage.load_backbone

    def recording(name, backbone_dtype=None):
        loaded.append(backbone_dtype)
        return load(name, backbone_dtype)

    monkeypatch.setattr(probe_stage, "load_backbone", recording)
    result = cli("probe", "base-lm-head", "--google-re", shared_data / "lama-google-re", "--device", "cpu", *args)
    assert result.exit_code == 0, result.output
    assert loaded == [dtype]
