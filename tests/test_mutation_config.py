"""`make mutation`'s module table (tools/mutation.py) stays in step with the code and the tests: every
module the mutation check must cover is there, its files exist, and no listed test file is missing
(the driver would drop a missing one silently). Running mutmut itself is `make mutation`, not CI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("mutation_driver", REPO / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_result_critical_module_is_covered_with_existing_tests():
    driver = _driver()
    assert set(driver.MODULES) == {"metrics", "encoding", "adapter", "fusion", "heads", "feature_cache", "tasks",
                                   "tasks_readers", "tasks_cosmosqa", "tasks_open_qa",
                                   "import_original", "train_setup", "checkpoints", "training"}
    for name, target in driver.MODULES.items():
        assert all(list(REPO.glob(pattern)) for pattern in target.files), name
        missing = [t for t in target.tests if not (REPO / t).is_file()]
        assert missing == [], f"{name}: {missing}"
    for test in driver.DESELECT:
        path, _, function = test.partition("::")
        assert f"def {function}(" in (REPO / path).read_text(), test


def test_list_prints_each_module_with_its_tests():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "mutation.py"), "--list"], capture_output=True,
                          text=True, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == len(_driver().MODULES) and lines[0].startswith("fusion (")  # smallest first
    assert any(line.startswith("training (") and "(only " in line and "kadapter_cli.training.xǁ_Loopǁ_train_step*" in line
               for line in lines)


def test_the_tasks_and_their_readers_share_the_task_files_without_overlap():
    driver = _driver()
    tasks, readers = driver.selected_functions("tasks"), driver.selected_functions("tasks_readers")
    every = {f"{name}__mutmut_*" for name in driver.function_names(driver.TASK_FILES)}
    assert set(tasks) | set(readers) == every and not set(tasks) & set(readers)
    assert "kadapter_cli.tasks.base.xǁTypingTaskǁnormalize__mutmut_*" in readers
    assert "kadapter_cli.tasks.x_get_task__mutmut_*" in readers  # __init__.py: mutmut leaves out "__init__"
    assert "kadapter_cli.tasks.base.xǁTaskǁscored_lines__mutmut_*" in tasks


def _row(survivors: list[str]) -> dict:
    return {"module": "tasks", "mutants": 10, "killed": 10 - len(survivors), "score": (10 - len(survivors)) / 10,
            "survivors": [{"name": n, "status": "survived", "diff": f"- {n}"} for n in survivors]}


def test_a_recheck_counts_the_survivors_the_current_tests_kill():
    driver = _driver()
    row = driver.merge_recheck(_row(["a", "b", "c"]), {"a": "killed", "b": "survived", "c": "timeout"}, 42)
    assert (row["mutants"], row["killed"], row["score"]) == (10, 9, 0.9)
    assert row["survivors"] == [{"name": "b", "status": "survived", "diff": "- b"}]
    assert row["rechecks"] == [{"survivors": 3, "killed": 2, "seconds": 42}]
    again = driver.merge_recheck(row, {"b": "killed"}, 7)
    assert (again["killed"], again["survivors"], len(again["rechecks"])) == (10, [], 2)


def test_a_recheck_needs_the_last_run_of_unchanged_code(tmp_path):
    def recheck():
        return subprocess.run([sys.executable, str(REPO / "tools" / "mutation.py"), "--recheck", "fusion",
                               "--out", str(tmp_path)], capture_output=True, text=True)

    done = recheck()
    assert done.returncode != 0 and f"fusion: no earlier run in {tmp_path} to recheck; run it first" in done.stdout
    (tmp_path / "fusion.json").write_text(json.dumps(_row([])))
    (tmp_path / "fusion" / "mutants").mkdir(parents=True)
    (tmp_path / "fusion" / "kadapter_cli").mkdir()
    (tmp_path / "fusion" / "kadapter_cli" / "fusion.py").write_text("# the code as it was\n")
    done = recheck()
    assert done.returncode != 0
    assert "fusion: kadapter_cli/fusion.py changed since its last run" in done.stdout
