"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features, a greedy coreset, kNN scoring."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "BACKBONES": "pipeline.detectors.patchcore.importer",
    "FEATURE_SETTINGS": "pipeline.detectors.patchcore.fit",
    "FitWorker": "pipeline.detectors.patchcore.fit",
    "INDEX_FILE": "pipeline.detectors.patchcore.importer",
    "LAYERS": "pipeline.detectors.patchcore.importer",
    "MAX_LOGGED_INDEX_BYTES": "pipeline.detectors.patchcore.fit",
    "OFFICIAL_RESIZE": "pipeline.detectors.patchcore.importer",
    "PARAMS_FILE": "pipeline.detectors.patchcore.importer",
    "PARAM_TYPES": "pipeline.detectors.patchcore.importer",
    "PatchCoreDetector": "pipeline.detectors.patchcore.detector",
    "PatchCoreSettings": "pipeline.detectors.patchcore.settings",
    "PlainUnpickler": "pipeline.detectors.patchcore.importer",
    "RELIABLE_CALIBRATION_IMAGES": "pipeline.detectors.patchcore.fit",
    "Round1": "pipeline.detectors.patchcore.fit",
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

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
