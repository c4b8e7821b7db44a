"""`make mutation`: mutation testing (mutmut 3) of the modules where a silent change corrupts results.

Each module runs on its own, in a scratch copy of the package and the tests under `--out`
(default `build/mutation/<module>/`), with only the test files that exercise it; within those,
mutmut runs for each mutant only the tests that call the mutated function. Modules go smallest
first. At the end `--out/summary.md` (and `summary.json`) hold the score per module and the diff
of every surviving mutant; `docs/MUTATION.md` says which survivors are equivalent and why.

    python tools/mutation.py                 # every module in MODULES
    python tools/mutation.py metrics fusion  # just these
    python tools/mutation.py --list          # the modules and their tests
    python tools/mutation.py --recheck checkpoints  # only its survivors again, with the current tests

Runs are fresh each time (mutmut keeps verdicts of unchanged mutants even when tests change).
`--recheck` is the exception: it re-runs just the previous survivors of a module in its existing
scratch copy, with the current test files copied in (new test functions are found and traced; the
module's source and its list of test files must be what that run used, or its mutant names and
test selection would be stale).
The scratch copies import the mutated package, never the installed one: PYTHONPATH is cleared.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]

class Target(NamedTuple):
    files: list[str]  # what to mutate (globs relative to the repository)
    tests: list[str]  # the test files that exercise it
    functions: tuple[str, ...] = ()  # only mutants of these functions (fnmatch on mutmut's names); () = all
    skip: tuple[str, ...] = ()  # or all but these (another module's share of the same files)


# Tests marked slow are left out: they run `kadapter` or `accelerate launch` as subprocesses, which
# import the installed package, not the mutant.
LOOP_TESTS = ["tests/training/test_loop.py"]
TASK_FILES = ["kadapter_cli/tasks/__init__.py", "kadapter_cli/tasks/base.py", "kadapter_cli/tasks/openentity.py",
              "kadapter_cli/tasks/figer.py", "kadapter_cli/tasks/tacred.py"]
TASK_READERS = tuple(f"kadapter_cli.tasks.{f}__mutmut_*" for f in (
    "x_get_task", "x_task_options_help", "base.xǁTaskOptionǁcheck", "base.xǁTaskǁ__init__", "base.xǁTaskǁdefaults_for",
    "base.xǁTaskǁread", "base.xǁTypingTaskǁnormalize", "base.x_detect_format", "base.x_iter_raw_records",
    "base.x__fields", "base.x__typed", "tacred.xǁTacredǁ__init__", "figer.xǁFigerǁread", "figer.x_looks_like_bio",
    "figer.x_iter_bio_sentences", "figer.x__check_tag", "figer.x__split_types", "figer.x_bio_mentions",
    "figer.x_read_figer_raw", "figer.x_convert_figer_raw"))
MODULES: dict[str, Target] = {
    "fusion": Target(["kadapter_cli/modeling/fusion.py"], ["tests/modeling/test_model.py", "tests/modeling/test_fusion.py"]),
    "train_setup": Target(["kadapter_cli/training/setup.py"],
                          LOOP_TESTS + ["tests/training/test_precision.py", "tests/training/test_deterministic.py",
                                        "tests/training/test_compile.py"]),
    "metrics": Target(["kadapter_cli/tasks/metrics.py"],
                      ["tests/tasks/test_metrics.py"]),
    # Not test_original.py: its full-size checkpoints make each head mutant take a minute.
    "heads": Target(["kadapter_cli/modeling/heads.py"],
                    ["tests/modeling/test_model.py", "tests/modeling/test_adapter_files.py", "tests/tasks/test_tasks.py",
                     "tests/modeling/test_heads.py"]),
    "checkpoints": Target(["kadapter_cli/training/checkpoints.py", "kadapter_cli/training/rng.py"], LOOP_TESTS),
    # test_original.py without its full-size checkpoints (~10 s per mutant; `SLOW_FOR_MUTANTS`): its other
    # tests run `import-original` end to end on narrow checkpoints of the same layout.
    "import_original": Target(["kadapter_cli/modeling/original.py"],
                             ["tests/commands/test_untrusted.py", "tests/modeling/test_original.py"]),
    "feature_cache": Target(["kadapter_cli/training/feature_cache.py"],
                            ["tests/training/test_feature_cache.py", "tests/training/test_feature_cache_placement.py",
                             "tests/training/test_cache_feed.py", "tests/training/test_cache_processes.py",
                             # attach_backbone_cache: the stages that cache a frozen backbone's states
                             "tests/training/test_precision.py", "tests/stages/test_freeze_backbone.py",
                             "tests/modeling/test_released_checkpoints.py", "tests/tasks/test_cosmosqa.py"]),
    "encoding": Target(["kadapter_cli/data/encoding.py"],
                       ["tests/data/test_encoding.py", "tests/data/test_properties.py", "tests/tasks/test_tasks.py",
                        "tests/tasks/test_cosmosqa.py", "tests/tasks/test_qa_spans.py",
                        "tests/data/test_encoding_truncation.py", "tests/data/test_encoding_tokenizers.py",
                        "tests/data/test_encoding_segments.py"]),
    # tasks/ in four runs that each fit: the classification tasks' labels, model side, scoring and registry;
    # their readers (called by nearly every test, so run with the readers' own tests only); CosmosQA; open QA.
    "tasks": Target(TASK_FILES, ["tests/tasks/test_tasks.py", "tests/tasks/test_metrics.py", "tests/commands/test_untrusted.py",
                                 "tests/data/test_properties.py", "tests/commands/test_bad_inputs.py"], skip=TASK_READERS),
    "tasks_readers": Target(TASK_FILES, ["tests/tasks/test_tasks.py"], TASK_READERS),
    "tasks_cosmosqa": Target(["kadapter_cli/tasks/cosmosqa.py"],
                             ["tests/tasks/test_cosmosqa.py"]),
    "tasks_open_qa": Target(["kadapter_cli/tasks/open_qa/task.py"],
                            ["tests/tasks/test_open_qa_chains.py", "tests/tasks/test_qa_spans.py",
                             "tests/tasks/test_qa_formats.py", "tests/tasks/test_open_qa.py",
                             "tests/tasks/test_open_qa_protocol.py"]),
    # The loop's schedule, clipping and resume: `train` (total steps, schedule, resume or fresh start),
    # the epoch/step walk that resume re-enters, the optimizer step with clipping, the save/eval points.
    "training": Target(["kadapter_cli/training/loop.py"],
                       LOOP_TESTS + ["tests/training/test_fp16_skipped_steps.py", "tests/training/test_flops.py",
                                     "tests/training/test_compile.py", "tests/training/test_precision.py",
                                     "tests/training/test_cache_feed.py", "tests/training/test_tracking.py"],
                       ("kadapter_cli.training.loop.x_train*", "kadapter_cli.training.loop.xǁ_Loopǁrun*",
                        "kadapter_cli.training.loop.xǁ_Loopǁ_train_step*",
                        "kadapter_cli.training.loop.xǁ_Loopǁ_after_step*")),
    # test_original.py without its full-size checkpoints (~10 s per mutant it runs for; `SLOW_FOR_MUTANTS`):
    # its small checkpoints exercise the same adapter code.
    "adapter": Target(["kadapter_cli/modeling/adapter.py"],
                      ["tests/modeling/test_adapter_files.py", "tests/modeling/test_model.py",
                       "tests/modeling/test_adapter.py", "tests/modeling/test_original.py"]),
}

# The tests of `import-original` on full-size released checkpoints (~10 s per mutant they run for): the
# narrow checkpoints of the same file's other tests exercise the same code. They were a file of their
# own, which the modules' lists left out; these are its tests, so each module's selection is unchanged.
SLOW_FOR_MUTANTS = [f"tests/modeling/test_original.py::{name}" for name in (
    "test_imports_full_size_fac_and_lin_weights_exactly",
    "test_unexpected_and_missing_keys_are_listed_and_nothing_is_written",
    "test_a_pickle_that_runs_code_is_refused", "test_wrong_relation_count_and_missing_inputs_are_bad_input",
    "test_inspect_of_a_folder_that_is_not_an_artifact_is_bad_input")]
# Left out of every module's run: the test that fails on the unmutated scratch copy itself, so mutmut cannot
# use it (the source check for unsafe loads reads every mutant's variant, `weights_only=False` included),
# and `SLOW_FOR_MUTANTS`.
DESELECT = ["tests/commands/test_untrusted.py::test_the_package_has_no_unsafe_loads", *SLOW_FOR_MUTANTS]

# A mutant may loop forever (a `while` whose exit it breaks). mutmut stops a mutant after
# (its tests' measured call time + TIMEOUT_CONSTANT s) x TIMEOUT_MULTIPLIER and counts it a timeout
# (killed). mutmut's defaults (1 s, x15) let one looping mutant of a function that slow tests call hold
# a run for over ten minutes. The measured time leaves out fixture set-up (a tiny backbone, MiniLM),
# which the constant covers; x3 leaves room for the shared machine's load changing during a run.
TIMEOUT_CONSTANT = 10.0
TIMEOUT_MULTIPLIER = 3.0

KILLED = {"killed", "timeout", "caught by type check", "segfault"}  # the tests noticed the change


def function_names(files: list[str]) -> list[str]:
    """mutmut's name of every function and method in `files`: `pkg.mod.x_f`, `pkg.mod.xǁClassǁmethod`."""
    names = []
    for pattern in files:
        for path in sorted(REPO.glob(pattern)):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.append(f"{module}.x_{node.name}")
                elif isinstance(node, ast.ClassDef):
                    names += [f"{module}.xǁ{node.name}ǁ{item.name}" for item in node.body
                              if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names


def selected_functions(module: str) -> tuple[str, ...]:
    """The mutant patterns a module's run covers: its `functions`, or every function but its `skip`."""
    target = MODULES[module]
    if not target.skip:
        return target.functions
    return tuple(f"{name}__mutmut_*" for name in function_names(target.files)
                 if not any(fnmatch(f"{name}__mutmut_1", pattern) for pattern in target.skip))


def source_lines(module: str) -> int:
    return sum(len(p.read_text().splitlines()) for pattern in MODULES[module].files for p in REPO.glob(pattern)
               if p.suffix == ".py")


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(module: str, work: Path) -> None:
    """A scratch copy of the package and the tests, with a pyproject that configures mutmut for `module`."""
    files, tests = MODULES[module].files, MODULES[module].tests
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "kadapter_cli", work / "kadapter_cli", ignore=ignore)
    shutil.copytree(REPO / "tests", work / "tests", ignore=ignore)
    for extra in ("benchmarks", "docs"):  # some tests build the benchmarks' workloads, some read documented tables
        if (REPO / extra).is_dir():
            shutil.copytree(REPO / extra, work / extra, ignore=ignore)
    existing = [t for t in tests if (REPO / t).is_file()]
    config = (REPO / "pyproject.toml").read_text() + f"""
[tool.mutmut]
source_paths = ["kadapter_cli"]
only_mutate = {toml_list(files)}
also_copy = ["benchmarks", "docs"]
pytest_add_cli_args_test_selection = {toml_list(existing + ["-m", "not slow"] + [a for d in DESELECT for a in ("--deselect", d)])}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
timeout_multiplier = {TIMEOUT_MULTIPLIER}
timeout_constant = {TIMEOUT_CONSTANT}
"""
    (work / "pyproject.toml").write_text(config)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shared = Path(os.environ.get("KADAPTER_SHARED_DATA", REPO.parent / "shared" / "data"))
    env.update(KADAPTER_SHARED_DATA=str(shared), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


class MutmutFailed(Exception):
    pass


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    command = [sys.executable, "-m", "mutmut", *args]
    if log is None:
        done = subprocess.run(command, cwd=work, env=environment(), capture_output=True, text=True)
        return done.stdout
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=work, env=environment(), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise MutmutFailed(f"mutmut run failed for {work.name} (exit {done.returncode}); end of {log}:\n{tail}")
    return ""


def results(work: Path) -> dict[str, str]:
    """{mutant name: status} from `mutmut results --all true`."""
    out = mutmut(work, "results", "--all", "true")
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+(\S+): (.+)$", out, re.MULTILINE)}


def run_module(module: str, out: Path, max_children: int) -> dict:
    work = out / module
    prepare(module, work)
    started = time.monotonic()
    mutmut(work, "run", "--max-children", str(max_children), *selected_functions(module), log=out / f"{module}.log")
    return module_row(module, work, round(time.monotonic() - started))


def statuses_of(module: str, work: Path) -> dict[str, str]:
    """{mutant name: status} of the mutants `module` counts (its `functions`, if any)."""
    functions = selected_functions(module)
    return {name: status for name, status in results(work).items()
            if not functions or any(fnmatch(name, f) for f in functions)}


def module_row(module: str, work: Path, seconds: int) -> dict:
    """The `<module>.json` record of the verdicts now in `work`."""
    statuses = statuses_of(module, work)
    survivors = sorted(name for name, status in statuses.items() if status not in KILLED)
    killed = len(statuses) - len(survivors)
    return {
        "module": module,
        "files": MODULES[module].files,
        "functions": list(selected_functions(module)),
        "tests": [t for t in MODULES[module].tests if (REPO / t).is_file()],
        "mutants": len(statuses),
        "killed": killed,
        "score": killed / len(statuses) if statuses else None,
        "seconds": seconds,
        "survivors": [{"name": name, "status": statuses[name], "diff": mutmut(work, "show", name).strip()}
                      for name in survivors],
    }


class CannotRecheck(Exception):
    pass


def recheck_module(module: str, out: Path, max_children: int) -> dict:
    """Re-runs the survivors of `module`'s previous run (`out/<module>/`) with the current test files."""
    work, previous_file = out / module, out / f"{module}.json"
    if not (work / "mutants").is_dir() or not previous_file.is_file():
        raise CannotRecheck(f"{module}: no earlier run under {out} to recheck; run it first "
                            f"(python tools/mutation.py {module})")
    previous = json.loads(previous_file.read_text())
    changed = [str(p.relative_to(REPO)) for pattern in MODULES[module].files for p in sorted(REPO.glob(pattern))
               if p.suffix == ".py" and not _same_file(p, work / p.relative_to(REPO))]
    if changed:
        raise CannotRecheck(f"{module}: {', '.join(changed)} changed since its run, so the mutant names are "
                            f"stale; run it fresh (python tools/mutation.py {module})")
    tests = [t for t in MODULES[module].tests if (REPO / t).is_file()]
    if tests != previous["tests"]:
        raise CannotRecheck(f"{module}: its test files are now {tests}, the run used {previous['tests']}; "
                            f"run it fresh (python tools/mutation.py {module})")
    shutil.copytree(REPO / "tests", work / "tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    survivors = sorted(name for name, status in statuses_of(module, work).items() if status not in KILLED)
    started = time.monotonic()
    if survivors:
        mutmut(work, "run", "--max-children", str(max_children), *survivors, log=out / f"{module}.recheck.log")
    row = module_row(module, work, previous["seconds"])
    row["rechecked"] = {"mutants": len(survivors), "seconds": round(time.monotonic() - started),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return row


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def write_summary(out: Path) -> None:
    """`summary.md` and `summary.json` from every module's latest result (`<module>.json`), so runs of
    single modules, even two at once, add up to one summary."""
    ordered = [json.loads((out / f"{m}.json").read_text()) for m in MODULES if (out / f"{m}.json").is_file()]
    (out / "summary.json").write_text(json.dumps(ordered, indent=2) + "\n")
    lines = ["# Mutation testing summary", "", "`python tools/mutation.py [MODULE...]`; each module's latest run.", "",
             "| module | mutants | killed | score | survivors | time (s) |", "|---|---:|---:|---:|---:|---:|"]
    for r in ordered:
        score = "—" if r["score"] is None else f"{100 * r['score']:.1f} %"
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {score} | {len(r['survivors'])} "
                     f"| {r['seconds']} |")
    for r in ordered:
        if "rechecked" in r:
            again = r["rechecked"]
            lines.append(f"\n{r['module']}: the survivors of its run ({again['mutants']}) rechecked with the tests of "
                         f"{again['date']} (`--recheck`, {again['seconds']} s).")
    for r in ordered:
        if r["survivors"]:
            lines += ["", f"## {r['module']}: surviving mutants", ""]
            for s in r["survivors"]:
                lines += [f"### {s['name']} ({s['status']})", "", "```diff", s["diff"], "```", ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to run (default: all): {', '.join(MODULES)}")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "mutation", help="scratch and summary folder")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run in parallel (the machine is shared)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    parser.add_argument("--recheck", action="store_true",
                        help="re-run only the previous survivors of each module, in its scratch copy, with the current "
                             "tests copied in (after adding tests that should kill them)")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    modules = sorted(args.modules or MODULES, key=source_lines)
    if args.list:
        for m in modules:
            target = MODULES[m]
            only = f" (only {', '.join(target.functions)})" if target.functions else ""
            only += f" (not {', '.join(target.skip)})" if target.skip else ""
            print(f"{m} ({source_lines(m)} lines): {' '.join(target.files)}{only} <- {' '.join(target.tests)}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.recheck and not args.modules:
        parser.error("--recheck needs the module(s) to recheck")
    failed: list[str] = []
    for module in modules:
        print(f"mutation: {module}{' (recheck)' if args.recheck else ''} ...", flush=True)
        try:
            if args.recheck:
                row = recheck_module(module, args.out, args.max_children)
            else:
                row = run_module(module, args.out, args.max_children)
        except (MutmutFailed, CannotRecheck) as e:  # the other modules still run; the exit status says one failed
            print(e, flush=True)
            failed.append(module)
            continue
        (args.out / f"{module}.json").write_text(json.dumps(row, indent=2) + "\n")
        score = "no mutants" if row["score"] is None else f"{100 * row['score']:.1f} % killed"
        print(f"mutation: {module}: {row['killed']}/{row['mutants']} {score}, {len(row['survivors'])} survivors, "
              f"{row['seconds']} s", flush=True)
        write_summary(args.out)
    print(f"summary: {args.out / 'summary.md'}")
    if failed:
        raise SystemExit(f"mutmut could not run: {', '.join(failed)} (see {args.out}/<module>.log)")


if __name__ == "__main__":
    main()
