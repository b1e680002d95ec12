"""The package's shape, checked: no import cycle in ``pipeline/``, and the jobs' drivers never name a detector."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.detectors.registry import DETECTOR_NAMES
from tests.helpers.code_shape import _with_parents, cycles, import_graph, module_name

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_has_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []
    assert cycles(import_graph(ROOT, deferred=True)) == []  # not even through imports inside functions


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


def test_every_package_re_export_resolves_to_its_home():
    """``from pipeline.<package> import Name`` works for every name a package lists, from the module it names."""
    import importlib

    for init in sorted((ROOT / "pipeline").rglob("__init__.py")):
        package = importlib.import_module(module_name(init, ROOT))
        for name, home in getattr(package, "_HOMES", {}).items():
            assert getattr(package, name) is getattr(importlib.import_module(home), name), (package.__name__, name)
