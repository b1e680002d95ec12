"""The detectors: the protocol every detector follows, the registry, and one package per detector.

Public names are re-exported here and imported on first use (PEP 562), so importing one of them loads only
its own module."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DETECTORS": "pipeline.detectors.registry",
    "DETECTOR_NAMES": "pipeline.detectors.registry",
    "Detector": "pipeline.detectors.base",
    "DetectorEntry": "pipeline.detectors.registry",
    "IMPORTABLE_NAMES": "pipeline.detectors.registry",
    "Importer": "pipeline.detectors.registry",
    "ModelRef": "pipeline.detectors.base",
    "ScoreBatch": "pipeline.detectors.base",
    "TRAINABLE_NAMES": "pipeline.detectors.registry",
    "Trainer": "pipeline.detectors.registry",
    "checkpoint_version": "pipeline.detectors.checkpoints",
    "clip_training_inputs": "pipeline.detectors.components",
    "load_attr": "pipeline.detectors.registry",
    "missing_needs": "pipeline.detectors.registry",
    "pack": "pipeline.detectors.checkpoints",
    "resolve_checkpoint": "pipeline.detectors.checkpoints",
    "score_sections": "pipeline.detectors.registry",
    "setting_value": "pipeline.detectors.registry",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
