"""The package's shape, checked: no import cycle in ``pipeline/``, and the jobs' drivers never name a detector."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.detectors.registry import DETECTOR_NAMES

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the module itself is imported: top-level statements, not function bodies or
    ``if TYPE_CHECKING:`` blocks (those run later, or never)."""
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
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def _with_parents(module: str, importer: str) -> set[str]:
    """``module`` and the packages above it whose ``__init__`` runs first, except the importer's own ancestors
    (Python initialises those before the importer's first line)."""
    parts = module.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own


def import_graph(package: str = "pipeline") -> dict[str, set[str]]:
    """Module -> the package's modules that run when it is imported."""
    paths = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for imported in _module_level_imports(ast.parse(path.read_text())):
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


def test_pipeline_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_package_init_counts_for_modules_outside_it():
    assert _with_parents("p.config.sections", "p.detectors.x.settings") == {"p.config.sections", "p.config"}
    assert _with_parents("p.results.heatmaps", "p.results.sink") == {"p.results.heatmaps"}


def test_drivers_name_no_detector():
    """Adding a detector is one package and one registry entry: the drivers look names up, never spell them."""
    for driver in ("score.py", "train.py", "import_checkpoint.py"):
        source = (ROOT / "pipeline" / driver).read_text()
        tree = ast.parse(source)
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not [m for m in imported if m.startswith("pipeline.detectors.") and m.split(".")[2] in DETECTOR_NAMES], \
            driver
        strings = {n.value.lower() for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        for name in DETECTOR_NAMES:
            assert not [s for s in strings if name in s.split()], (driver, name)
