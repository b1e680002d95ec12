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
    """Separable Gaussian smoothing of ``[B,H,W]`` maps, as ``scipy.ndimage.gaussian_filter`` (the official
    detectors' smoothing): radius ``int(4*sigma+0.5)``, borders extended with scipy's ``reflect`` mode."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1)
    out = out[..., _reflect_indices(out.shape[-1], radius, maps.device)]
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = out[..., _reflect_indices(out.shape[-2], radius, maps.device), :]
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out.squeeze(1)


def _reflect_indices(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices extending ``0..n-1`` by ``radius`` each side as scipy's ``reflect`` (d c b a | a b c d | d c b a),
    for any radius (torch's ``reflect`` padding is scipy's ``mirror``, and stops at ``n - 1``)."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)
