"""The package's layers (docs/architecture.md): data flows down, nothing imports a layer above it,
the library never imports the CLI, and there are no import cycles.

Every import counts, also one inside a function: a lazy import still ties two modules together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kadapter_cli"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = ("base", "artifacts", "data", "modeling", "tasks", "training", "stages", "api", "workflow", "commands", "cli")
BASE = {"kadapter_cli", "kadapter_cli.errors", "kadapter_cli.progress", "kadapter_cli.processes"}
CLI_PACKAGES = ("typer", "click")


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    parts = module.split(".")
    if parts[1] == "cli":
        return "cli"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: put it in one of {', '.join(LAYERS[1:-1])}")
    return parts[1]


def imports(path: Path, modules: set[str]) -> dict[str, int]:
    """Every kadapter_cli module and CLI package `path` imports, with the first line doing so."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from kadapter_cli.x import y` imports module x.y when y is one, else module x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "kadapter_cli":
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.setdefault(name, node.lineno)
            elif top in CLI_PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def build_graph(package: Path) -> dict[str, dict[str, int]]:
    """{module: {imported module or CLI package: line}} for every module of `package`."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    modules = set(files)
    return {name: {m: line for m, line in imports(path, modules).items() if m != name} for name, path in files.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return build_graph(PACKAGE)


def test_every_module_sits_in_a_layer(graph):
    for module in graph:
        layer(module)


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = []
    for module, targets in graph.items():
        rank = LAYERS.index(layer(module))
        for target, line in targets.items():
            if target in CLI_PACKAGES:
                continue
            if LAYERS.index(layer(target)) > rank:
                upward.append(f"{module} (line {line}) imports {target}: {layer(module)} < {layer(target)}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_only_the_command_layer_speaks_typer_or_click(graph):
    offenders = [f"{module} (line {line}) imports {target}" for module, targets in graph.items()
                 for target, line in targets.items()
                 if target in CLI_PACKAGES and layer(module) not in ("commands", "cli")]
    assert not offenders, "\n".join(offenders)


def test_there_are_no_import_cycles(graph):
    edges = {m: [t for t in targets if t in graph] for m, targets in graph.items()}
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The rules above can fail: a data module importing a stage, and two modules importing each other."""
    fake = tmp_path / "kadapter_cli"
    (fake / "data").mkdir(parents=True)
    (fake / "stages").mkdir()
    for init in (fake / "__init__.py", fake / "data" / "__init__.py", fake / "stages" / "__init__.py"):
        init.write_text("")
    (fake / "data" / "reader.py").write_text("def f():\n    from kadapter_cli.stages.run import g\n")
    (fake / "stages" / "run.py").write_text("from kadapter_cli.data import reader\nimport typer\n")
    built = build_graph(fake)
    with pytest.raises(AssertionError, match="kadapter_cli.data.reader .line 2. imports kadapter_cli.stages.run"):
        test_no_module_imports_a_layer_above_its_own(built)
    with pytest.raises(AssertionError, match="kadapter_cli.data.reader ↔ kadapter_cli.stages.run"):
        test_there_are_no_import_cycles(built)
    with pytest.raises(AssertionError, match="kadapter_cli.stages.run .line 2. imports typer"):
        test_only_the_command_layer_speaks_typer_or_click(built)
