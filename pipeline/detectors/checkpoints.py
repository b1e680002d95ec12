"""Checkpoints of the learned detectors: plain tensors and strings, so they load with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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
    data = storage.read_bytes(cfg.model)
    version = checkpoint_version(data)
    return ModelRef(cfg.model, version, None, {"model.version": version}, json.dumps({"uri": cfg.model}).encode(),
                    random_weights=_random_weights(data, cfg))


def _random_weights(data: bytes, cfg: ScoreConfig) -> tuple[str, ...]:
    """What the detector's ``random_weights`` (see the registry) finds in the checkpoint's stored settings."""
    from pipeline.detectors.registry import DETECTORS, load_attr

    named = DETECTORS[cfg.detector].random_weights
    if named is None:
        return ()
    try:
        settings = json.loads(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["settings"])
    except Exception:  # noqa: BLE001 - not a checkpoint of ours: the detector's loader says so, with its own message
        return ()
    return load_attr(named)(settings, cfg)


def random_clip(settings: dict[str, Any], cfg: ScoreConfig) -> tuple[str, ...]:
    """AnomalyCLIP and InCTRL: their frozen CLIP, whose weights ``--clip-weights`` may override at scoring."""
    weights = cfg.clip_weights or settings.get("clip_weights", "none")
    arch = cfg.clip_arch or settings.get("clip_arch", "?")
    return (f"CLIP {arch} (clip_weights=none)",) if weights == "none" else ()
