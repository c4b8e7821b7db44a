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


def finetuned_run_name(task: str, adapter_names: Sequence[str]) -> str:
    """`<task>-<a>+<b>`, or `<task>-base` without adapters."""
    return f"{task}-{joined_name(adapter_names) or NO_ADAPTERS}"


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
