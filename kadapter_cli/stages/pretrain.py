"""Adapter pretraining: `kadapter train-adapter --kind fac|lin`.

fac: relation classification on `trex-rc/` (subject `@ … @`, object `# … #`; the head reads the
first `@` and `#`). lin: dependency-head prediction on `parsed/` (at each word's first sub-token,
the position of its head's first sub-token). The backbone is frozen and in eval mode; only the
adapter and its pretraining head train. When the backbone's tapped states fit the cache budget
they are computed once and reused every epoch (`--cache-features`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kadapter_cli.artifacts.cards import adapter_card, write_card
from kadapter_cli.artifacts.io import iter_jsonl, read_json, sha256_inputs, write_json
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.artifacts.output import check_output, nothing_to_resume, remove_checkpoints, training_output
from kadapter_cli.data.encoding import SPACED_MARKERS, check_marker_style, encode_dependency, encode_relation
from kadapter_cli.errors import BadInput, BadParameter
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, count_parameters, save_adapter
from kadapter_cli.modeling.backbone import (
    backbone_fingerprint,
    backbone_name,
    backbone_shape,
    load_backbone,
    load_tokenizer,
)
from kadapter_cli.modeling.heads import build_head
from kadapter_cli.modeling.options import MASK_PADDING
from kadapter_cli.modeling.pretrainer import AdapterPretrainer
from kadapter_cli.processes import is_main_process
from kadapter_cli.progress import progress
from kadapter_cli.stages.options import DEFAULT_LIN_HEAD, LIN_HEADS
from kadapter_cli.training.config import DEFAULT_CACHE_FEATURES, TrainConfig, kind_defaults
from kadapter_cli.training.feature_cache import FEATURE_CACHE_DIR, attach_backbone_cache
from kadapter_cli.training.loop import train
from kadapter_cli.training.objectives import DependencyObjective, RelationObjective
from kadapter_cli.training.setup import compute_dtype, make_accelerator


@dataclass
class AdapterTrainingSpec:
    """What to build, apart from the loop's own options (`TrainConfig`)."""

    kind: str
    name: str
    data: Path
    out: Path
    backbone: str
    max_length: int
    tap_layers: list[int] | None = None
    adapter_width: int | None = None
    adapter_layers: int | None = None
    adapter_heads: int | None = None
    mask_padding: bool = MASK_PADDING
    marker_style: str = SPACED_MARKERS  # fac: how "@"/"#" become ids (kadapter_cli.data.encoding)
    lin_head: str = DEFAULT_LIN_HEAD
    # lin pointer head: width of its dependent/head MLPs and biaffine (None: min(500, hidden), Dozat &
    # Manning's 500; 512 is a multiple of 64 for a GPU's tensor cores); recorded in the adapter's head config
    arc_dim: int | None = None
    cache_features: str = DEFAULT_CACHE_FEATURES
    cache_budget: float | None = None  # GiB


# ---------------------------------------------------------------- data


def read_trex_rc(folder: Path) -> tuple[list[dict], list[dict], list[str]]:
    """`(train, dev, relations)` of a `trex-rc/` artifact, validated (`BadInput` names file and line)."""
    relations = read_json(folder / "relations.json")
    if not isinstance(relations, list) or not all(isinstance(r, str) for r in relations) or not relations:
        raise BadInput("expected a non-empty JSON list of relation ids", folder / "relations.json")
    known = set(relations)
    splits = []
    for split in ("train", "dev"):
        path = folder / f"{split}.jsonl"
        records = []
        for line, rec in iter_jsonl(path):
            _require(rec, ("tokens", "subj_start", "subj_end", "obj_start", "obj_end", "relation"), path, line)
            if rec["relation"] not in known:
                raise BadInput(f"relation {rec['relation']!r} is not in relations.json", path, f"line {line}")
            rec["_where"] = (path, line)
            records.append(rec)
        splits.append(records)
    if not splits[0]:
        raise BadInput("no training examples", folder / "train.jsonl")
    return splits[0], splits[1], list(relations)


def read_parsed(folder: Path) -> tuple[list[dict], list[dict]]:
    """`(train, dev)` of a `parsed/` artifact, validated."""
    splits = []
    for split in ("train", "dev"):
        path = folder / f"{split}.jsonl"
        records = []
        for line, rec in iter_jsonl(path):
            _require(rec, ("tokens", "heads"), path, line)
            rec["_where"] = (path, line)
            records.append(rec)
        splits.append(records)
    if not splits[0]:
        raise BadInput("no training sentences", folder / "train.jsonl")
    return splits[0], splits[1]


def _require(rec: dict, keys: Sequence[str], path: Path, line: int) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise BadInput(f"missing field(s) {', '.join(missing)}", path, f"line {line}")


def encode_examples(kind: str, tokenizer, records: Sequence[dict], max_length: int, relations: Sequence[str] = (),
                    description: str = "encoding", marker_style: str = SPACED_MARKERS) -> list[dict]:
    """Records → encoded examples (`input_ids` + positions/targets + `label`)."""
    label_index = {r: i for i, r in enumerate(relations)}
    out = []
    with progress() as bar:
        task = bar.add_task(description, total=len(records), unit="examples")
        for rec in records:
            try:
                if kind == "fac":
                    ex = encode_relation(tokenizer, rec["tokens"], (rec["subj_start"], rec["subj_end"]),
                                         (rec["obj_start"], rec["obj_end"]), max_length, marker_style)
                    ex["label"] = label_index[rec["relation"]]
                else:
                    ex = encode_dependency(tokenizer, rec["tokens"], rec["heads"], max_length)
            except (ValueError, TypeError) as e:
                path, line = rec["_where"]
                raise BadInput(str(e), path, f"line {line}") from None
            out.append(ex)
            bar.advance(task)
    return out


def head_spec(spec: AdapterTrainingSpec, relations: Sequence[str]) -> dict[str, Any]:
    if spec.kind == "fac":
        return {"type": "relation", "num_labels": len(relations), "com_dense": True}
    if spec.lin_head == "original":
        return {"type": "lin_original", "max_length": spec.max_length, "com_dense": True}
    head = {"type": "lin_pointer", "com_dense": True}
    if spec.arc_dim is not None:  # the default stays implicit: configs without it load as they always did
        head["arc_dim"] = spec.arc_dim
    return head


# ---------------------------------------------------------------- the stage


def train_adapter(spec: AdapterTrainingSpec, config: TrainConfig, resume: bool = False, overwrite: bool = False,
                  manifest_config: dict | None = None) -> dict[str, Any]:
    """Pretrains one adapter and writes its artifact to `spec.out`; returns the summary."""
    kind_defaults(spec.kind)  # a kind that is not one is refused
    if spec.lin_head not in LIN_HEADS:
        raise BadParameter("{lin_head} must be one of {heads}, got {value!r}", spec.lin_head, heads=", ".join(LIN_HEADS))
    if spec.arc_dim is not None:
        if spec.kind != "lin" or spec.lin_head != "pointer":
            raise BadParameter("{arc_dim} applies to the lin adapter's pointer head only ({kind:lin} with "
                               "{lin_head:pointer})", spec.arc_dim)
        if isinstance(spec.arc_dim, bool) or not isinstance(spec.arc_dim, int) or spec.arc_dim < 1:
            raise BadParameter("{arc_dim} must be a positive whole number, got {value!r}", spec.arc_dim)
    try:
        check_marker_style(spec.marker_style)
    except ValueError as e:
        raise BadParameter("{marker_style}: {error}", spec.marker_style, error=e) from None
    if nothing_to_resume(spec.out, resume=resume, overwrite=overwrite):
        return read_json(spec.out / "metrics.json")
    check_output(spec.out, overwrite=overwrite, resume=resume, resumable=True)

    relations: list[str] = []
    if spec.kind == "fac":
        train_records, dev_records, relations = read_trex_rc(spec.data)
    else:
        train_records, dev_records = read_parsed(spec.data)
    if config.limit:
        train_records, dev_records = train_records[: config.limit], dev_records[: config.limit]

    tokenizer = load_tokenizer(spec.backbone)
    # Frozen: loaded in the compute dtype of a bf16/fp16 run, not re-cast from fp32 at every forward.
    backbone = load_backbone(spec.backbone, compute_dtype(config.precision, config.device))
    shape = backbone_shape(backbone)
    fingerprint = backbone_fingerprint(spec.backbone, backbone)  # the backbone as another machine finds it
    overrides: dict[str, Any] = {"name": spec.name, "backbone": backbone_name(fingerprint, spec.backbone),
                                 "labels": relations, "max_length": spec.max_length, "mask_padding": spec.mask_padding,
                                 "marker_style": spec.marker_style, "backbone_fingerprint": fingerprint}
    for key, value in (("tap_layers", spec.tap_layers), ("adapter_width", spec.adapter_width),
                       ("layers_per_tap", spec.adapter_layers), ("num_heads", spec.adapter_heads)):
        if value is not None:
            overrides[key] = value
    overrides["head"] = head_spec(spec, relations)
    adapter_config = AdapterConfig.for_backbone(shape, spec.kind, **overrides)
    max_positions = getattr(backbone.config, "max_position_embeddings", None)
    if max_positions and backbone.config.model_type in ("roberta", "xlm-roberta", "camembert"):
        max_positions -= 2  # RoBERTa's positions start after the padding index
    if max_positions and spec.max_length > max_positions:
        raise BadParameter("{max_length} {value} exceeds what {backbone} supports ({supported})", spec.max_length,
                           backbone=spec.backbone, supported=max_positions)

    train_examples = encode_examples(spec.kind, tokenizer, train_records, spec.max_length, relations, "encoding train",
                                     spec.marker_style)
    dev_examples = encode_examples(spec.kind, tokenizer, dev_records, spec.max_length, relations, "encoding dev",
                                   spec.marker_style)

    torch.manual_seed(config.seed)  # the adapter's and head's initial weights follow the seed
    adapter = KnowledgeAdapter(adapter_config)
    head = build_head(adapter_config.head, shape.hidden_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # An adapter that attends to padding learns with every sequence padded to max length, as the original.
    pad_to = None if spec.mask_padding else spec.max_length
    objective = (RelationObjective(pad_id, relations, pad_to) if spec.kind == "fac"
                 else DependencyObjective(pad_id, pad_to))
    model = AdapterPretrainer(backbone, adapter, head, adapter_config.head["type"])
    del backbone  # the model holds it: once the cache holds its states, nothing else keeps it alive

    processes = make_accelerator(config)  # joins the other processes of `accelerate launch` / `torchrun`
    with training_output(spec.out, processes, overwrite=overwrite, resume=resume) as run_dir:
        cached = attach_backbone_cache(model, {"train": train_examples, "dev": dev_examples}, pad_id, config,
                                       run_dir, processes.device, spec.cache_features, spec.cache_budget, pad_to)
        if cached:
            model.backbone = None  # every batch now carries its features: the backbone's memory is freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # and handed back to the device, for the cache and the steps
        result = train(model, objective, train_examples, dev_examples, config, run_dir, resume=resume,
                       hparams=manifest_config)
        summary = {"dev": result.best_metrics, "best_step": result.best_step, "steps": result.steps,
                   "batch_split": result.batch_split, "throughput": result.throughput,
                   "feature_cache": cached or "off"}
        if not is_main_process():  # the main process writes the artifact
            return summary
        save_adapter(run_dir, adapter, adapter_config, head)
        write_json(run_dir / "metrics.json", summary)
        remove_checkpoints(run_dir)
        (run_dir / "best.safetensors").unlink(missing_ok=True)
        shutil.rmtree(run_dir / FEATURE_CACHE_DIR, ignore_errors=True)
        stats = {"train_examples": len(train_examples), "dev_examples": len(dev_examples),
                 "parameters": count_parameters(adapter), "head_parameters": count_parameters(head), **summary}
        inputs = sha256_inputs(sorted(spec.data.glob("*.json*")))
        write_card(run_dir, adapter_card(adapter_config, summary, inputs, manifest_config or {}, stats))
        write_manifest(run_dir, "adapter", config=manifest_config or {}, inputs=inputs, stats=stats)
    return summary

