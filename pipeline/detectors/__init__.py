"""The detectors: the protocol every detector follows, the registry, and one package per detector."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

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

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
