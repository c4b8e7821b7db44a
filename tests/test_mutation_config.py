"""`make mutation`'s module table (tools/mutation.py) stays in step with the code and the tests: every
module the mutation check must cover is there, its files exist, and no listed test file is missing
(the driver would drop a missing one silently). Running mutmut itself is `make mutation`, not CI."""

from __future__ import annotations

import importlib.util
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
    assert len(lines) == 11 and lines[0].startswith("fusion (")  # smallest first
    assert any(line.startswith("training (") and "(only " in line and "kadapter_cli.training.xǁ_Loopǁ_train_step*" in line
               for line in lines)
