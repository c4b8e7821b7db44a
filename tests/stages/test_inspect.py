"""`kadapter inspect`: manifest summary and parameter table of adapter, composition and finetuned artifacts."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from kadapter_cli.artifacts.io import write_json
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, count_parameters, save_adapter
from kadapter_cli.modeling.backbone import BackboneShape

SHAPE = BackboneShape("roberta", 64, 4, 4, "tiny-roberta")


def _adapter_artifact(folder, name):
    config = AdapterConfig.for_backbone(SHAPE, "fac", name=name)
    adapter = KnowledgeAdapter(config)
    save_adapter(folder, adapter, config)
    write_manifest(folder, "adapter", config={"kind": "fac"}, stats={"steps": 3})
    return count_parameters(adapter)


def test_adapter_artifact_table_and_summary(cli, tmp_path):
    size = _adapter_artifact(cli.workdir / "adapters" / "fac", "fac")
    result = cli("inspect", "fac")  # a bare name resolves under <workdir>/adapters
    assert result.exit_code == 0, result.stderr
    assert "adapter:fac" in result.stdout and f"{size:,}" in result.stdout and "stats.steps" in result.stdout


def test_composition_lists_each_adapter(cli, tmp_path):
    comp = tmp_path / "fac+lin"
    sizes = [_adapter_artifact(comp / "adapters" / n, n) for n in ("fac", "lin")]
    write_manifest(comp, "composition", config={"fusion": "concat"})
    report = json.loads(cli("inspect", comp, "--json").stdout)
    assert [(r["component"], r["total"]) for r in report["parameters"]] == [("adapter:fac", sizes[0]), ("adapter:lin", sizes[1])]
    assert report["trainable_parameters"] == 0  # adapters are frozen wherever a composition is used


def test_finetuned_model_is_grouped_by_component_with_frozen_adapters(cli, tmp_path):
    run = tmp_path / "figer-fac"
    run.mkdir()
    save_file({
        "body.backbone.embeddings.word_embeddings.weight": torch.zeros(10, 4),
        "body.backbone.encoder.layer.0.attention.self.query.weight": torch.zeros(4, 4),
        "body.adapters.fac.adapter.0.down_project.weight": torch.zeros(3, 4),
        "body.fusion.adapter_dense.fac.weight": torch.zeros(4, 8),
        "body.fusion.task_dense.weight": torch.zeros(4, 4),
        "head.out_proj.weight": torch.zeros(5, 4),
    }, str(run / "model.safetensors"))
    write_json(run / "config.json", {"task": "figer", "freeze_backbone": False, "adapters": [{"name": "fac", "config": {}}]})
    write_manifest(run, "finetuned")
    report = json.loads(cli("inspect", run, "--json").stdout)
    rows = {r["component"]: (r["total"], r["trainable"]) for r in report["parameters"]}
    assert rows == {"backbone": (56, 56), "adapter:fac": (12, 0), "fusion": (48, 48), "head": (20, 20)}
    assert (report["total_parameters"], report["trainable_parameters"]) == (136, 124)
    assert report["kind"] == "finetuned" and "model.safetensors" in report["files"]
