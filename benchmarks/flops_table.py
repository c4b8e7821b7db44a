"""Model FLOPs per real token of each objective at RoBERTa-large's shape, as the training log counts
them (`kadapter_cli.training.flops`: the products that run), beside the estimate the log used before
(2 × every parameter + 4 × the trainable ones, per token, whatever runs).

    python benchmarks/flops_table.py            # RoBERTa-large shape, random weights, on the CPU (about a minute)
    python benchmarks/flops_table.py --tiny     # 4 layers × 64: what the test runs

One step of each objective on `--batch` sequences of `--length` real tokens (no padding; T-REx
sentences average 23 sub-tokens): fac pretraining with the backbone running and from the feature
cache, fine-tuning a typing task with fac+lin (concat fusion) with the backbone trained, and from
the cache with the backbone frozen, and the knowledge probe (vocabulary layer at 15 % of the tokens).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def _old_estimate(model: torch.nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2.0 * total + 4.0 * trainable


def table(layers: int, hidden: int, heads: int, vocab: int, batch: int, length: int, seed: int = 0) -> dict:
    from transformers import RobertaConfig, RobertaModel

    from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter
    from kadapter_cli.modeling.backbone import backbone_shape, backbone_states
    from kadapter_cli.modeling.heads import build_head
    from kadapter_cli.modeling.pretrainer import AdapterPretrainer
    from kadapter_cli.modeling.probe_model import ProbeModel
    from kadapter_cli.stages.finetune import build_task_model
    from kadapter_cli.tasks import task_class
    from kadapter_cli.training.flops import step_flops
    from kadapter_cli.training.objectives import MaskedLMObjective, RelationObjective

    torch.manual_seed(seed)
    backbone = RobertaModel(RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, intermediate_size=4 * hidden,
                                          max_position_embeddings=length + 4)).eval()
    shape = backbone_shape(backbone)
    labels = [str(i) for i in range(410)]
    fac = AdapterConfig.for_backbone(shape, "fac", labels=labels,
                                     head={"type": "relation", "num_labels": len(labels), "com_dense": True})
    lin = AdapterConfig.for_backbone(shape, "lin", head={"type": "lin_pointer", "com_dense": True})
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    tokens = batch * length
    rows = {}

    def add(name: str, model, step) -> None:
        rows[name] = {"counted_per_token": step_flops(step) / tokens, "old_estimate_per_token": _old_estimate(model)}

    # fac pretraining, backbone running and from the cache
    pretrainer = AdapterPretrainer(backbone, KnowledgeAdapter(fac), build_head(fac.head, hidden), "relation").train()
    fac_batch = {"input_ids": ids, "attention_mask": mask, "subj_pos": torch.ones(batch, dtype=torch.long),
                 "obj_pos": torch.full((batch,), length // 2), "labels": torch.zeros(batch, dtype=torch.long)}
    objective = RelationObjective(1, labels)
    add("fac_pretraining", pretrainer, lambda: objective.loss(pretrainer, fac_batch).backward())
    cached = dict(fac_batch, features=pretrainer.backbone_features(ids, mask))
    add("fac_pretraining_cached", pretrainer, lambda: objective.loss(pretrainer, cached).backward())

    # fine-tuning a typing task (OpenEntity's head) on fac+lin, concat fusion
    task = task_class("openentity")()
    task_batch = {"input_ids": ids, "attention_mask": mask, "mention_pos": torch.ones(batch, dtype=torch.long),
                  "labels": torch.zeros(batch, 9, dtype=torch.long)}
    for name, frozen in (("finetune_backbone_trained", False), ("finetune_frozen_backbone_cached", True)):
        model = build_task_model(task, [str(i) for i in range(9)],
                                 {"fac": KnowledgeAdapter(fac), "lin": KnowledgeAdapter(lin)}, "concat",
                                 copy.deepcopy(backbone))
        model.body.freeze_adapters()
        step_batch = dict(task_batch)
        if frozen:
            model.body.freeze_backbone()
            tapped, last = backbone_states(model.body.backbone, ids, mask, model.body.tap_layers)
            step_batch["features"] = [*tapped, last]
        model.train()
        add(name, model, lambda model=model, step_batch=step_batch: task.loss(model(step_batch), step_batch).backward())

    # the knowledge probe on fac: the vocabulary layer at 15 % of the tokens
    probe = ProbeModel(backbone, {"fac": KnowledgeAdapter(fac)}, hidden, vocab).train()
    masked = max(1, round(0.15 * length))
    positions = torch.stack([torch.randperm(length - 2)[:masked] + 1 for _ in range(batch)])
    valid = torch.ones(batch, masked, dtype=torch.bool)
    probe_labels = torch.randint(0, vocab, (batch, masked))
    masked_rows = valid.flatten().nonzero().squeeze(1)  # as MaskedLMObjective.collate builds them
    probe_batch = {"input_ids": ids, "attention_mask": mask, "positions": positions, "valid": valid,
                   "labels": probe_labels, "rows": masked_rows, "targets": probe_labels.flatten()[masked_rows],
                   "masked": valid.sum(-1)}
    mlm = MaskedLMObjective(1, 4, vocab)
    add("probe_masked_lm", probe, lambda: mlm.loss(probe, probe_batch).backward())

    for row in rows.values():
        row["old_over_counted"] = round(row["old_estimate_per_token"] / row["counted_per_token"], 3)
        row["counted_per_token"] = float(f"{row['counted_per_token']:.4g}")
        row["old_estimate_per_token"] = float(f"{row['old_estimate_per_token']:.4g}")
    return {"shape": {"layers": layers, "hidden": hidden, "heads": heads, "vocab": vocab},
            "batch": batch, "length": length, "objectives": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="4 layers, 64 wide (for tests)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=23)
    args = parser.parse_args(argv)
    shape = (4, 64, 4, 1000) if args.tiny else (24, 1024, 16, 50265)
    result = table(*shape, batch=args.batch, length=args.length)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
