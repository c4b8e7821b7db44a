"""Knowledge probing (paper §4.4, App. D): a linear masked-LM layer over the frozen K-Adapter, then LAMA.

The probe's features are what the paper's K-Adapter outputs: the backbone's last hidden state and
each probed adapter's output, side by side, `[h ; a_1 ; ... ; a_k]`. One new `Linear` maps them to
the vocabulary; nothing else trains. With `init_from_lm_head` the backbone's block goes through the
backbone's own (frozen) LM-head transform and starts from its decoder, the adapters' blocks from
zero, so training starts at the pretrained LM; the baseline `pretrained` probe is that layer as
loaded, untrained, over the backbone alone.

Training (`train_probe`) runs the project's one loop with `MaskedLMObjective`: dynamic masking
(a fresh 15 % of each sequence's tokens at every epoch; of them 80 % become the mask token, 10 % a
random token, 10 % stay), logits only at the masked rows — never B × L × V — and the frozen parts
under `inference_mode`. Masks come from the loop's seeded RNG, whose state every checkpoint keeps,
so `--resume` is exact. The feature cache does not apply here: dynamic masking changes the frozen
encoder's input every epoch, so its states are never reused.

Evaluation (`evaluate_probes`) scores LAMA facts (`kadapter_cli.data.lama`): the query's mask row only,
restricted to the vocabulary in use; probes on the same backbone share one backbone pass per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from kadapter_cli.artifacts.io import read_json, sha256_inputs, write_json, write_jsonl
from kadapter_cli.artifacts.manifest import read_manifest, write_manifest
from kadapter_cli.artifacts.output import (
    atomic_output,
    check_output,
    nothing_to_resume,
    remove_checkpoints,
    training_output,
)
from kadapter_cli.data import lama
from kadapter_cli.data.corpus import encode_corpus, read_corpus
from kadapter_cli.data.padding import pad_ids
from kadapter_cli.errors import BadInput, BadParameter, ParamText
from kadapter_cli.modeling.adapter import AdapterConfig, KnowledgeAdapter, read_safetensors
from kadapter_cli.modeling.backbone import backbone_shape, backbone_states, load_backbone, load_tokenizer
from kadapter_cli.modeling.kadapter import check_fits_backbone
from kadapter_cli.modeling.probe_model import ProbeModel, load_lm_head
from kadapter_cli.processes import is_main_process
from kadapter_cli.progress import progress
from kadapter_cli.stages.compose import AdapterSet, load_adapters, recorded_backbone
from kadapter_cli.stages.options import LAMA_BATCH_SIZE, LAMA_TOP_K
from kadapter_cli.tasks import metrics
from kadapter_cli.training.config import PROBE_DEFAULTS, TrainConfig
from kadapter_cli.training.loop import train
from kadapter_cli.training.objectives import MaskedLMObjective
from kadapter_cli.training.setup import make_accelerator

PROBE_CONFIG = "probe_config.json"
PROBE_WEIGHTS = "probe.safetensors"
PREDICTIONS = "predictions-{probe}.jsonl"



# ---------------------------------------------------------------- training and the probe artifact


@dataclass
class ProbeTrainingSpec:
    """What to build, apart from the loop's own options (`TrainConfig`)."""

    out: Path
    adapters: AdapterSet
    backbone: str | None
    corpus: Path | None
    max_length: int = PROBE_DEFAULTS["max_length"]
    init_from_lm_head: bool = False
    pretrained_lm_head: bool = False


@dataclass
class Probe:
    """A loaded probe: its model (no backbone inside until `attach`), tokenizer and config."""

    name: str
    folder: Path
    model: ProbeModel
    tokenizer: Any
    config: dict = field(default_factory=dict)  # probe_config.json


def build_probe_model(spec: ProbeTrainingSpec, backbone_id: str, adapters: dict[str, KnowledgeAdapter],
                      seed: int, backbone_dtype: torch.dtype | None = None,
                      pad_vocab_to: int = 1) -> tuple[ProbeModel, Any]:
    """`backbone_dtype`: the compute dtype of a bf16/fp16 run (the backbone is frozen), None for fp32;
    `pad_vocab_to`: see `ProbeModel` (`VOCAB_MULTIPLE` on CUDA)."""
    tokenizer = load_tokenizer(backbone_id)
    backbone = load_backbone(backbone_id, backbone_dtype)
    shape = backbone_shape(backbone)
    for adapter in adapters.values():
        check_fits_backbone(adapter.config, shape)
    vocab_size = int(backbone.get_input_embeddings().weight.shape[0])
    transform, weight, bias = (None, None, None)
    if spec.init_from_lm_head or spec.pretrained_lm_head:
        transform, weight, bias = load_lm_head(backbone_id)
    torch.manual_seed(seed)  # the layer's initial weights follow the seed
    model = ProbeModel(backbone, adapters, shape.hidden_size, vocab_size, transform, pad_vocab_to)
    if weight is not None:
        with torch.no_grad():
            model.mlm.weight.zero_()  # the adapters' blocks start at 0: training starts at the pretrained LM
            model.mlm.weight[:vocab_size, : shape.hidden_size] = weight
            model.mlm.bias.zero_()
            model.mlm.bias[:vocab_size] = bias
    return model, tokenizer


def train_probe(spec: ProbeTrainingSpec, config: TrainConfig, resume: bool = False, overwrite: bool = False,
                manifest_config: dict | None = None) -> dict[str, Any]:
    """Trains the probe's masked-LM layer on `spec.corpus` (or, `pretrained_lm_head`, takes the
    backbone's own) and writes `probes/<name>/`; returns the summary."""
    if nothing_to_resume(spec.out, resume=resume, overwrite=overwrite):
        return read_json(spec.out / "metrics.json")
    if spec.pretrained_lm_head and spec.adapters.names:
        raise BadParameter("{pretrained_lm_head:True} is the baseline over the backbone alone: give no {adapters}",
                           spec.adapters.names)
    if not spec.pretrained_lm_head and spec.corpus is None:
        raise BadParameter("{corpus} FILE is needed to train the probe (or {pretrained_lm_head:True} for the baseline)")
    check_output(spec.out, overwrite=overwrite, resume=resume, resumable=True)  # a refusal before the model loads
    adapters, adapter_configs = load_adapters(spec.adapters)
    backbone_id = spec.backbone or (recorded_backbone(adapter_configs[0], spec.adapters.names[0])
                                    if adapter_configs else None)
    if backbone_id is None:
        raise BadParameter("{backbone} is needed for a probe without adapters")
    lines = read_corpus(spec.corpus) if not spec.pretrained_lm_head else []
    from kadapter_cli.modeling.probe_model import VOCAB_MULTIPLE
    from kadapter_cli.training.setup import compute_dtype, uses_cuda

    model, tokenizer = build_probe_model(spec, backbone_id, adapters, config.seed,
                                         compute_dtype(config.precision, config.device),
                                         VOCAB_MULTIPLE if uses_cuda(config.device) else 1)
    if tokenizer.mask_token_id is None:
        raise BadInput(f"the tokenizer of '{backbone_id}' has no mask token")

    processes = make_accelerator(config)  # joins the other processes of `accelerate launch` / `torchrun`
    with training_output(spec.out, processes, overwrite=overwrite, resume=resume) as run_dir:
        summary: dict[str, Any] = {"trained": not spec.pretrained_lm_head}
        inputs: list[Path] = list(spec.adapters.paths)
        if not spec.pretrained_lm_head:
            examples = encode_corpus(tokenizer, lines, spec.max_length)
            if not examples:
                raise BadInput("the corpus has no tokens to mask", spec.corpus)
            objective = MaskedLMObjective(tokenizer.pad_token_id or 0, tokenizer.mask_token_id,
                                          model.vocab_size, model.body.padded_length(spec.max_length))
            result = train(model, objective, examples, None, config, run_dir, resume=resume, hparams=manifest_config)
            summary.update({"steps": result.steps, "throughput": result.throughput, "lines": len(lines), "sequences": len(examples),
                            "tokens": sum(len(e["input_ids"]) for e in examples)})
            inputs.append(spec.corpus)
        if not is_main_process():  # the main process writes the artifact
            return summary
        remove_checkpoints(run_dir)
        (run_dir / "best.safetensors").unlink(missing_ok=True)
        save_probe(run_dir, model, spec, backbone_id, adapter_configs)
        write_json(run_dir / "metrics.json", summary)
        stats = {**summary, "trainable_parameters": model.vocab_size * (model.mlm.in_features + 1)}
        write_manifest(run_dir, "probe", config=manifest_config or {},
                                 inputs=sha256_inputs(inputs), stats=stats)
    return summary


def save_probe(folder: Path, model: ProbeModel, spec: ProbeTrainingSpec, backbone_id: str,
               adapter_configs: Sequence[AdapterConfig]) -> None:
    """`probe_config.json` + `probe.safetensors` (the layer, the adapters, the LM-head transform):
    everything but the backbone, which the config names."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.probe_state().items()}
    save_file(state, str(folder / PROBE_WEIGHTS), metadata={"format": "pt"})
    write_json(folder / PROBE_CONFIG, {
        "backbone": backbone_id,
        "adapters": [{"name": n, "config": c.to_dict()} for n, c in zip(spec.adapters.names, adapter_configs)],
        "features": ["backbone"] + [f"adapter:{n}" for n in spec.adapters.names],
        "lm_head_transform": model.transform is not None,
        "pretrained_lm_head": spec.pretrained_lm_head,
        "vocab_size": model.vocab_size,
        "hidden": model.body.hidden,
        "max_length": spec.max_length,
    })


def load_probe(folder: Path, backbones: dict[str, nn.Module] | None = None,
               backbone_dtype: torch.dtype | None = None) -> Probe:
    """A probe artifact; its backbone is loaded (or taken from `backbones`, shared by id), in
    `backbone_dtype` when given (the compute dtype of a bf16/fp16 evaluation: it is frozen)."""
    folder = Path(folder)
    read_manifest(folder)
    config = read_json(folder / PROBE_CONFIG)
    backbone_id = config["backbone"]
    backbones = {} if backbones is None else backbones
    if backbone_id not in backbones:
        backbones[backbone_id] = load_backbone(backbone_id, backbone_dtype).eval()
    backbone = backbones[backbone_id]
    adapters = {a["name"]: KnowledgeAdapter(AdapterConfig.from_dict(a["config"])) for a in config["adapters"]}
    transform = load_lm_head(backbone_id)[0] if config["lm_head_transform"] else None
    model = ProbeModel(backbone, adapters, int(config["hidden"]), int(config["vocab_size"]), transform)
    state = read_safetensors(folder / PROBE_WEIGHTS)
    expected = {k for k in model.state_dict() if not k.startswith("body.backbone.")}
    if set(state) != expected:
        raise BadInput(f"weights disagree with {PROBE_CONFIG}: missing {sorted(expected - set(state))[:3]}, "
                       f"unexpected {sorted(set(state) - expected)[:3]}", folder / PROBE_WEIGHTS)
    model.load_state_dict(state, strict=False)
    return Probe(folder.name, folder, model.eval(), load_tokenizer(backbone_id), config)


# ---------------------------------------------------------------- evaluation on LAMA


@dataclass
class LamaSpec:
    trex: Path | None = None
    google_re: Path | None = None
    common_vocab: Path | None = None
    uhn: bool = False
    templates: dict[str, str] = field(default_factory=dict)
    top_k: int = LAMA_TOP_K
    batch_size: int = LAMA_BATCH_SIZE
    query_prefix_space: bool = False  # byte-level BPE: encode the query's first word after a space


def read_lama(spec: LamaSpec) -> list[tuple[lama.RelationFacts, list]]:
    if spec.trex is None and spec.google_re is None:
        raise BadInput(ParamText("give the LAMA data: {trex} DIR and/or {google_re} DIR"))
    relations = []
    if spec.trex is not None:
        relations += lama.read_trex(spec.trex, spec.templates)
    if spec.google_re is not None:
        relations += lama.read_google_re(spec.google_re)
    return relations


def filtered_facts(raw_relations, tokenizer, common_vocab: set[str] | None, uhn: bool,
                   vocab_size: int | None = None) -> list[lama.RelationFacts]:
    """The LAMA filters (`lama.filter_facts`) for this tokenizer. An object whose token id is
    `vocab_size` or more (a token the tokenizer added beyond the model's embedding matrix) is not a
    token the model can predict: it is dropped with the multi-token objects."""
    cache: dict[str, int | None] = {}

    def object_token(word: str) -> int | None:
        if word not in cache:
            token = lama.single_token_id(tokenizer, word)
            cache[word] = None if token is None or (vocab_size is not None and token >= vocab_size) else token
        return cache[word]

    return [lama.filter_facts(lama.RelationFacts(rel.dataset, rel.relation, rel.template), raw, object_token,
                              common_vocab, uhn)
            for rel, raw in raw_relations]


def query_encoder(tokenizer, prefix_space: bool = False) -> Callable[[lama.Fact], dict]:
    """`encode(fact)` → the cloze query's ids and the position of its one mask token, as LAMA's
    connectors build them.

    WordPiece (LAMA's BERT connector): the query as one text. Byte-level BPE (LAMA's RoBERTa
    connector): the text before the mask and the text after it are encoded separately, each with
    its trailing spaces stripped, around the mask token, so the mask stands for the space-prefixed
    word (`Ġword`) and no lone space token precedes it; the query's first word is encoded without
    a leading space (`Paris`, not `ĠParis`), as LAMA encodes it, unless `prefix_space` (the way the
    project's tokenizer, with `add_prefix_space=True`, encodes the start of every text, probe
    training corpus lines included)."""
    from kadapter_cli.modeling.backbone import is_byte_level

    mask, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    if not is_byte_level(tokenizer):
        def encode(fact: lama.Fact) -> dict:
            ids = tokenizer(fact.query(mask))["input_ids"]
            return {"input_ids": ids, "mask_pos": _one_mask(fact, mask, [i for i, t in enumerate(ids) if t == mask_id])}

        return encode

    from kadapter_cli.data.encoding import special_tokens

    plain = _bpe_without_prefix_space(tokenizer)
    first = (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]) if prefix_space else plain
    prefix, suffix = special_tokens(tokenizer)

    def encode_bpe(fact: lama.Fact) -> dict:
        parts = fact.query(mask).split(mask)
        _one_mask(fact, mask, parts[1:])
        before = first(parts[0].rstrip())
        ids = [*prefix, *before, mask_id, *plain(parts[1].rstrip()), *suffix]
        return {"input_ids": ids, "mask_pos": len(prefix) + len(before)}

    return encode_bpe


def encode_query(tokenizer, fact: lama.Fact, prefix_space: bool = False) -> dict:
    """The cloze query's ids and the position of its one mask token (`query_encoder`)."""
    return query_encoder(tokenizer, prefix_space)(fact)


def _one_mask(fact: lama.Fact, mask: str, where: Sequence) -> Any:
    if len(where) != 1:
        raise BadInput(f"the query {fact.query(mask)!r} holds {len(where)} mask tokens, not 1", fact.source)
    return where[0]


def _bpe_without_prefix_space(tokenizer) -> Callable[[str], list[int]]:
    """The tokenizer's byte-level BPE with `add_prefix_space` off: text is encoded as written."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())

    def no_prefix(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "ByteLevel" and "add_prefix_space" in node:
                node["add_prefix_space"] = False
            for value in node.values():
                no_prefix(value)
        elif isinstance(node, list):
            for value in node:
                no_prefix(value)

    no_prefix(spec.get("pre_tokenizer"))
    backend = Tokenizer.from_str(json.dumps(spec))
    return lambda text: backend.encode(text, add_special_tokens=False).ids


def score_probes(probes: Sequence[Probe], relations: Sequence[lama.RelationFacts], candidates: list[int],
                 top_k: int, batch_size: int, device: torch.device,
                 query_prefix_space: bool = False, precision: str = "fp32") -> dict[str, list[dict]]:
    """Per probe, one prediction per kept fact (in relation, then file order): gold id, rank among
    `candidates`, top-k ids. Probes that share a backbone share its pass over each batch. `precision`
    (resolved: fp32, bf16, fp16): the autocast the passes run under, as training's."""
    from kadapter_cli.training.setup import autocast

    tokenizer = probes[0].tokenizer
    facts = [f for rel in relations for f in rel.facts]
    encode = query_encoder(tokenizer, query_prefix_space)
    encoded = [encode(f) for f in facts]
    object_ids = {obj: lama.single_token_id(tokenizer, obj) for obj in dict.fromkeys(f.obj for f in facts)}
    gold = torch.tensor([object_ids[f.obj] for f in facts], dtype=torch.long)  # objects repeat: tokenized once
    cand_cpu = torch.tensor(candidates, dtype=torch.long)
    cand = cand_cpu.to(device)
    index_of = torch.full((max(candidates + gold.tolist() + [0]) + 1,), -1, dtype=torch.long)
    index_of[cand_cpu] = torch.arange(len(candidates))
    gold_in_cand = index_of[gold] if len(gold) else gold
    out: dict[str, list[dict]] = {p.name: [] for p in probes}
    # One backbone pass per batch for the probes that read the same states: same backbone, and the
    # same padding (adapters that attend to padding see every query padded to their max length).
    groups: dict[tuple, list[Probe]] = {}
    for probe in probes:
        probe.model.to(device)
        body = probe.model.body
        pad_to = body.padded_length(int(probe.config["max_length"]))
        groups.setdefault((id(body.backbone), pad_to), []).append(probe)
    with torch.inference_mode(), autocast(precision, device), progress() as bar:
        task = bar.add_task("probing", total=len(facts))
        for start in range(0, len(facts), batch_size):
            chunk = encoded[start:start + batch_size]
            gold_rows = gold_in_cand[start:start + len(chunk)]
            for (_, pad_to), group in groups.items():
                ids, mask = pad_ids([e["input_ids"] for e in chunk], tokenizer.pad_token_id or 0, pad_to)
                batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                         "positions": torch.tensor([[e["mask_pos"]] for e in chunk], device=device),
                         "valid": torch.ones(len(chunk), 1, dtype=torch.bool, device=device),
                         "rows": torch.arange(len(chunk), device=device)}  # one mask row a query: all valid
                backbone = group[0].model.body.backbone
                taps = sorted({t for p in group for t in p.model.body.tap_layers})
                states, last = backbone_states(backbone, batch["input_ids"], batch["attention_mask"], taps,
                                               attends_to_padding=pad_to is not None)
                by_layer = dict(zip(taps, states))
                for probe in group:
                    tapped = [by_layer[t] for t in probe.model.body.tap_layers]
                    scores = probe.model(batch, cand, (tapped, last)).float().cpu()
                    out[probe.name] += rank_predictions(scores, gold_rows, cand_cpu, top_k)
            bar.advance(task, len(chunk))
    return out


def rank_predictions(scores: torch.Tensor, gold: torch.Tensor, candidates: torch.Tensor, top_k: int) -> list[dict]:
    """Ranks by score, ties broken by vocabulary order (a stable sort), so the top-1 of the top-k
    list is rank 1 exactly when the gold object is predicted first. `gold` holds each fact's index
    in `candidates`; a gold outside them (index -1) cannot be ranked and is refused (the filters
    drop such facts before)."""
    if len(gold) and int(gold.min()) < 0:
        raise ValueError("a gold object is not among the candidates: it can be neither ranked nor predicted")
    order = torch.sort(-scores, dim=-1, stable=True).indices
    rank = (order == gold[:, None]).float().argmax(-1) + 1
    return [{"gold_id": int(candidates[g]), "rank": int(r), "pred_ids": candidates[o[:top_k]].tolist()}
            for g, r, o in zip(gold.tolist(), rank.tolist(), order)]


def evaluate_probes(probe_dirs: Sequence[Path], spec: LamaSpec, out: Path, device: str = "auto",
                    overwrite: bool = True, manifest_config: dict | None = None,
                    precision: str = TrainConfig.precision) -> dict[str, Any]:
    """P@1 etc. of each probe on LAMA; writes `metrics.json`, one predictions file per probe and the
    manifest to `out`; returns {"probes", "uhn", "query_prefix_space", "results": {probe: {dataset: metrics}},
    "filters": {probe: {"dataset/relation": facts read, kept and dropped by each filter}}}."""
    if spec.top_k < 1:
        raise BadParameter("{top_k} must be at least 1, got {value}", spec.top_k)
    raw = read_lama(spec)
    common = lama.read_common_vocab(spec.common_vocab) if spec.common_vocab is not None else None
    from kadapter_cli.training.setup import compute_dtype, enable_tf32, resolve_precision

    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    precision = resolve_precision(precision, dev.type)
    enable_tf32(dev.type)
    backbones: dict[str, nn.Module] = {}
    probes = [load_probe(p, backbones, compute_dtype(precision, dev.type)) for p in probe_dirs]
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise BadInput(f"two probes share the name {names}: give folders with different names")
    results: dict[str, dict] = {}
    filters: dict[str, dict] = {}
    predictions: dict[str, list[dict]] = {}
    # Probes with one tokenizer see the same facts: group them by backbone.
    for backbone_id in dict.fromkeys(p.config["backbone"] for p in probes):
        group = [p for p in probes if p.config["backbone"] == backbone_id]
        tokenizer = group[0].tokenizer
        vocab = group[0].model.vocab_size
        relations = filtered_facts(raw, tokenizer, common, spec.uhn, vocab)
        candidates = [i for i in lama.candidate_ids(tokenizer, common) if i < vocab]
        if not candidates:
            raise BadInput("no word of the common vocabulary is a single token of the backbone's vocabulary",
                           spec.common_vocab)
        counts = {f"{rel.dataset}/{rel.relation}": rel.counts() for rel in relations}
        scored = score_probes(group, relations, candidates, spec.top_k, spec.batch_size, dev, spec.query_prefix_space,
                              precision)
        facts = [f for rel in relations for f in rel.facts]
        for probe in group:
            rows = [prediction_row(tokenizer, f, s) for f, s in zip(facts, scored[probe.name])]
            predictions[probe.name] = rows
            filters[probe.name] = counts
            results[probe.name] = dataset_metrics(rows)
    with atomic_output(out, overwrite=overwrite) as tmp:
        for name, rows in predictions.items():
            write_jsonl(tmp / PREDICTIONS.format(probe=name), rows)
        summary = {"probes": names, "uhn": spec.uhn, "query_prefix_space": spec.query_prefix_space,
                   "results": results, "filters": filters}
        write_json(tmp / "metrics.json", summary)
        inputs = [p for d in (spec.trex, spec.google_re) if d is not None for p in sorted(Path(d).glob("*.jsonl"))]
        inputs += [spec.common_vocab] if spec.common_vocab else []
        write_manifest(tmp, "probe-evaluation", config=manifest_config or {},
                                 inputs=sha256_inputs(inputs + [Path(p) for p in probe_dirs]),
                                 stats={n: {d: m["p_at_1"] for d, m in r.items()} for n, r in results.items()})
    return summary


def prediction_row(tokenizer, fact: lama.Fact, scored: dict) -> dict:
    return {"dataset": fact.dataset, "relation": fact.relation, "sub_label": fact.subject, "obj_label": fact.obj,
            "gold": tokenizer.convert_ids_to_tokens(scored["gold_id"]), **scored,
            "pred": tokenizer.convert_ids_to_tokens(scored["pred_ids"])}


def dataset_metrics(rows: Sequence[dict]) -> dict[str, dict]:
    """{dataset: `metrics.lama_metrics`} from prediction rows."""
    by_dataset: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], {}).setdefault(row["relation"], []).append(row["rank"])
    return {dataset: metrics.lama_metrics(ranks) for dataset, ranks in by_dataset.items()}
