"""Typed, validated job configuration: the shared sections, each job's config, and loading from YAML and flags.

Public names are re-exported here and imported on first use (PEP 562): a detector's settings module needs
:mod:`pipeline.config.sections` while the job configs need the detectors' settings, so this package must not
import its modules eagerly."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "DecodeSettings": "pipeline.config.sections",
    "EvaluateConfig": "pipeline.config.jobs",
    "FitConfig": "pipeline.config.jobs",
    "ImportConfig": "pipeline.config.jobs",
    "Interpolation": "pipeline.config.sections",
    "JobConfig": "pipeline.config.sections",
    "OverlaySettings": "pipeline.config.sections",
    "RuntimeSettings": "pipeline.config.sections",
    "SECRETS": "pipeline.config.loading",
    "ScoreConfig": "pipeline.config.jobs",
    "StorageSettings": "pipeline.config.sections",
    "StrictModel": "pipeline.config.sections",
    "TrackingSettings": "pipeline.config.sections",
    "TrainConfig": "pipeline.config.jobs",
    "VideoSettings": "pipeline.config.sections",
    "dump_config": "pipeline.config.loading",
    "load_config": "pipeline.config.loading",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
