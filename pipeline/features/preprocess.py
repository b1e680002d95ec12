"""Decoded RGB arrays to model input tensors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_input_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """``[H,W,3]`` uint8 to ``[3,size,size]`` float in 0..1 (antialiased bilinear resize)."""
    t = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].clamp_(0.0, 1.0)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B,H,W]`` maps, radius ``int(4*sigma+0.5)`` as scipy."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    out = maps.unsqueeze(1)
    pad_h = min(radius, out.shape[-2] - 1)
    pad_w = min(radius, out.shape[-1] - 1)
    out = F.pad(out, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else out
    kw = kernel[radius - pad_w: radius + pad_w + 1]
    out = F.conv2d(out, (kw / kw.sum()).view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else out
    kh = kernel[radius - pad_h: radius + pad_h + 1]
    out = F.conv2d(out, (kh / kh.sum()).view(1, 1, -1, 1))
    return out.squeeze(1)
