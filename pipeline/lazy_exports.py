"""Package re-exports that import a name's module on first use (PEP 562).

A package lists ``name -> home module`` and gets ``from package import name`` without importing every module when
the package itself is imported: the command lines stay fast, and a settings module can import a sibling package
that in turn needs it, without an import cycle."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """The package's ``__getattr__`` and ``__all__`` for ``homes``."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__, sorted(homes)
