"""`make mutation`'s module table (tools/mutation.py) stays in step with the code and the tests: every
module the mutation check must cover is there, its files exist, and no listed test file is missing
(the driver would drop a missing one silently). Running mutmut itself is `make mutation`, not CI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
    assert any(line.startswith("training (") and "(only " in line and "kadapter_cli.training.loop.xǁ_Loopǁ_train_step*" in line
               for line in lines)


def test_the_tasks_and_their_readers_share_the_task_files_without_overlap():
    driver = _driver()
    tasks, readers = driver.selected_functions("tasks"), driver.selected_functions("tasks_readers")
    every = {f"{name}__mutmut_*" for name in driver.function_names(driver.TASK_FILES)}
    assert set(tasks) | set(readers) == every and not set(tasks) & set(readers)
    assert "kadapter_cli.tasks.base.xǁTypingTaskǁnormalize__mutmut_*" in readers
    assert "kadapter_cli.tasks.x_get_task__mutmut_*" in readers  # __init__.py: mutmut leaves out "__init__"
    assert "kadapter_cli.tasks.base.xǁTaskǁscored_lines__mutmut_*" in tasks


def _toy_repository(root: Path, test_body: str) -> None:
    """A package of one function and one test file: the smallest thing `tools/mutation.py` can run on."""
    (root / "kadapter_cli").mkdir(parents=True)
    (root / "kadapter_cli" / "__init__.py").write_text("")
    (root / "kadapter_cli" / "toy.py").write_text("def add_one(x):\n    return x + 1\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_toy.py").write_text("from kadapter_cli.toy import add_one\n\n\n" + test_body)
    (root / "pyproject.toml").write_text("[project]\nname = \"toy\"\nversion = \"0\"\n")


@pytest.mark.slow
def test_recheck_reruns_only_the_survivors_with_the_tests_added_since(tmp_path, monkeypatch, capsys):
    import json

    pytest.importorskip("mutmut", reason="mutmut comes with the `mutation` extra (make mutation installs it)")
    driver = _driver()
    repo, out = tmp_path / "repo", tmp_path / "out"
    # Only checks that add_one returns something: the mutants of `+ 1` survive.
    _toy_repository(repo, "def test_returns_a_number():\n    assert add_one(1) is not None\n")
    monkeypatch.setattr(driver, "REPO", repo)
    monkeypatch.setattr(driver, "MODULES", {"toy": driver.Target(["kadapter_cli/toy.py"], ["tests/test_toy.py"])})
    monkeypatch.setattr(sys, "argv", ["mutation.py", "toy", "--out", str(out)])
    driver.main()
    first = json.loads((out / "toy.json").read_text())
    assert first["mutants"] >= 2 and first["killed"] == 0 and len(first["survivors"]) == first["mutants"]

    # A test that pins the number, added after the run: --recheck re-runs the survivors with it.
    with open(repo / "tests" / "test_toy.py", "a") as f:
        f.write("\n\ndef test_adds_one():\n    assert add_one(1) == 2\n")
    monkeypatch.setattr(sys, "argv", ["mutation.py", "--recheck", "toy", "--out", str(out)])
    driver.main()
    again = json.loads((out / "toy.json").read_text())
    assert again["mutants"] == first["mutants"] and again["killed"] == again["mutants"] and again["survivors"] == []
    assert again["rechecked"]["mutants"] == first["mutants"]
    summary = (out / "summary.md").read_text()
    assert f"| toy | {first['mutants']} | {first['mutants']} | 100.0 % | 0 |" in summary
    assert f"toy: the survivors of its run ({first['mutants']}) rechecked" in summary

    # The module's source changed since the run: its mutant names are stale, so no recheck.
    (repo / "kadapter_cli" / "toy.py").write_text("def add_one(x):\n    return 1 + x\n")
    with pytest.raises(SystemExit, match="mutmut could not run: toy"):
        driver.main()
    assert "toy: kadapter_cli/toy.py changed since its run" in capsys.readouterr().out
    assert json.loads((out / "toy.json").read_text()) == again  # nothing rewritten


def test_recheck_without_an_earlier_run_says_to_run_the_module_first(tmp_path, monkeypatch, capsys):
    driver = _driver()
    monkeypatch.setattr(sys, "argv", ["mutation.py", "--recheck", "metrics", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        driver.main()
    assert (f"metrics: no earlier run under {tmp_path} to recheck; run it first (python tools/mutation.py metrics)"
            in capsys.readouterr().out)
    assert list(tmp_path.iterdir()) == []
