"""The one shape every detector has: images in, scores (and maps) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pipeline.features.preprocess import Preprocess


@dataclass
class ScoreBatch:
    scores: np.ndarray  # [B] float32, higher = more anomalous
    maps: np.ndarray | None  # [B, H, W] float32 at the model's input size, or None


class Detector(Protocol):
    name: str
    version: str  # identifies the model artifact (bank version + fingerprint, checkpoint hash)
    threshold: float | None  # calibrated decision threshold, if the artifact has one
    preprocess: Preprocess  # decoded image -> the input :meth:`score` expects

    def score(self, images: torch.Tensor) -> ScoreBatch:
        """``images``: float ``[B,3,S,S]`` in 0..1, ``S = preprocess.input_size``."""
        ...
