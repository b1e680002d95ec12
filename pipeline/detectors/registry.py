"""Every detector, by name: what scoring it needs, how its model is resolved and loaded, how it is trained.

Adding a detector is its package plus one :class:`DetectorEntry` here; the jobs look the name up and never branch
on it. This module imports no torch: the command lines validate ``--detector`` against :data:`DETECTOR_NAMES`
before the heavy imports. Resolvers, loaders, trainers and training settings are named ``"module:attribute"``
and imported when first used (:func:`load_attr`).

Signatures of the named functions:

- ``resolve(storage, cfg: ScoreConfig) -> ModelRef`` runs on the driver before any worker starts: it checks the
  model is there and readable and names its version;
- ``load(cfg: ScoreConfig, storage, model: ModelRef, device) -> Detector`` runs once in each score worker;
- ``random_weights(settings: dict, cfg: ScoreConfig) -> tuple[str, ...]`` (checkpoint detectors) names the frozen
  pretrained parts that scoring with a checkpoint whose stored settings are ``settings`` would initialise at random;
- ``Trainer.check(cfg: TrainConfig, storage) -> None`` runs on the driver before Ray starts: settings that cannot
  train (with the setting to change) and weights that cannot be read fail here, random weights are warned about;
- ``Trainer.run(cfg: TrainConfig, local: bool) -> TrainResult`` trains on Ray and returns the checkpoint;
- ``Importer.convert(source: Path, out: str, storage, **options) -> dict`` turns the authors' released files into
  this product's artifact (``jobs.import_checkpoint --format NAME``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pipeline.detectors.saa.settings import SAASettings


@dataclass(frozen=True)
class Trainer:
    data: str  # the TrainConfig setting that holds the training data ("normal" or "aux")
    settings: str  # "module:Class": its settings model, the TrainConfig section named after the detector
    run: str  # "module:function", see the module docstring
    check: str  # "module:function", see the module docstring


@dataclass(frozen=True)
class Importer:
    convert: str  # "module:function", see the module docstring
    runs_pickle: bool = False  # the release pickles code: converting it needs --trust-pickle


@dataclass(frozen=True)
class DetectorEntry:
    name: str
    needs: tuple[tuple[str, str], ...]  # (ScoreConfig setting, what it holds) that scoring cannot do without
    resolve: str
    load: str
    trainer: Trainer | None = None
    score_settings: type[BaseModel] | None = None  # its own ScoreConfig section, named after it
    importer: Importer | None = None
    random_weights: str | None = None  # "module:function", see the module docstring


_CHECKPOINT = ("model", "a checkpoint from jobs.train")

DETECTORS: dict[str, DetectorEntry] = {e.name: e for e in [
    DetectorEntry("patchcore", needs=(("bank", "a memory bank from jobs.fit"),),
                  resolve="pipeline.detectors.patchcore.detector:resolve_bank",
                  load="pipeline.detectors.patchcore.detector:load_for_score",
                  importer=Importer("pipeline.detectors.patchcore.importer:convert")),
    DetectorEntry("dmad", needs=(_CHECKPOINT,),
                  resolve="pipeline.detectors.checkpoints:resolve_checkpoint",
                  load="pipeline.detectors.dmad.detector:load_for_score",
                  trainer=Trainer("normal", "pipeline.detectors.dmad.settings:DMADSettings",
                                  "pipeline.detectors.dmad.train:run",
                                  "pipeline.detectors.dmad.train:check"),
                  importer=Importer("pipeline.detectors.dmad.importer:convert", runs_pickle=True),
                  random_weights="pipeline.detectors.dmad.settings:random_weights"),
    DetectorEntry("anomalyclip", needs=(_CHECKPOINT,),
                  resolve="pipeline.detectors.checkpoints:resolve_checkpoint",
                  load="pipeline.detectors.anomalyclip.detector:load_for_score",
                  trainer=Trainer("aux", "pipeline.detectors.anomalyclip.settings:AnomalyCLIPSettings",
                                  "pipeline.detectors.anomalyclip.train:run",
                                  "pipeline.detectors.anomalyclip.train:check"),
                  importer=Importer("pipeline.detectors.anomalyclip.importer:convert"),
                  random_weights="pipeline.detectors.checkpoints:random_clip"),
    DetectorEntry("inctrl", needs=(_CHECKPOINT, ("prompts", "normal images to draw its few-shot prompts from")),
                  resolve="pipeline.detectors.checkpoints:resolve_checkpoint",
                  load="pipeline.detectors.inctrl.detector:load_for_score",
                  trainer=Trainer("aux", "pipeline.detectors.inctrl.settings:InCTRLSettings",
                                  "pipeline.detectors.inctrl.train:run",
                                  "pipeline.detectors.components:check_clip_training"),
                  importer=Importer("pipeline.detectors.inctrl.importer:convert"),
                  random_weights="pipeline.detectors.checkpoints:random_clip"),
    DetectorEntry("saa", needs=(("saa.gdino_weights", "GroundingDINO weights: folder, s3://, hub name or none"),
                                ("saa.sam_weights", "SAM weights: folder, s3://, hub name or none")),
                  resolve="pipeline.detectors.saa.detector:resolve_saa",
                  load="pipeline.detectors.saa.detector:load_for_score",
                  score_settings=SAASettings),
]}

DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)
TRAINABLE_NAMES: tuple[str, ...] = tuple(n for n, e in DETECTORS.items() if e.trainer)
IMPORTABLE_NAMES: tuple[str, ...] = tuple(n for n, e in DETECTORS.items() if e.importer)


def load_attr(ref: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imports the module)."""
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def score_sections() -> dict[str, type[BaseModel]]:
    """The detectors' own ScoreConfig sections, by detector name."""
    return {n: e.score_settings for n, e in DETECTORS.items() if e.score_settings is not None}


def setting_value(cfg: BaseModel, dotted: str) -> Any:
    """The value of a dotted setting (``saa.gdino_weights``) of a config."""
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def missing_needs(name: str, cfg: BaseModel) -> str | None:
    """The first setting detector ``name`` needs that ``cfg`` leaves unset, as a sentence; None if all are set."""
    for setting, what in DETECTORS[name].needs:
        if setting_value(cfg, setting) in (None, ""):
            return f"detector {name} needs {setting} ({what})"
    return None
