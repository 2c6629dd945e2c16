"""The layered layout (../shared/DESIGN.md): no import circles anywhere in the package, the engine and the
schema know no recipe, and the layer contract in pyproject.toml holds (`lint-imports`, also run by `make lint`)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "alignkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> alignkit modules it imports, at any level of the file (function-level imports count)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in paths and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_schema_and_the_engine_know_no_recipe() -> None:
    graph = import_graph()
    assert {t for t in graph["alignkit.config"]} <= {m for m in graph if m.startswith("alignkit.utils")}
    for path in (PACKAGE / "engine").glob("*.py"):
        source = path.read_text()
        assert "config.recipe" not in source and "alignkit.recipes" not in source, path.name


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_layer_contract_holds() -> None:
    linter = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(linter)], cwd=PACKAGE.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_public_api_names_stay_functions_after_every_module_is_imported() -> None:
    """``alignkit.train`` was shadowed by the old ``alignkit.train`` package once any of its modules was imported."""
    import importlib
    import pkgutil

    import alignkit

    for info in pkgutil.walk_packages(alignkit.__path__, "alignkit."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in ("train", "load_config", "evaluate", "run_demo", "build_sandbox", "load_records", "get_loss"):
        assert callable(getattr(alignkit, name)) and not isinstance(getattr(alignkit, name), type(alignkit)), name
