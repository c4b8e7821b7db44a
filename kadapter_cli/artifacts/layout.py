"""Where artifacts live in a workdir: every default path, spelled once.

A bare name (`fac`) resolves to `<workdir>/<kind>/<name>`, a path to itself. The commands, the
stages and the pipeline runner (`kadapter_cli.workflow.pipeline.command_io`) all call these
functions, so a stage's default output is where the next stage looks for it by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

# ---------------------------------------------------------------- workdir layout

# The demo's data, shipped in the package (made by tools/make_demo_data.py and tools/make_demo_lama.py).
DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
DEFAULT_WORKDIR = Path("kadapter-work")

# The workdir's folders, one per kind of artifact.
TREX_RC = "trex-rc"
TREX_SHARDS = "trex-shards"
PARSED = "parsed"
ADAPTERS = "adapters"
COMPOSITIONS = "compositions"
TASKS = "tasks"
FINETUNED = "finetuned"
EVALUATIONS = "evaluations"
PROBES = "probes"
PROBE_RESULTS = "probe-results"
TINY_BACKBONE = "tiny-backbone"

NO_ADAPTERS = "base"  # the name part of a run or probe without adapters


def workdir_path(workdir: str | Path, *parts: str) -> Path:
    return Path(workdir).joinpath(*parts)


def names_a_path(name_or_path: str | Path) -> bool:
    """Whether a value is a path (`./fac`, `runs/fac`, `/x`) rather than a bare artifact name (`fac`)."""
    s = str(name_or_path)
    return os.sep in s or s.startswith(".") or Path(s).is_absolute()


def artifact_path(workdir: str | Path, subdir: str, name_or_path: str | Path) -> Path:
    """A bare name under `<workdir>/<subdir>`, a path as itself; decided by the text alone (what a
    pipeline plans with before anything exists)."""
    return Path(name_or_path) if names_a_path(name_or_path) else Path(workdir) / subdir / str(name_or_path)


def resolve_artifact(name_or_path: str | Path, workdir: str | Path, subdir: str) -> Path:
    """A bare name (`fac`) resolves to `<workdir>/<subdir>/<name>`; anything path-like to itself, and so
    does a bare name that exists where the command runs while `<workdir>/<subdir>/<name>` does not."""
    s = str(name_or_path)
    p = Path(s)
    if names_a_path(s) or (p.exists() and not (Path(workdir) / subdir / s).exists()):
        return p
    return Path(workdir) / subdir / s


# ---------------------------------------------------------------- knowledge sources


def trex_rc_dir(workdir: str | Path) -> Path:
    """`prepare-trex`'s output and the fac adapter's input."""
    return Path(workdir) / TREX_RC


def trex_shard_dir(workdir: str | Path, shard: tuple[int, int]) -> Path:
    """`prepare-trex --shard I/N`'s output: `<workdir>/trex-shards/shard-I-of-N`."""
    return Path(workdir) / TREX_SHARDS / f"shard-{shard[0]}-of-{shard[1]}"


def parsed_dir(workdir: str | Path) -> Path:
    """`parse`'s output and the lin adapter's input."""
    return Path(workdir) / PARSED


# What each adapter kind trains on by default.
_ADAPTER_INPUTS = {"fac": trex_rc_dir, "lin": parsed_dir}


def adapter_input_dir(workdir: str | Path, kind: str) -> Path | None:
    """The default input of an adapter kind (fac: `trex-rc/`, lin: `parsed/`); None for another kind."""
    where = _ADAPTER_INPUTS.get(kind)
    return None if where is None else where(workdir)


# ---------------------------------------------------------------- adapters and compositions

# An adapter's files. They carry kadapter's name so that no other library mistakes them for its own:
# PEFT reads any `adapter_config.json` as a PEFT config, and AdapterHub writes `adapter_config.json`
# with `pytorch_adapter.bin`. Adapters written before kadapter 0.2 hold the old names
# (`OLD_ADAPTER_FILES`): they still load, and `compose` and `push` write their files under the new ones.
ADAPTER_CONFIG = "kadapter_adapter.json"
ADAPTER_WEIGHTS = "kadapter_adapter.safetensors"
HEAD_WEIGHTS = "kadapter_head.safetensors"  # the pretraining head
OLD_ADAPTER_FILES = {"adapter_config.json": ADAPTER_CONFIG, "adapter.safetensors": ADAPTER_WEIGHTS,
                     "head.safetensors": HEAD_WEIGHTS}
COMPOSITION_FILE = "composition.json"  # what makes a folder a composition: its adapters, in order, and the fusion


def adapter_file(folder: str | Path, name: str) -> Path:
    """`<folder>/<name>` (one of the names above), or the file under its old name when only that exists."""
    path = Path(folder) / name
    if not path.exists():
        old = next((o for o, new in OLD_ADAPTER_FILES.items() if new == name), None)
        if old is not None and (Path(folder) / old).exists():
            return Path(folder) / old
    return path


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether a folder holds an adapter's config, under its name or its old one."""
    return adapter_file(folder, ADAPTER_CONFIG).is_file()


def adapter_dir(workdir: str | Path, name: str) -> Path:
    """`<workdir>/adapters/<name>`: where `train-adapter` writes and a bare adapter name is found."""
    return Path(workdir) / ADAPTERS / name


def joined_name(names: Sequence[str]) -> str:
    """Several artifacts' names as one: `fac+lin`."""
    return "+".join(names)


def composition_dir(workdir: str | Path, adapter_names: Sequence[str]) -> Path:
    """`<workdir>/compositions/<a>+<b>`: `compose`'s default output."""
    return Path(workdir) / COMPOSITIONS / joined_name(adapter_names)


# ---------------------------------------------------------------- tasks


def task_data_dir(workdir: str | Path, task: str) -> Path:
    """`<workdir>/tasks/<task>`: a task's split files unless `--data` names them."""
    return Path(workdir) / TASKS / task


def data_name(data_dir: str | Path) -> str:
    """What a run calls data of your own: its folder's name (`data/biomed` → `biomed`)."""
    return Path(data_dir).name or Path(os.path.abspath(data_dir)).name or "data"


def finetuned_run_name(data: str, adapter_names: Sequence[str]) -> str:
    """`<data>-<a>+<b>`, or `<data>-base` without adapters. `data` is the task's name for the
    benchmark's data and the data folder's name (`data_name`) for your own: the fine-tuning stage
    decides which (`Task.run_data_name`)."""
    return f"{data}-{joined_name(adapter_names) or NO_ADAPTERS}"


def finetuned_dir(workdir: str | Path, run_name: str) -> Path:
    return Path(workdir) / FINETUNED / run_name


def evaluation_dir(workdir: str | Path, model_name: str, split: str) -> Path:
    """`<workdir>/evaluations/<run>-<split>`: `evaluate`'s default output."""
    return Path(workdir) / EVALUATIONS / f"{model_name}-{split}"


# ---------------------------------------------------------------- probes


def probe_name(adapter_names: Sequence[str], pretrained_lm_head: bool = False) -> str:
    """The adapters joined by `+`; without adapters `base`, or `base-lm-head` for the backbone's own LM head."""
    return joined_name(adapter_names) or (f"{NO_ADAPTERS}-lm-head" if pretrained_lm_head else NO_ADAPTERS)


def probe_dir(workdir: str | Path, name: str) -> Path:
    return Path(workdir) / PROBES / name


def probe_results_dir(workdir: str | Path, probe_names: Sequence[str], uhn: bool = False) -> Path:
    """`<workdir>/probe-results/<p1>+<p2>`, `-uhn` appended for the UHN filter."""
    return Path(workdir) / PROBE_RESULTS / (joined_name(probe_names) + ("-uhn" if uhn else ""))


def tiny_backbone_dir(workdir: str | Path) -> Path:
    """Where `backbone: auto` makes a tiny random backbone when the packaged MiniLM is not installed."""
    return Path(workdir) / TINY_BACKBONE
