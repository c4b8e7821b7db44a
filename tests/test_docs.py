"""The documentation: the README as a short front page, and the MkDocs site under docs/.

`mkdocs build --strict` fails on a page left out of the nav, a link to a missing page and a link
to a missing anchor (mkdocs.yml's `validation`), so a broken link fails the suite. Nothing here
imports kadapter or torch: `pip install -e '.[docs]' pytest` is enough to run this file
(with `--noconftest` when typer is not installed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300

# Documents the project was specified in that are not in the repository; a reader cannot open them.
UNOPENABLE_CITATIONS = ("CONTRACT §", "reference §")
# The tracker issues the project was built from are not in the repository either: cite what a test
# covers (the feature, a docs page), not the issue it was written for.
ISSUE_CITATION = re.compile(r"\b[Ii]ssues? #?\d+")
# The code, the tests, the tools and the benchmarks: their comments, docstrings and notes.
CODE_FOLDERS = ("kadapter_cli", "tests", "tools", "benchmarks")
CODE_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".txt", ".toml", ".cfg"}


def test_the_site_builds_with_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (mkdocs and mkdocs-material are in the test and docs extras):\n"
        f"{result.stdout}\n{result.stderr}")
    assert (tmp_path / "site" / "index.html").is_file()
    for page in DOCS.glob("*.md"):
        folder = "" if page.stem == "index" else page.stem
        assert (tmp_path / "site" / folder / "index.html").is_file(), f"{page.name} was not built"


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if not re.search(rf":\s*{re.escape(p.name)}\s*$", nav, re.M)]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_the_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it a front page (at most {MAX_README_LINES}) and move "
        "the detail to a page under docs/")


def _links(markdown: str) -> list[str]:
    """Targets of inline Markdown links and images, outside fenced code blocks."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def _github_anchor(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_relative_link_in_the_readme_points_to_a_file():
    text = README.read_text(encoding="utf-8")
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = _links(text)
    assert links, "no links found in README.md"
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        if not path:
            if anchor not in anchors:
                broken.append(f"{link} (no such heading in README.md)")
        elif not (REPO / path).exists():
            broken.append(f"{link} (no such file)")
    assert not broken, f"broken links in README.md: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {Path(link.partition("#")[0]).name for link in _links(README.read_text(encoding="utf-8"))
              if link.startswith("docs/")}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert not pages - linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def _documentation_files() -> list[Path]:
    files = [README, REPO / "mkdocs.yml"]
    files += [p for p in sorted(DOCS.rglob("*")) if p.is_file() and p.suffix in {".md", ".py", ".yml", ".yaml"}]
    return files


def _unopenable_citations(text: str) -> list[str]:
    found = [c for c in UNOPENABLE_CITATIONS if c in text]
    found += sorted(set(ISSUE_CITATION.findall(text)))
    # ../shared/data holds the test data samples (KADAPTER_SHARED_DATA); nothing else there is the reader's.
    found += sorted({m for m in re.findall(r"\.\./shared/[\w.-]+", text) if m != "../shared/data"})
    return found


@pytest.mark.parametrize("path", _documentation_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_the_documentation_cites_only_what_a_reader_can_open(path):
    found = _unopenable_citations(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)} cites {found}: cite the fact, the paper or a docs page instead"


def _code_files() -> list[Path]:
    this = Path(__file__).resolve()  # names the patterns it looks for
    return [p for folder in CODE_FOLDERS for p in sorted((REPO / folder).rglob("*"))
            if p.is_file() and p.suffix in CODE_SUFFIXES and p.resolve() != this
            and not {"__pycache__", ".pytest_cache"} & set(p.parts)]


def test_the_code_cites_only_what_a_reader_can_open():
    # Comments, docstrings and notes of the package, the tests, the tools and the benchmarks.
    files = _code_files()
    assert len(files) > 100
    # errors="replace": tests/bad_inputs holds files that are not UTF-8 on purpose
    found = [f"{p.relative_to(REPO)}: {c}" for p in files
             for c in _unopenable_citations(p.read_text(encoding="utf-8", errors="replace"))]
    assert not found, "citations a reader cannot open (cite the fact, the paper or a docs page):\n" + "\n".join(found)
