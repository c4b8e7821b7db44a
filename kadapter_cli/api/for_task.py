"""`KAdapterForTask`: a finetuned K-Adapter model from Python, and through Hugging Face's Auto classes.

A finetuned folder is at once kadapter's artifact and a Hugging Face model folder: its config.json
carries `model_type: kadapter` beside kadapter's own keys, and its tokenizer files sit beside it.
`register()` (run by `import kadapter`) teaches `AutoConfig` and `AutoModel` that model type, so
`AutoModel.from_pretrained(folder)` gives a `KAdapterForTask` and `AutoTokenizer.from_pretrained(folder)`
its tokenizer. No code is read from the folder (no `trust_remote_code`).

Loading never goes through transformers' weight loader: `from_pretrained` is kadapter's loader
(`stages.finetune.load_finetuned`), which builds the modules on the meta device and assigns every
stored tensor, checking that none is missing or unexpected. Nothing is initialised after the
weights are in place, so transformers' re-initialisation of custom modules after loading
(transformers#46620) cannot happen here; `_init_weights` is a no-op because every part initialises
itself when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from kadapter_cli.api.features import EncodesText
from kadapter_cli.artifacts.cards import finetuned_card, write_card
from kadapter_cli.artifacts.manifest import write_manifest
from kadapter_cli.artifacts.output import atomic_output
from kadapter_cli.artifacts.sources import model_folder
from kadapter_cli.errors import BadInput, BadParameter
from kadapter_cli.modeling.task_model import TaskModel
from kadapter_cli.stages.finetune import (
    ARCHITECTURE,
    BACKBONE_CONFIG,
    MODEL_TYPE,
    Finetuned,
    backbone_config_dict,
    load_finetuned,
    predict_loaded,
    task_model_from_config,
    write_finetuned,
)
from kadapter_cli.stages.options import EVAL_BATCH_SIZE
from kadapter_cli.tasks import get_task

try:  # transformers 5 spells it PreTrainedConfig; PretrainedConfig is the older name
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover
    from transformers import PretrainedConfig as PreTrainedConfig

FUSED_PART = "fused"
SCORE_MODES = {False: "none", True: "predicted", "none": "none", "predicted": "predicted", "all": "all"}
# What AutoModel and pipelines pass along for a Hub repository; a local folder has no use for them.
_HUB_ARGUMENTS = {"cache_dir", "force_download", "local_files_only", "proxies", "subfolder", "revision", "token",
                  "trust_remote_code", "code_revision", "adapter_kwargs", "_from_auto", "_from_pipeline",
                  "_commit_hash", "use_safetensors"}


class KAdapterConfig(PreTrainedConfig):
    """A finetuned folder's config.json as Hugging Face reads it: the task and its options, the
    backbone (its id, fingerprint and Hugging Face config), the adapters' configs, the fusion, the
    sequence length, the entity-marker style and the labels."""

    model_type = MODEL_TYPE

    task: str | None = None
    task_options: dict | None = None
    backbone: str | None = None
    backbone_fingerprint: dict | None = None
    backbone_config: dict | None = None
    adapters: list | None = None
    fusion: str | None = None
    max_length: int = 256
    marker_style: str | None = None
    freeze_backbone: bool = False
    labels: list | None = None

    def kadapter_dict(self) -> dict[str, Any]:
        """The kadapter keys of config.json (what `stages.finetune.write_finetuned` writes)."""
        keys = ("task", "task_options", "backbone", "backbone_fingerprint", BACKBONE_CONFIG, "adapters", "fusion",
                "max_length", "marker_style", "freeze_backbone")
        return {key: getattr(self, key) for key in keys}


@dataclass
class KAdapterTaskOutput(ModelOutput):
    """`last_hidden_state`: the fine-tuned fused representation (B, L, H), or (B, C, L, H) for C
    candidates; `logits`: the task head's outputs when the inputs hold what the head reads (the
    task's marker positions: `mention_pos`, `subj_pos`/`obj_pos`, ...), else None."""

    last_hidden_state: torch.Tensor | None = None
    logits: Any = None


class KAdapterForTask(EncodesText, PreTrainedModel):
    """A finetuned model: backbone, frozen adapters, fusion and the task's head, in eval mode.

    - `predict(records, scores=False)`: what `kadapter predict` prints for the same records.
    - `encode(texts, pool=None)`: the fine-tuned fused representation, (N, L, H) per token or
      (N, H) pooled (see `EncodesText.encode`).
    - `forward(input_ids, attention_mask, **task_inputs)`: a `KAdapterTaskOutput`.
    - `save_pretrained(folder)`: a finetuned folder that `from_pretrained` and `AutoModel` load.
    """

    config_class = KAdapterConfig
    base_model_prefix = "body"
    main_input_name = "input_ids"

    def __init__(self, config: KAdapterConfig, loaded: Finetuned | None = None):
        super().__init__(config)
        if loaded is None:  # from a config alone (`AutoModel.from_config`): the architecture, new weights
            from transformers import AutoConfig

            task = get_task(config.task, **(config.task_options or {}))
            values = dict(config.backbone_config or {})
            backbone_config = AutoConfig.for_model(values.pop("model_type"), **values)
            model = task_model_from_config(config.kadapter_dict(), task, config.labels or [], backbone_config)
            loaded = Finetuned(model, None, task, list(config.labels or []), config.kadapter_dict())
        self.body = loaded.model.body
        self.head = loaded.model.head
        self.task = loaded.task
        self.tokenizer = loaded.tokenizer
        self.labels = list(loaded.labels)
        self.max_length = int(config.max_length)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: every part initialised itself when built, and loading assigns every weight."""

    # ------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any,
                        task_options: dict[str, Any] | None = None, dtype: Any = None, device: Any = None,
                        **kwargs: Any) -> "KAdapterForTask":
        """The model of a finetuned folder (any kadapter version's), in eval mode.

        `task_options` override how new records are read and decoded (e.g.
        `{"max_answer_length": 20}`); `dtype` and `device` (or `device_map`, one device) place it.
        `AutoModel.from_pretrained(folder)` comes here after `import kadapter`.
        """
        kwargs.pop("config", None)  # AutoModel passes the config it read: the folder is read here again
        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)
        device = device if device is not None else kwargs.pop("device_map", None)
        unexpected = sorted(set(kwargs) - _HUB_ARGUMENTS)
        if model_args or unexpected:
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: "
                            f"{', '.join(unexpected) or f'{len(model_args)} positional'}")
        folder = model_folder(pretrained_model_name_or_path)
        loaded = load_finetuned(folder, task_options)
        values = {**loaded.config, "labels": loaded.labels}
        values.setdefault(BACKBONE_CONFIG, backbone_config_dict(loaded.model.body.backbone.config))  # older folders
        config = KAdapterConfig(**{k: v for k, v in values.items() if k not in ("model_type", "architectures")})
        config.architectures = [ARCHITECTURE]
        config._name_or_path = str(folder)
        with torch.device("meta"):  # the modules exist already: nothing to allocate, nothing to initialise
            model = cls(config, loaded)
        if dtype not in (None, "auto"):
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device is not None:
            model.to(device)
        return model.eval()

    def save_pretrained(self, save_directory: str | Path, overwrite: bool = False, **kwargs: Any) -> None:
        """Writes a finetuned folder (config.json, model.safetensors, labels.json, the tokenizer, a
        card and a manifest) that `from_pretrained` and `AutoModel.from_pretrained` load, every
        tensor as it is here. An existing folder is replaced only with `overwrite` (an empty one
        is used as it is); the folder appears complete or not at all."""
        unsupported = sorted(k for k, v in kwargs.items() if v and k not in ("safe_serialization", "is_main_process"))
        if unsupported:
            raise TypeError(f"save_pretrained does not support: {', '.join(unsupported)}")
        folder = Path(save_directory)
        empty = folder.is_dir() and not any(folder.iterdir())
        with atomic_output(folder, overwrite=overwrite or empty) as tmp:
            config = self.config.kadapter_dict()
            write_finetuned(tmp, self._task_model(), self.tokenizer, self.labels, config)
            write_card(tmp, finetuned_card(folder.name, self.task, config, self.labels, {}, [], {}, {}))
            write_manifest(tmp, "finetuned", config={"saved_from": self.name_or_path})

    # ------------------------------------------------------------ using it

    def predict(self, records: Sequence[dict], scores: bool | str = False,
                batch_size: int = EVAL_BATCH_SIZE) -> list[dict]:
        """One prediction dict per record, in input order: exactly what `kadapter predict` prints
        for a file holding the same records (a JSON list), at any `batch_size`.

        `records` are in the task's format (e.g. entity typing: `{"sent", "start", "end"}`; gold
        `labels` optional). `scores=True` adds each predicted label's probability (`--scores`),
        `scores="all"` every label's (`--all-scores`)."""
        if scores not in SCORE_MODES:
            raise BadParameter("{scores} must be False, True or 'all', got {value!r}", scores)
        if self.tokenizer is None:
            raise BadInput("this model has no tokenizer (built from a config alone): load it with from_pretrained")
        normalized = self.task.read_records(list(records), labeled=False)
        return predict_loaded(self._finetuned(), normalized, batch_size, self.device.type, SCORE_MODES[scores])

    def feature_parts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {FUSED_PART if self.body.adapters else "backbone": self.body(input_ids, attention_mask)}

    def padded_length(self) -> int | None:
        return self.body.padded_length(self.max_length)

    @property
    def part_sizes(self) -> dict[str, int]:
        return {FUSED_PART if self.body.adapters else "backbone": self.body.hidden}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **task_inputs: Any) -> KAdapterTaskOutput:
        """input_ids, attention_mask (B, L), or (B, C, L) for C candidates, as the task encodes them."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        flat = self.body(input_ids.reshape(-1, input_ids.shape[-1]), attention_mask.reshape(-1, input_ids.shape[-1]))
        hidden = flat.reshape(*input_ids.shape, flat.shape[-1])
        logits = None
        if all(key in task_inputs for key in self.task.position_keys):
            batch: Mapping[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, **task_inputs}
            logits = self._task_model()(dict(batch))
        return KAdapterTaskOutput(last_hidden_state=hidden, logits=logits)

    # ------------------------------------------------------------ helpers

    def _task_model(self) -> TaskModel:
        """The body and head as kadapter's task model (the same modules, in this model's mode)."""
        return TaskModel(self.body, self.head, self.task).train(self.training)

    def _finetuned(self) -> Finetuned:
        return Finetuned(self._task_model(), self.tokenizer, self.task, self.labels, self.config.kadapter_dict())


def register() -> None:
    """Teaches `AutoConfig` and `AutoModel` the `kadapter` model type (idempotent)."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(MODEL_TYPE, KAdapterConfig, exist_ok=True)
    AutoModel.register(KAdapterConfig, KAdapterForTask, exist_ok=True)
