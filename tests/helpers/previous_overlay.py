"""The heatmap overlay as the product drew it before the device renderer (float ramp, float blend): the reference
the new renderer is tested against, and the baseline ``bench/bench_overlay.py`` times."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.results.heatmaps import colorize


def reference_overlay(rgb: np.ndarray, amap: np.ndarray, scale: float, max_side: int = 1024) -> np.ndarray:
    """The overlay as ``overlay_png`` drew it before (float ramp, float blend), as an HWC uint8 array."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if size != (h, w):
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear", align_corners=False)
    colours = colorize(m[0, 0].numpy() / (2.0 * max(scale, 1e-12))).astype(np.uint8).astype(np.float32)
    return (0.55 * img[0].permute(1, 2, 0).numpy() + 0.45 * colours).clip(0, 255).astype(np.uint8)
