"""Downstream fine-tuning, evaluation and prediction: `finetune`, `evaluate`, `predict`.

The model is the backbone (trainable by default, as in the paper; `--freeze-backbone` freezes
it), the frozen knowledge adapters (eval mode: no dropout, unlike the original), their fusion and
the task's head. The checkpoint is selected on dev. A finetuned folder holds everything needed to
load it again: the backbone's config, the tokenizer, every weight, the labels and the task.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from kadapter_cli.artifacts.cards import finetuned_card, write_card
from kadapter_cli.artifacts.hub import describe_source
from kadapter_cli.artifacts.io import read_json, sha256_inputs, write_json, write_jsonl
from kadapter_cli.artifacts.layout import data_name
from kadapter_cli.artifacts.manifest import read_manifest, write_manifest
from kadapter_cli.artifacts.output import (
    atomic_output,
    check_output,
    nothing_to_resume,
    remove_checkpoints,
    training_output,
)
from kadapter_cli.artifacts.sources import model_folder
from kadapter_cli.data.encoding import SPACED_MARKERS
from kadapter_cli.errors import BadInput, BadParameter
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, read_safetensors
from kadapter_cli.modeling.backbone import backbone_shape, load_backbone, load_tokenizer
from kadapter_cli.modeling.kadapter import KAdapterModel, marker_style
from kadapter_cli.modeling.options import DEFAULT_FUSION
from kadapter_cli.modeling.task_model import TaskModel
from kadapter_cli.processes import is_main_process
from kadapter_cli.progress import info, progress, waiting
from kadapter_cli.stages.compose import AdapterSet, load_adapters, load_matching_backbone
from kadapter_cli.stages.options import EVAL_BATCH_SIZE
from kadapter_cli.tasks import Task, get_task
from kadapter_cli.tasks.base import IN_MEMORY, LabelSet, located, where_of
from kadapter_cli.training.config import DEFAULT_CACHE_FEATURES, TrainConfig
from kadapter_cli.training.feature_cache import FEATURE_CACHE_DIR, attach_backbone_cache
from kadapter_cli.training.loop import evaluate, predict, train
from kadapter_cli.training.objectives import TaskObjective
from kadapter_cli.training.setup import compute_dtype, make_accelerator

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LABELS = "labels.json"
# What Hugging Face reads in config.json: `AutoConfig`/`AutoModel` resolve `model_type` to the classes
# `import kadapter` registers (kadapter_cli/api/for_task.py); the backbone's own config is nested.
MODEL_TYPE = "kadapter"
ARCHITECTURE = "KAdapterForTask"
BACKBONE_CONFIG = "backbone_config"
# Folders written before kadapter 0.2 hold the tokenizer and the backbone's config in subfolders.
OLD_TOKENIZER_DIR = "tokenizer"
OLD_BACKBONE_DIR = "backbone"


# ---------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneSpec:
    task: Task  # configured with its options (`get_task(name, **options)`)
    data: Path
    out: Path
    adapters: AdapterSet
    backbone: str | None = None
    freeze_backbone: bool = False
    max_length: int = 256
    cache_features: str = DEFAULT_CACHE_FEATURES
    cache_budget: float | None = None  # GiB
    allow_backbone_mismatch: bool = False
    keep_adapter_dropout: bool = False  # the original code: frozen adapters stay in train mode
    # A labels file (a JSON list, or one label a line), or `benchmark`; default: labels.json in `data`,
    # else the benchmark's labels or those of the training split (`ClassificationTask.label_set`).
    labels: Path | None = None


def read_task_data(task, data_dir: Path, need_train: bool = True) -> dict[str, list[dict]]:
    """The splits found in `data_dir`; train and dev must be there (and labeled), test may be missing,
    and unlabeled where the task allows it (`test_labels_optional`)."""
    files = task.task_files(data_dir)
    splits = {}
    for split, path in files.items():
        if path.exists():
            splits[split] = task.read(path, labeled=split != "test" or not task.test_labels_optional)
        elif split in ("train", "dev") and need_train:
            raise BadInput(f"the {split} split is missing (expected {path.name})", data_dir)
    return splits


def build_task_model(task, labels: Sequence[str], adapters: dict[str, KnowledgeAdapter], fusion: str,
                     backbone: nn.Module) -> TaskModel:
    hidden = backbone_shape(backbone).hidden_size
    body = KAdapterModel(backbone, adapters, fusion if adapters else None, hidden)
    return TaskModel(body, task.build_head(hidden, len(labels)), task)


def encode_split(task, tokenizer, records: Sequence[dict], labels: Sequence[str] | LabelSet, max_length: int,
                 path: Path, description: str, marker_style: str = SPACED_MARKERS) -> list[dict]:
    """The model's examples of a split's records, each tagged with `record` (its record's index).
    `labels`: the label list, or the `LabelSet` it came from (its unknown-label message says more)."""
    task.check_labels(records, labels, path)
    label_index = {label: i for i, label in enumerate(labels.labels if isinstance(labels, LabelSet) else labels)}
    out = []
    with progress() as bar:
        t = bar.add_task(description, total=len(records), unit="examples")
        for i, rec in enumerate(records):
            out += _record_examples(task, tokenizer, rec, label_index, max_length, marker_style, path, i)
            bar.advance(t)
    return out


def _record_examples(task, tokenizer, record: dict, label_index: dict[str, int], max_length: int,
                     marker_style: str, path: Path, index: int) -> list[dict]:
    try:
        examples = task.examples(tokenizer, record, label_index, max_length, marker_style)
    except ValueError as e:
        raise BadInput(str(e), path, where_of(record, index)) from None
    for example in examples:
        example["record"] = index
    return examples


def finetune(spec: FinetuneSpec, config: TrainConfig, overwrite: bool = False, resume: bool = False,
             manifest_config: dict | None = None) -> dict[str, Any]:
    """Fine-tunes a task model, selects on dev, writes the finetuned artifact; returns its metrics."""
    if nothing_to_resume(spec.out, resume=resume, overwrite=overwrite):
        return read_json(spec.out / "metrics.json")
    check_output(spec.out, overwrite=overwrite, resume=resume, resumable=True)
    task = spec.task
    splits = read_task_data(task, spec.data)
    files = task.task_files(spec.data)
    if is_main_process():
        for split in splits:
            for note in task.read_notes(files[split], training=split == "train"):
                info(note)
    train_records = task.prepare_train(splits["train"])
    label_set = task.label_set(train_records, spec.data, spec.labels)
    labels = list(label_set.labels)
    for split, records in splits.items():  # an unknown label is refused before the model loads
        task.check_labels(records, label_set, files[split])

    adapters, adapter_configs = load_adapters(spec.adapters, spec.allow_backbone_mismatch)
    # A frozen backbone is loaded in the compute dtype of a bf16/fp16 run, not re-cast from fp32 at
    # every forward (as train-adapter and train-probe load theirs); a trained one keeps its fp32 weights.
    backbone_dtype = compute_dtype(config.precision, config.device) if spec.freeze_backbone else None
    matching = load_matching_backbone(adapter_configs, spec.backbone, spec.allow_backbone_mismatch,
                                      spec.adapters.names, backbone_dtype)
    backbone_id, backbone, tokenizer, fingerprint = (matching.name, matching.model, matching.tokenizer,
                                                     matching.fingerprint)
    backbone_source = matching.name_or_path  # where it was loaded from (read again for the artifact)
    del matching  # the model holds the backbone: once the cache holds its states, nothing else keeps it alive
    if labels and is_main_process():
        info(label_set.describe())
        if label_set.notice() is not None:  # why this set, and how to choose the other
            info(label_set.notice())

    splits["train"] = train_records
    if config.limit:  # the first N of every split, before the work of encoding them
        splits = {k: v[: config.limit] for k, v in splits.items()}
    markers = marker_style(adapter_configs)  # encode the entity markers as the adapters learned them
    encoded = {split: encode_split(task, tokenizer, recs, label_set, spec.max_length, files[split],
                                   f"encoding {split}", markers)
               for split, recs in splits.items()}

    torch.manual_seed(config.seed)  # fusion and head initial weights follow the seed
    model = build_task_model(task, labels, adapters, spec.adapters.fusion, backbone)
    del backbone
    model.body.freeze_adapters(keep_dropout=spec.keep_adapter_dropout)
    if spec.freeze_backbone:
        model.body.freeze_backbone()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_to = model.body.padded_length(spec.max_length)
    objective = TaskObjective(pad_id, task, labels, pad_to)

    processes = make_accelerator(config)  # joins the other processes of `accelerate launch` / `torchrun`
    with training_output(spec.out, processes, overwrite=overwrite, resume=resume) as run_dir:
        cached, kept_backbone = None, None
        if spec.freeze_backbone:
            cached = attach_backbone_cache(model.body, encoded, pad_id, config, run_dir, processes.device,
                                           spec.cache_features, spec.cache_budget, pad_to)
        if cached:  # every split's batches now carry their features: the backbone leaves the device
            if backbone_dtype is None:  # its fp32 weights are the artifact's: kept in host memory
                kept_backbone = model.body.backbone.to("cpu")
            model.body.backbone = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # its memory handed back to the device, for the cache and the steps
        result = train(model, objective, encoded["train"], encoded["dev"], config, run_dir, resume=resume,
                       hparams=manifest_config)
        results: dict[str, dict] = {}
        for split in ("dev", "test"):
            if split not in encoded:
                continue
            # Every process evaluates its share; each gets all outputs back, in input order.
            metrics, outputs = evaluate(model, objective, encoded[split], config,
                                        description=f"evaluating {split}")
            if all(task.has_gold(r) for r in splits[split]):  # an unlabeled test split only gets predictions
                results[split] = metrics
            if is_main_process():
                task.write_predictions(run_dir, split, outputs, encoded[split])
        if not is_main_process():  # the main process writes the artifact
            return results
        remove_checkpoints(run_dir)
        (run_dir / "best.safetensors").unlink(missing_ok=True)
        shutil.rmtree(run_dir / FEATURE_CACHE_DIR, ignore_errors=True)
        if spec.freeze_backbone:
            # The artifact holds the frozen backbone's own fp32 weights, the ones its fingerprint names:
            # read again when the run held them in bf16/fp16, else the ones kept when the cache freed it.
            if backbone_dtype is not None:
                model.body.backbone = load_backbone(backbone_source)
            elif kept_backbone is not None:
                model.body.backbone = kept_backbone
            model.body.freeze_backbone()
        save_finetuned(run_dir, model, tokenizer, task, labels, spec, backbone_id, adapter_configs, fingerprint)
        write_json(run_dir / "metrics.json", results)
        stats = {"best_step": result.best_step, "steps": result.steps, "batch_split": result.batch_split,
                 "throughput": result.throughput,
                 "feature_cache": cached or "off", **{f"{k}_examples": len(v) for k, v in encoded.items()},
                 "parameters": {row["component"]: row for row in model.body.parameter_table()},
                 **task.read_stats()}
        task_inputs = sha256_inputs([f for p in files.values() if p.exists() for f in task.input_files(p)])
        inputs = task_inputs + sha256_inputs(spec.adapters.paths)
        write_card(run_dir, finetuned_card(spec.out.name, task, read_json(run_dir / CONFIG), labels, results,
                                           inputs, manifest_config or {}, stats, task_inputs=task_inputs,
                                           dataset=None if label_set.benchmark else data_name(spec.data)))
        write_manifest(run_dir, "finetuned", config=manifest_config or {}, inputs=inputs, stats=stats)
    return results


# ---------------------------------------------------------------- the finetuned artifact


def save_finetuned(folder: Path, model: TaskModel, tokenizer, task, labels: Sequence[str], spec: FinetuneSpec,
                   backbone_id: str, adapter_configs: Sequence[AdapterConfig], fingerprint: dict) -> None:
    write_finetuned(folder, model, tokenizer, labels, {
        "task": task.name,
        "task_options": task.option_values(),
        "backbone": backbone_id,
        "backbone_fingerprint": fingerprint,
        "max_length": spec.max_length,
        "fusion": model.body.fusion_mode,
        "marker_style": marker_style(adapter_configs),
        "freeze_backbone": spec.freeze_backbone,
        "adapters": [{"name": n, "config": c.to_dict()} for n, c in zip(spec.adapters.names, adapter_configs)],
    })


def write_finetuned(folder: Path, model: TaskModel, tokenizer, labels: Sequence[str], config: dict[str, Any]) -> None:
    """The model files of a finetuned folder (the caller adds metrics, card and manifest):
    `config.json` — kadapter's `config` plus what Hugging Face reads (`model_type`, `architectures`,
    the backbone's config, the transformers version) —, `model.safetensors` (every weight),
    `labels.json`, and the tokenizer's files beside them, where `AutoTokenizer` looks."""
    import transformers
    from safetensors.torch import save_file

    tokenizer.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    write_json(folder / LABELS, list(labels))
    hf = {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], "transformers_version": transformers.__version__,
          BACKBONE_CONFIG: backbone_config_dict(model.body.backbone.config)}
    kadapter = {k: v for k, v in config.items() if k not in hf}
    write_json(folder / CONFIG, {**hf, **kadapter, "labels": list(labels)})


def backbone_config_dict(config) -> dict[str, Any]:
    """A backbone's Hugging Face config as config.json nests it: without `_name_or_path`, where it was
    loaded from on this machine (a path of the Hub's cache or of site-packages; the artifact names
    its backbone portably in `backbone` and `backbone_fingerprint`)."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


class Finetuned(NamedTuple):
    """A loaded finetuned model: the task model (eval mode), its tokenizer, task, labels and config.json."""

    model: TaskModel
    tokenizer: Any
    task: Any
    labels: list[str]
    config: dict


def load_finetuned(folder: str | Path, task_options: dict[str, Any] | None = None,
                   config: dict | None = None) -> Finetuned:
    """`(model, tokenizer, task, labels, config)` from a finetuned folder alone, the model in eval
    mode; `task_options` set over the saved ones (how to read and decode new data:
    `max_answer_length`, ...). Folders of every kadapter version load. `config`: the folder's
    `finetuned_config`, when the caller has read it already (it is not read twice)."""
    with waiting(f"loading model {folder}"):
        return _load_finetuned(model_folder(folder), task_options or {}, config)


def finetuned_config(folder: str | Path) -> dict[str, Any]:
    """A finetuned folder's `config.json` (its task, options, adapters); `BadInput` for any other folder."""
    folder = model_folder(folder)
    manifest = read_manifest(folder)
    if manifest["kind"] != "finetuned" or not (folder / CONFIG).is_file():
        raise BadInput(f"not a finetuned model folder (its manifest says {manifest['kind']!r}; "
                       "`kadapter finetune` makes one)", folder)
    return read_json(folder / CONFIG)


def _load_finetuned(folder: Path, task_options: dict[str, Any], config: dict | None) -> Finetuned:
    config = finetuned_config(folder) if config is None else config
    labels = read_json(folder / LABELS)
    task = get_task(config["task"], **{**config.get("task_options", {}), **task_options})
    old = not (folder / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(folder / OLD_TOKENIZER_DIR if old else folder))
    backbone_config = _backbone_config(folder, config)
    with torch.device("meta"):  # shapes only: every weight is assigned from the file below
        model = task_model_from_config(config, task, labels, backbone_config)
    state = read_safetensors(folder / WEIGHTS)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    buffers_only = {k for k in missing if k.endswith(("position_ids", "token_type_ids"))}
    if missing - buffers_only or unexpected:
        raise BadInput(f"weights disagree with config.json: missing {sorted(missing - buffers_only)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}", folder / WEIGHTS)
    model.load_state_dict(state, strict=False, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (position ids) are rebuilt, not stored
            _rebuild_buffer(model, name, backbone_config)
    model.eval()
    # Folders written before the field existed: their adapters' style (kadapter's, then).
    config.setdefault("marker_style", marker_style([a.config for a in model.body.adapters.values()]))
    return Finetuned(model, tokenizer, task, labels, config)


def task_model_from_config(config: dict[str, Any], task, labels: Sequence[str], backbone_config) -> TaskModel:
    """The task model a finetuned config.json describes, built on the current device (`meta` to
    fill it by assignment); adapters frozen, as fine-tuning kept them."""
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_config(backbone_config, attn_implementation="sdpa")
    except ValueError:
        backbone = AutoModel.from_config(backbone_config)
    adapters = {a["name"]: KnowledgeAdapter(AdapterConfig.from_dict(a["config"])) for a in config["adapters"]}
    model = build_task_model(task, labels, adapters, config["fusion"] or DEFAULT_FUSION, backbone)
    model.body.freeze_adapters()
    return model


def _backbone_config(folder: Path, config: dict[str, Any]):
    """The backbone's Hugging Face config: nested in config.json, or (older folders) in `backbone/`."""
    from transformers import AutoConfig

    if BACKBONE_CONFIG in config:
        values = dict(config[BACKBONE_CONFIG])
        try:
            return AutoConfig.for_model(values.pop("model_type"), **values)
        except (KeyError, ValueError) as e:
            raise BadInput(f"config.json: {BACKBONE_CONFIG} is not a Hugging Face config ({e})", folder / CONFIG) from None
    return AutoConfig.from_pretrained(str(folder / OLD_BACKBONE_DIR))


def _rebuild_buffer(model: nn.Module, name: str, backbone_config) -> None:
    module_name, _, buf_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, buf_name)
    if buf_name == "position_ids":
        new = torch.arange(old.shape[-1]).expand(old.shape).clone()
    else:
        new = torch.zeros(old.shape, dtype=old.dtype)
    module.register_buffer(buf_name, new, persistent=False)


def evaluate_finetuned(model_dir: Path, data_dir: Path | None, split: str, out: Path | None,
                       batch_size: int = EVAL_BATCH_SIZE, device: str = "auto", overwrite: bool = False,
                       scores: str = "none", task_options: dict[str, Any] | None = None,
                       config: dict | None = None) -> dict[str, Any]:
    """Recomputes a split's metrics from a saved model; writes predictions (+ metrics, + `scores`:
    see `Task.scored_lines`) when `out` is set, and nothing when it is None. `task_options`: over
    the saved ones; `config`: see `load_finetuned`. An existing `out` is refused (without
    `overwrite`) before anything is computed."""
    if out is not None:
        check_output(out, overwrite=overwrite)
    model, tokenizer, task, labels, config = load_finetuned(model_dir, task_options, config)
    if data_dir is None:
        raise BadParameter("{data_dir} is required (the folder with the task's split files)")
    path = task.task_files(data_dir)[split]
    records = task.read(path, labeled=split != "test" or not task.test_labels_optional)
    if is_main_process():
        for note in task.read_notes(path):
            info(note)
    if not all(task.has_gold(r) for r in records):
        raise BadInput(f"the {split} split has no labels to score against; use `kadapter predict` for it", path)
    trained = LabelSet(labels, "the model was trained on", benchmark=False,
                       fix="the model cannot score it; fine-tune with every label ({labels} FILE)")
    examples = encode_split(task, tokenizer, records, trained, config["max_length"], path, f"encoding {split}",
                            config["marker_style"])
    objective = TaskObjective(tokenizer.pad_token_id or 0, task, labels, model.body.padded_length(config["max_length"]))
    metrics, outputs = evaluate(model, objective, examples, TrainConfig(batch_size=batch_size, device=device),
                                description=f"evaluating {split}")
    if out is not None:
        with atomic_output(out, overwrite=overwrite) as tmp:
            task.write_predictions(tmp, split, outputs, examples)
            if scores != "none":
                write_jsonl(tmp / f"predictions-{split}.jsonl",
                                      task.scored_lines(task.prediction_lines(outputs, examples), outputs, examples, labels, scores))
            write_json(tmp / "metrics.json", {split: metrics})
            # A model from the Hub is recorded as hf://org/name@<commit>, never by its place in the cache.
            write_manifest(tmp, "evaluation", config={"model": describe_source(model_folder(model_dir)), "split": split},
                                     inputs=sha256_inputs(task.input_files(path)),
                                     stats={"examples": len(examples), **task.read_stats()})
    return {"task": task.name, "split": split, "metrics": metrics, "headline": list(task.headline_metrics)}


def predict_records(model_dir: Path, input_path: Path, batch_size: int = EVAL_BATCH_SIZE, device: str = "auto",
                    scores: str = "none", task_options: dict[str, Any] | None = None,
                    config: dict | None = None) -> list[dict]:
    """Labels the records of a file in the task's format (`predict_loaded` on them); `task_options`:
    over the saved ones; `config`: see `load_finetuned`."""
    loaded = load_finetuned(model_dir, task_options, config)
    records = loaded.task.read(input_path, labeled=False)
    return predict_loaded(loaded, records, batch_size, device, scores, input_path)


def predict_loaded(loaded: Finetuned, records: Sequence[dict], batch_size: int = EVAL_BATCH_SIZE, device: str = "auto",
                   scores: str = "none", source: str | Path = IN_MEMORY) -> list[dict]:
    """One prediction line per record (read and validated by the task: `Task.read`, `Task.read_records`),
    in input order, as `kadapter predict` prints them. Gold labels are optional, and ones the model
    never saw are ignored for encoding but shown in `gold`. `scores`: see `Task.scored_lines`;
    `source` names the records in errors. Batches never change the result: each is padded by the
    model's rule (`KAdapterModel.padded_length`)."""
    model, tokenizer, task, labels, config = loaded
    label_index = {label: i for i, label in enumerate(labels)}
    examples = []
    with progress() as bar:
        encoding = bar.add_task("encoding", total=len(records), unit="examples")
        for i, rec in enumerate(records):
            known = located(task.without_unknown_labels(rec, label_index), where_of(rec, i))
            for ex in _record_examples(task, tokenizer, known, label_index, config["max_length"],
                                       config["marker_style"], Path(source), i):
                ex["gold"] = task.gold(rec)
                examples.append(ex)
            bar.advance(encoding)
    objective = TaskObjective(tokenizer.pad_token_id or 0, task, labels, model.body.padded_length(config["max_length"]))
    # Predicting never scores: records may carry no gold at all.
    outputs = predict(model, objective, examples, TrainConfig(batch_size=batch_size, device=device),
                      description="predicting")
    return task.scored_lines(task.prediction_lines(outputs, examples), outputs, examples, labels, scores)
