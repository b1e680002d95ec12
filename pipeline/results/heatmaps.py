"""Anomaly maps as colour overlays (PNG): numpy, torch and PIL only, so GPU hosts and benches can use it."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# A perceptually ordered dark-blue -> red -> yellow ramp (anchor colours, linearly interpolated).
RAMP = np.array([[0, 0, 40], [40, 0, 140], [180, 20, 120], [240, 90, 30], [255, 230, 60]], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """``values`` in 0..1 to RGB uint8 with the ramp above."""
    pos = np.clip(values, 0.0, 1.0) * (len(RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(RAMP) - 2)
    frac = (pos - lo)[..., None]
    return (RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac).astype(np.uint8)


SCALE_SPAN = 2.0  # the ramp runs from 0 to SCALE_SPAN * scale: the scale (the threshold) is its middle


def overlay_png(rgb: np.ndarray, amap: np.ndarray, scale: float, max_side: int = 1024) -> bytes:
    """Blend the anomaly map over the image. ``scale`` maps to the middle of the colour ramp,
    so with the calibrated threshold as scale, yellow means well above threshold."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if size != (h, w):
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear", align_corners=False)
    colours = colorize(m[0, 0].numpy() / (SCALE_SPAN * max(scale, 1e-12))).astype(np.float32)
    blended = 0.55 * img[0].permute(1, 2, 0).numpy() + 0.45 * colours
    out = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()
