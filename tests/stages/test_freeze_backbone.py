"""`finetune --freeze-backbone` freezes the backbone (docs/commands.md): after a CLI run the backbone's
weights in the saved model are the original backbone's, and none of its parameters was trainable.

Run with the feature cache off (the backbone then runs in every step, so an unfrozen backbone would
be updated) and with the default cache (the backbone is skipped, so only the trainable count shows
what was frozen).
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from kadapter_cli.modeling.backbone import load_backbone


@pytest.mark.parametrize("cache", ["off", "auto"])
def test_finetune_freeze_backbone_keeps_backbone_weights(cli, tiny_backbone, shared_data, cache):
    data = shared_data / "openentity" / "ernie-format"
    # A large learning rate: any backbone parameter that took a step would differ visibly.
    result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tiny_backbone, "--freeze-backbone",
                 "--cache-features", cache, "--limit", "8", "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2",
                 "--warmup", "0", "--max-length", "32")
    assert result.exit_code == 0, result.output
    run = cli.workdir / "finetuned" / "openentity-base"

    original = load_backbone(str(tiny_backbone)).state_dict()
    saved = load_file(run / "model.safetensors")
    backbone_keys = [k for k in saved if k.startswith("body.backbone.")]
    assert len(backbone_keys) >= len([k for k in original if not k.endswith("position_ids")])
    for key in backbone_keys:
        assert saved[key].equal(original[key.removeprefix("body.backbone.")]), key
    # The head did train: the run was not a no-op.
    assert saved["head.out_proj.weight"].abs().sum() > 0

    manifest = json.loads((run / "manifest.json").read_text())
    parameters = manifest["stats"]["parameters"]["backbone"]
    assert parameters["total"] > 0 and parameters["trainable"] == 0
    assert manifest["stats"]["feature_cache"] == ("off" if cache == "off" else "memory")
    assert json.loads((run / "config.json").read_text())["freeze_backbone"] is True


def test_finetune_without_freeze_trains_the_backbone(cli, tiny_backbone, shared_data):
    """The paper's default: the backbone is trained (so the test above can tell the two apart)."""
    data = shared_data / "openentity" / "ernie-format"
    result = cli("finetune", "--task", "openentity", "--data", data, "--backbone", tiny_backbone, "--limit", "8",
                 "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--warmup", "0", "--max-length", "32")
    assert result.exit_code == 0, result.output
    run = cli.workdir / "finetuned" / "openentity-base"
    original = load_backbone(str(tiny_backbone)).state_dict()
    saved = load_file(run / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    assert not saved[f"body.backbone.{key}"].equal(original[key])
    parameters = json.loads((run / "manifest.json").read_text())["stats"]["parameters"]["backbone"]
    # all of it but the pooler, which no task reads (frozen so DDP sees no unused parameters)
    pooler = sum(t.numel() for k, t in original.items() if k.startswith("pooler."))
    assert parameters["trainable"] == parameters["total"] - pooler > 0
