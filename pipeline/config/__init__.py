"""Typed, validated job configuration: the shared sections, each job's config, and loading from YAML and flags."""

from pipeline.config.jobs import EvaluateConfig, FitConfig, ImportConfig, ScoreConfig
from pipeline.config.loading import SECRETS, dump_config, load_config
from pipeline.config.sections import (
    DecodeSettings,
    Interpolation,
    JobConfig,
    RuntimeSettings,
    StorageSettings,
    StrictModel,
    TrackingSettings,
    VideoSettings,
)

__all__ = ["SECRETS", "DecodeSettings", "EvaluateConfig", "FitConfig", "ImportConfig", "Interpolation", "JobConfig",
           "RuntimeSettings", "ScoreConfig", "StorageSettings", "StrictModel", "TrackingSettings", "VideoSettings",
           "dump_config", "load_config"]
