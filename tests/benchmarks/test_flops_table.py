"""`benchmarks/flops_table.py` (model FLOPs per token of each objective, counted vs the old estimate)
runs at tiny shapes, and its rows follow what runs: the cache removes the backbone's forward."""

from __future__ import annotations


def test_flops_table_at_tiny_shapes(capsys):
    from benchmarks import flops_table

    report = flops_table.main(["--tiny", "--batch", "2", "--length", "12"])
    rows = report["objectives"]
    assert set(rows) == {"fac_pretraining", "fac_pretraining_cached", "finetune_backbone_trained",
                         "finetune_frozen_backbone_cached", "probe_masked_lm"}
    # The same model either way: the old estimate cannot tell a cached step from one running the backbone.
    assert rows["fac_pretraining"]["old_estimate_per_token"] == rows["fac_pretraining_cached"]["old_estimate_per_token"]
    assert rows["fac_pretraining_cached"]["counted_per_token"] < rows["fac_pretraining"]["counted_per_token"]
    assert rows["finetune_frozen_backbone_cached"]["counted_per_token"] < rows["finetune_backbone_trained"]["counted_per_token"]
    assert all(row["old_over_counted"] > 1 for row in rows.values())
