"""The one shape every detector has: images in, scores (and maps) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.features.preprocess import Preprocess


@dataclass
class ScoreBatch:
    scores: np.ndarray  # [B] float32, higher = more anomalous
    maps: np.ndarray | None  # [B, H, W] float32 at the model's input size, or None


@dataclass(frozen=True)
class ModelRef:
    """What a run scores with, resolved on the driver: a bank version, a checkpoint, or a set of weights."""

    uri: str
    version: str  # recorded in every result row (model_version)
    threshold: float | None
    params: dict[str, Any]  # logged to MLflow and the summary
    metadata: bytes  # logged to MLflow beside the run, as ``metadata_name``
    metadata_name: str = "model.json"
    # the parts whose weights are a seeded random initialisation, each named in a phrase ("the resnet18 backbone
    # of bank v0001 (patchcore.weights=none)"): the scores then mean nothing, and the log, summary.json, the
    # MLflow run and the report say so
    random_weights: tuple[str, ...] = ()
    inspected_fraction: float = 1.0  # the centred fraction of each image side the model scores (1: the whole image)


class Detector(Protocol):
    """Images in, scores (and maps) out. A sequence model (``context_frames > 0``, e.g. DMAD's video variant)
    scores video units only, each as one clip whose first ``context_frames`` frames are context."""

    name: str
    version: str  # identifies the model artifact (bank version + fingerprint, checkpoint hash)
    threshold: float | None  # calibrated decision threshold, if the artifact has one
    preprocess: Preprocess  # decoded image -> the input :meth:`score` expects
    context_frames: int  # frames a sequence model needs before each frame it scores; 0: images one by one

    def score(self, images: torch.Tensor) -> ScoreBatch:
        """``images``: float ``[B,3,S,S]`` in 0..1, ``S = preprocess.input_size``."""
        ...

    def score_sequence(self, frames: torch.Tensor, video: str) -> ScoreBatch:
        """Sequence models only: frames ``[T,3,S,S]`` of one clip of ``video`` -> scores and maps of frames
        ``context_frames..T-1``. ``ValueError`` for a clip this model cannot score (the reason is the message)."""
        ...
