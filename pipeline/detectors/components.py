"""Pieces two detectors share: what the CLIP-based trainers (AnomalyCLIP, InCTRL) start from."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from pipeline.features.clip import check_clip_weights, load_clip
from pipeline.features.preprocess import Preprocess
from pipeline.io.labelled import LabelledSet, load_labelled
from pipeline.io.storage import Storage
from pipeline.runtime import setup_worker_threads

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

log = logging.getLogger(__name__)


def clip_training_inputs(cfg: TrainConfig) -> tuple[Any, torch.nn.Module, str, LabelledSet, str]:
    """In the task: the detector's settings, the frozen CLIP on the task's device, its fingerprint, the aux data."""
    device = setup_worker_threads(cfg.runtime)
    storage = Storage(cfg.storage)
    settings = cfg.detector_settings()
    clip_model, clip_fingerprint = load_clip(settings.clip_arch, settings.clip_weights, settings.seed, storage)
    aux = load_labelled(storage, cfg.aux, Preprocess(settings.image_size, interpolation=settings.interpolation),
                        cfg.decode)
    return settings, clip_model.to(device), clip_fingerprint, aux, device


def check_clip_training(cfg: TrainConfig, storage: Storage) -> None:
    """On the driver, before Ray starts: the CLIP weights are there (or one sentence says which file to place);
    random CLIP weights are warned about, as PatchCore warns about a random backbone."""
    settings = cfg.detector_settings()
    check_clip_weights(settings.clip_arch, settings.clip_weights, storage)
    if settings.clip_weights == "none":
        log.warning("%s.clip_weights=none: CLIP is randomly initialised, so what this model learns means nothing "
                    "about real anomalies (fine for tests and demos; give --clip-weights for real use)", cfg.detector)
