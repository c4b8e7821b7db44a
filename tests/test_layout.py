"""The tests' own layout (docs/development.md): a folder per layer of the package, one file per
feature. At the top only the fixtures and the house tests of the whole repository; no file named
after how its tests were found (a mutation run, an issue) rather than what they test."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
HOUSE = {"conftest.py", "test_layers.py", "test_docs.py", "test_layout.py"}


def test_the_top_of_tests_holds_only_the_fixtures_and_the_house_tests():
    assert {p.name for p in TESTS.glob("*.py")} == HOUSE


def test_test_files_are_named_after_a_feature_and_each_name_once():
    files = [p for p in TESTS.rglob("test_*.py") if "bad_inputs" not in p.parts]
    assert [p for p in files if p.name.startswith("test_mutation_")] == []
    names = [p.name for p in files]  # the folders are not packages: pytest imports each file by its name
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
