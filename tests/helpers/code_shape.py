"""The code's shape: the import graph of ``pipeline/`` and its cycles, and the longest functions.

``python -m tests.helpers.code_shape [ROOT]`` prints them for a checkout (the numbers in issue 17's note)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


DEFERRING = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With)


def _module_level_imports(tree: ast.Module, deferred: bool = False) -> list[str]:
    """Modules imported when the module itself is imported: top-level statements, not ``if TYPE_CHECKING:``
    blocks (never run). ``deferred``: also the imports inside functions (they run when the function does)."""
    found: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append(node.module)
                found.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try) or (deferred and isinstance(node, DEFERRING)):
                visit(node.body)

    visit(tree.body)
    return found


def _with_parents(module: str, importer: str) -> set[str]:
    """``module`` and the packages above it whose ``__init__`` runs first, except the importer's own ancestors
    (Python initialises those before the importer's first line)."""
    parts = module.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own


def import_graph(root: Path, package: str = "pipeline", deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules that run when it is imported."""
    paths = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for imported in _module_level_imports(ast.parse(path.read_text()), deferred):
            targets |= _with_parents(imported, name)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def longest_functions(root: Path, package: str = "pipeline", n: int = 5) -> list[tuple[int, str]]:
    """``(lines, module:function)`` of the ``n`` longest functions and methods."""
    found = []
    for path in (root / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{module_name(path, root)}:{node.name}"))
    return sorted(found, reverse=True)[:n]


def main(root: Path) -> None:
    modules = list((root / "pipeline").rglob("*.py"))
    print(f"pipeline modules: {len(modules)}, lines: {sum(len(p.read_text().splitlines()) for p in modules)}")
    print(f"import cycles at import time: {cycles(import_graph(root))}")
    print(f"import cycles counting imports inside functions: {cycles(import_graph(root, deferred=True))}")
    print("longest functions: " + ", ".join(f"{name} {lines}" for lines, name in longest_functions(root)))
    print(f"README.md lines: {len((root / 'README.md').read_text().splitlines())}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
