"""Checkpoints of the learned detectors: plain tensors and strings, so they load with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from pipeline.detectors.base import ModelRef

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig
    from pipeline.io.storage import Storage


def pack(format_tag: str, settings_json: str, state: Mapping[str, torch.Tensor], **extra: str) -> bytes:
    """Serialise a detector's trained tensors with its settings (and e.g. the backbone's fingerprint)."""
    payload = {"format": format_tag, "settings": settings_json,
               "state": {name: t.detach().cpu().clone() for name, t in state.items()}, **extra}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def checkpoint_version(data: bytes) -> str:
    """The version recorded in result rows: a short content hash of the checkpoint bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def resolve_checkpoint(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """A checkpoint from jobs.train (``cfg.model``), versioned by its content hash."""
    storage.check_reachable(cfg.model, "model")
    version = checkpoint_version(storage.read_bytes(cfg.model))
    return ModelRef(cfg.model, version, None, {"model.version": version}, json.dumps({"uri": cfg.model}).encode())
