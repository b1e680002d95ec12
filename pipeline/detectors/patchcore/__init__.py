"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features, a greedy coreset, kNN scoring.

Public names are re-exported here and imported on first use (PEP 562), so the registry and the command
lines can name a detector's settings without loading torch or the models."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "BACKBONES": "pipeline.detectors.patchcore.importer",
    "FEATURE_SETTINGS": "pipeline.detectors.patchcore.fit",
    "FitWorker": "pipeline.detectors.patchcore.fit",
    "INDEX_FILE": "pipeline.detectors.patchcore.importer",
    "ImportRefused": "pipeline.detectors.patchcore.importer",
    "LAYERS": "pipeline.detectors.patchcore.importer",
    "MAX_LOGGED_INDEX_BYTES": "pipeline.detectors.patchcore.fit",
    "OFFICIAL_RESIZE": "pipeline.detectors.patchcore.importer",
    "PARAMS_FILE": "pipeline.detectors.patchcore.importer",
    "PARAM_TYPES": "pipeline.detectors.patchcore.importer",
    "PatchCoreDetector": "pipeline.detectors.patchcore.detector",
    "PatchCoreSettings": "pipeline.detectors.patchcore.settings",
    "PlainUnpickler": "pipeline.detectors.patchcore.importer",
    "RELIABLE_CALIBRATION_IMAGES": "pipeline.detectors.patchcore.fit",
    "build_embedder": "pipeline.detectors.patchcore.detector",
    "convert": "pipeline.detectors.patchcore.importer",
    "load_for_score": "pipeline.detectors.patchcore.detector",
    "local_budget": "pipeline.detectors.patchcore.fit",
    "preprocess_of": "pipeline.detectors.patchcore.detector",
    "read_params": "pipeline.detectors.patchcore.importer",
    "resolve_bank": "pipeline.detectors.patchcore.detector",
    "run_fit": "pipeline.detectors.patchcore.fit",
    "split_calibration": "pipeline.detectors.patchcore.fit",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
