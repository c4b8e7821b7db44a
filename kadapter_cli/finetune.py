"""Downstream fine-tuning, evaluation and prediction: `finetune`, `evaluate`, `predict`.

The model is the backbone (trainable by default, as in the paper; `--freeze-backbone` freezes
it), the frozen knowledge adapters (eval mode: no dropout, unlike the original), their fusion and
the task's head. The checkpoint is selected on dev. A finetuned folder holds everything needed to
load it again: the backbone's config, the tokenizer, every weight, the labels and the task.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kadapter_cli import artifacts
from kadapter_cli.adapter import AdapterConfig, KnowledgeAdapter, load_adapter, read_safetensors
from kadapter_cli.backbone import backbone_shape, load_backbone, load_tokenizer
from kadapter_cli.encoding import SPACED_MARKERS
from kadapter_cli.errors import BadInput
from kadapter_cli.model import KAdapterModel, check_composable, check_fits_backbone, marker_style
from kadapter_cli.model_card import finetuned_card, write_card
from kadapter_cli.objectives import TaskObjective
from kadapter_cli.progress import info, progress
from kadapter_cli.tasks import get_task
from kadapter_cli.training import TrainConfig, evaluate, remove_checkpoints, train

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LABELS = "labels.json"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
DEFAULT_BACKBONE = "roberta-large"


class TaskModel(nn.Module):
    """`KAdapterModel` + a task head reading the fused features at the task's marker positions."""

    def __init__(self, body: KAdapterModel, head: nn.Module, position_keys: Sequence[str]):
        super().__init__()
        self.body = body
        self.head = head
        self.position_keys = tuple(position_keys)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        features = batch.get("features")
        if features is not None:
            features = (features[:-1], features[-1])
        if not self.position_keys:  # a head that reads the whole sequence
            return self.head(self.body(batch["input_ids"], batch["attention_mask"], features))
        # The heads read only the marker positions: the body computes just those rows (B, P, H),
        # and the head then reads row i for its i-th position argument.
        positions = torch.stack([batch[k] for k in self.position_keys], dim=1).long()
        h = self.body(batch["input_ids"], batch["attention_mask"], features, positions)
        return self.head(h, *(torch.full_like(positions[:, i], i) for i in range(len(self.position_keys))))


# ---------------------------------------------------------------- adapters and compositions


@dataclass
class AdapterSet:
    """The adapters a run uses (in order) and how they are fused."""

    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    fusion: str = "concat"


def resolve_adapters(spec: str | None, workdir: Path, fusion: str | None) -> AdapterSet:
    """`fac,lin` (names or paths), a composition folder, or empty/`none` for the baseline."""
    if spec is None or spec.strip() in ("", "none", "base"):
        return AdapterSet([], [], fusion or "concat")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1:
        path = artifacts.resolve_artifact(parts[0], workdir, "compositions")
        if (path / "composition.json").is_file():
            comp = artifacts.read_json(path / "composition.json")
            names = [a["name"] for a in comp["adapters"]]
            return AdapterSet(names, [path / "adapters" / n for n in names], fusion or comp["fusion"])
    paths = [artifacts.resolve_artifact(p, workdir, "adapters") for p in parts]
    names = [Path(p).name for p in parts]
    if len(set(names)) != len(names):
        raise BadInput(f"two adapters share the name {names}: rename one with --name when training it")
    return AdapterSet(names, paths, fusion or "concat")


def load_adapters(adapter_set: AdapterSet) -> tuple[dict[str, KnowledgeAdapter], list[AdapterConfig]]:
    adapters, configs = {}, []
    for name, path in zip(adapter_set.names, adapter_set.paths):
        adapter, config, _ = load_adapter(path)
        adapters[name] = adapter
        configs.append(config)
    check_composable(configs, adapter_set.paths)
    return adapters, configs


def compose(adapter_names: Sequence[str], workdir: Path, out: Path, fusion: str, overwrite: bool = False) -> dict:
    """Checks that adapters compose and writes `compositions/<a>+<b>/` (adapters hard-linked in)."""
    if fusion not in ("concat", "add", "gated"):
        raise BadInput(f"--fusion must be concat, add or gated, got {fusion!r}")
    adapter_set = resolve_adapters(",".join(adapter_names), workdir, fusion)
    _, configs = load_adapters(adapter_set)
    first = configs[0]
    for config, path in zip(configs[1:], adapter_set.paths[1:]):
        if config.backbone_hidden_size != first.backbone_hidden_size:
            raise BadInput(f"adapter width differs: {first.backbone_hidden_size} vs {config.backbone_hidden_size}", path)
    with artifacts.atomic_output(out, overwrite=overwrite) as tmp:
        for name, path in zip(adapter_set.names, adapter_set.paths):
            _link_tree(path, tmp / "adapters" / name)
        comp = {"fusion": fusion, "backbone": first.backbone, "marker_style": marker_style(configs),
                "adapters": [{"name": n, "source": str(p), "kind": c.kind, "tap_layers": c.tap_layers,
                              "adapter_width": c.adapter_width}
                             for n, p, c in zip(adapter_set.names, adapter_set.paths, configs)]}
        artifacts.write_json(tmp / "composition.json", comp)
        artifacts.write_manifest(tmp, "composition", config={"adapters": list(adapter_names), "fusion": fusion},
                                 inputs=artifacts.sha256_inputs(adapter_set.paths), stats={"adapters": len(configs)})
    return comp


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (copies across file systems) of an artifact folder: a composition is self-contained."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(f)
        except OSError:
            shutil.copy2(f, target)


# ---------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneSpec:
    task: str
    data: Path
    out: Path
    adapters: AdapterSet
    backbone: str | None = None
    freeze_backbone: bool = False
    max_length: int = 256
    task_options: dict[str, Any] = field(default_factory=dict)
    cache_features: str = "auto"
    cache_budget_gb: float | None = None


def read_task_data(task, data_dir: Path, need_train: bool = True) -> dict[str, list[dict]]:
    files = task.task_files(data_dir)
    splits = {}
    for split, path in files.items():
        if path.exists():
            splits[split] = task.read(path)
        elif split in ("train", "dev") and need_train:
            raise BadInput(f"the {split} split is missing (expected {path.name})", data_dir)
    return splits


def build_task_model(task, labels: Sequence[str], adapters: dict[str, KnowledgeAdapter], fusion: str,
                     backbone: nn.Module) -> TaskModel:
    hidden = backbone_shape(backbone).hidden_size
    body = KAdapterModel(backbone, adapters, fusion if adapters else None, hidden)
    return TaskModel(body, task.build_head(hidden, len(labels)), task.position_keys)


def encode_split(task, tokenizer, records: Sequence[dict], labels: Sequence[str], max_length: int,
                 path: Path, description: str, marker_style: str = SPACED_MARKERS) -> list[dict]:
    label_index = {label: i for i, label in enumerate(labels)}
    task.check_labels(records, labels, path)
    out = []
    with progress() as bar:
        t = bar.add_task(description, total=len(records))
        for i, rec in enumerate(records):
            try:
                out.append(task.encode(tokenizer, rec, label_index, max_length, marker_style))
            except ValueError as e:
                raise BadInput(str(e), path, i) from None
            bar.advance(t)
    return out


def finetune(spec: FinetuneSpec, config: TrainConfig, overwrite: bool = False, resume: bool = False,
             manifest_config: dict | None = None) -> dict[str, Any]:
    """Fine-tunes a task model, selects on dev, writes the finetuned artifact; returns its metrics."""
    task = get_task(spec.task, **spec.task_options)
    splits = read_task_data(task, spec.data)
    files = task.task_files(spec.data)
    train_records = task.prepare_train(splits["train"])
    labels = task.label_vocab(train_records, spec.data)

    adapters, adapter_configs = load_adapters(spec.adapters)
    backbone_id = spec.backbone or (adapter_configs[0].backbone if adapter_configs else DEFAULT_BACKBONE)
    tokenizer = load_tokenizer(backbone_id)
    backbone = load_backbone(backbone_id)
    for config_ in adapter_configs:
        check_fits_backbone(config_, backbone_shape(backbone))

    splits["train"] = train_records
    if config.limit:  # the first N of every split, before the work of encoding them
        splits = {k: v[: config.limit] for k, v in splits.items()}
    markers = marker_style(adapter_configs)  # encode the entity markers as the adapters learned them
    encoded = {split: encode_split(task, tokenizer, recs, labels, spec.max_length, files[split], f"encoding {split}",
                                   markers)
               for split, recs in splits.items()}

    torch.manual_seed(config.seed)  # fusion and head initial weights follow the seed
    model = build_task_model(task, labels, adapters, spec.adapters.fusion, backbone)
    model.body.freeze_adapters()
    if spec.freeze_backbone:
        model.body.freeze_backbone()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_to = model.body.padded_length(spec.max_length)
    objective = TaskObjective(pad_id, task, labels, pad_to)

    with artifacts.atomic_output(spec.out, overwrite=overwrite, resume=resume, resumable=True) as run_dir:
        cached = None
        if spec.freeze_backbone:
            cached = attach_task_feature_cache(model, list(encoded.values()), spec, pad_id, config, run_dir, pad_to)
        result = train(model, objective, encoded["train"], encoded["dev"], config, run_dir, resume=resume,
                       hparams=manifest_config)
        results: dict[str, dict] = {}
        for split in ("dev", "test"):
            if split not in encoded:
                continue
            metrics, outputs = evaluate(model, objective, encoded[split], config)
            results[split] = metrics
            write_predictions(run_dir / f"predictions-{split}.jsonl", encoded[split], outputs)
        remove_checkpoints(run_dir)
        (run_dir / "best.safetensors").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "feature-cache", ignore_errors=True)
        save_finetuned(run_dir, model, tokenizer, task, labels, spec, backbone_id, adapter_configs)
        artifacts.write_json(run_dir / "metrics.json", results)
        stats = {"best_step": result.best_step, "steps": result.steps, "throughput": result.throughput,
                 "feature_cache": cached or "off", **{f"{k}_examples": len(v) for k, v in encoded.items()},
                 "parameters": {row["component"]: row for row in model.body.parameter_table()}}
        task_inputs = artifacts.sha256_inputs([p for p in files.values() if p.exists()])
        inputs = task_inputs + artifacts.sha256_inputs(spec.adapters.paths)
        write_card(run_dir, finetuned_card(spec.out.name, task, artifacts.read_json(run_dir / CONFIG), labels, results,
                                           inputs, manifest_config or {}, stats, task_inputs=task_inputs))
        artifacts.write_manifest(run_dir, "finetuned", config=manifest_config or {}, inputs=inputs, stats=stats)
    return results


def attach_task_feature_cache(model: TaskModel, splits: Sequence[list[dict]], spec: FinetuneSpec, pad_id: int,
                              config: TrainConfig, run_dir: Path, pad_to: int | None = None) -> str | None:
    """With a frozen backbone, its tapped states (+ last) are computed once per example."""
    from kadapter_cli.feature_cache import attach_cache

    body = model.body
    device = torch.device("cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu")
    if spec.cache_features != "off":
        body.backbone.to(device)

    def compute(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            tapped, last = body.backbone_features(input_ids.to(device), attention_mask.to(device))
            return [t.clone() for t in (*tapped, last)]

    return attach_cache(splits, compute, n_states=len(body.tap_layers) + 1, hidden=body.hidden, pad_id=pad_id,
                        batch_size=max(config.batch_size, 32), mode=spec.cache_features,
                        budget_gib=spec.cache_budget_gb, folder=run_dir / "feature-cache", pad_to=pad_to)


def write_predictions(path: Path, examples: Sequence[dict], outputs: Sequence[list[str]]) -> None:
    artifacts.write_jsonl(path, ({"index": i, "gold": list(ex.get("gold", [])), "pred": list(pred)}
                                 for i, (ex, pred) in enumerate(zip(examples, outputs))))


# ---------------------------------------------------------------- the finetuned artifact


def save_finetuned(folder: Path, model: TaskModel, tokenizer, task, labels: Sequence[str], spec: FinetuneSpec,
                   backbone_id: str, adapter_configs: Sequence[AdapterConfig]) -> None:
    from safetensors.torch import save_file

    body = model.body
    body.backbone.config.save_pretrained(folder / BACKBONE_DIR)
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    artifacts.write_json(folder / LABELS, list(labels))
    artifacts.write_json(folder / CONFIG, {
        "task": task.name,
        "task_options": {k: getattr(task, k) for k in task.options},
        "backbone": backbone_id,
        "max_length": spec.max_length,
        "fusion": body.fusion_mode,
        "marker_style": marker_style(adapter_configs),
        "freeze_backbone": spec.freeze_backbone,
        "adapters": [{"name": n, "config": c.to_dict()} for n, c in zip(spec.adapters.names, adapter_configs)],
    })


def load_finetuned(folder: str | Path) -> tuple[TaskModel, Any, Any, list[str], dict]:
    """`(model, tokenizer, task, labels, config)` from a finetuned folder alone."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    artifacts.read_manifest(folder)
    config = artifacts.read_json(folder / CONFIG)
    labels = artifacts.read_json(folder / LABELS)
    task = get_task(config["task"], **config.get("task_options", {}))
    tokenizer = load_tokenizer(str(folder / TOKENIZER_DIR))
    backbone_config = AutoConfig.from_pretrained(str(folder / BACKBONE_DIR))
    with torch.device("meta"):
        try:
            backbone = AutoModel.from_config(backbone_config, attn_implementation="sdpa")
        except ValueError:
            backbone = AutoModel.from_config(backbone_config)
        adapters = {a["name"]: KnowledgeAdapter(AdapterConfig.from_dict(a["config"])) for a in config["adapters"]}
        model = build_task_model(task, labels, adapters, config["fusion"] or "concat", backbone)
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
    model.body.freeze_adapters()
    model.eval()
    # Folders written before the field existed: their adapters' style (kadapter's, then).
    config.setdefault("marker_style", marker_style([a.config for a in adapters.values()]))
    return model, tokenizer, task, labels, config


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
                       batch_size: int = 32, device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Recomputes a split's metrics from a saved model; writes predictions (+ metrics) when `out` is set."""
    model, tokenizer, task, labels, config = load_finetuned(model_dir)
    if data_dir is None:
        raise BadInput("--data is required (the folder with the task's split files)")
    path = task.task_files(data_dir)[split]
    records = task.read(path)
    examples = encode_split(task, tokenizer, records, labels, config["max_length"], path, f"encoding {split}",
                            config["marker_style"])
    objective = TaskObjective(tokenizer.pad_token_id or 0, task, labels, model.body.padded_length(config["max_length"]))
    metrics, outputs = evaluate(model, objective, examples, TrainConfig(batch_size=batch_size, device=device))
    if out is not None:
        with artifacts.atomic_output(out, overwrite=overwrite) as tmp:
            write_predictions(tmp / f"predictions-{split}.jsonl", examples, outputs)
            artifacts.write_json(tmp / "metrics.json", {split: metrics})
            artifacts.write_manifest(tmp, "evaluation", config={"model": str(model_dir), "split": split},
                                     inputs=artifacts.sha256_inputs([path]), stats={"examples": len(examples)})
    return {"task": task.name, "split": split, "metrics": metrics, "headline": list(task.headline_metrics)}


def predict_records(model_dir: Path, input_path: Path, batch_size: int = 32, device: str = "auto") -> list[dict]:
    """Labels new records (the task's format, JSON list or JSON Lines); gold labels are optional."""
    model, tokenizer, task, labels, config = load_finetuned(model_dir)
    records = task.read(input_path, labeled=False)
    label_index = {label: i for i, label in enumerate(labels)}
    examples = []
    for i, rec in enumerate(records):
        known = [g for g in task.gold(rec) if g in label_index]
        try:
            ex = task.encode(tokenizer, {**rec, **_only_known_labels(task, rec, label_index)}, label_index,
                             config["max_length"], config["marker_style"])
        except ValueError as e:
            raise BadInput(str(e), input_path, i) from None
        ex["gold"] = known
        examples.append(ex)
    objective = TaskObjective(tokenizer.pad_token_id or 0, task, labels, model.body.padded_length(config["max_length"]))
    _, outputs = evaluate(model, objective, examples, TrainConfig(batch_size=batch_size, device=device))
    return [{"index": i, "gold": task.gold(rec), "pred": pred} for i, (rec, pred) in enumerate(zip(records, outputs))]


def _only_known_labels(task, rec: dict, label_index: dict[str, int]) -> dict:
    """Prediction inputs may carry labels the model never saw; encoding ignores them."""
    if task.multilabel:
        return {"labels": [g for g in rec.get("labels", []) if g in label_index]}
    relation = rec.get("relation")
    return {"relation": relation if relation in label_index else None}
