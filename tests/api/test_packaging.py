"""How kadapter installs and imports (docs/python-api.md): dependency ranges that leave a user's torch alone, the
`kadapter` package in the distribution, a lazy public face, and a command line that never imports
torch for `--help`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


def test_dependencies_are_ranges_that_admit_the_tested_versions():
    requirements = _requirements()
    admitted = {"torch": ("2.11.0", "2.13.0"), "transformers": ("5.17.0", "5.25.0"), "accelerate": ("1.15.0", "1.16.0"),
                "huggingface_hub": ("1.0.0", "2.4.0")}
    for name, versions in admitted.items():
        spec = requirements[name].specifier
        assert not any(s.operator in ("==", "===") for s in spec), f"{name} is pinned: {spec}"
        assert all(spec.contains(v) for v in versions), f"{name} {spec} refuses one of {versions}"
    assert not requirements["torch"].specifier.contains("2.10.0")
    assert not requirements["transformers"].specifier.contains("6.0.0")


def test_make_test_keeps_the_exact_cpu_pin():
    assert re.search(r"pip install -q torch==2\.13\.0\n", (REPO / "Makefile").read_text())


@pytest.mark.slow
def test_installing_keeps_the_installed_torch(tmp_path):
    """`pip install .` into this environment (torch 2.13 installed) would install kadapter alone."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                    "--quiet", "--report", str(report), str(REPO)], check=True, capture_output=True)
    assert [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]] == ["kadapter"]


def test_the_package_and_its_public_names():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "kadapter" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    import kadapter
    import kadapter_cli

    assert kadapter.__version__ == kadapter_cli.__version__
    assert set(kadapter.__all__) == {"__version__", *kadapter._PUBLIC}
    for name in kadapter._PUBLIC:
        assert getattr(kadapter, name).__name__ == name
    with pytest.raises(AttributeError):
        kadapter.no_such_name  # noqa: B018


def _imported_after(code: str) -> set[str]:
    script = f"import sys; {code}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())


def test_the_public_face_is_lazy_and_the_command_line_imports_no_torch():
    face = _imported_after("import kadapter")
    assert "transformers" in face  # the model type is registered with AutoConfig and AutoModel on import
    assert not {"kadapter_cli.api.encoder", "kadapter_cli.api.features_file"} & face  # loaded on first use
    assert "torch" not in _imported_after("import kadapter_cli.cli")  # `kadapter --help` stays fast
