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
    """Separable Gaussian smoothing of ``[B,H,W]`` maps as ``scipy.ndimage.gaussian_filter`` (the
    official PatchCore code's): radius ``int(4*sigma+0.5)``, ``reflect`` borders (the edge sample
    repeated: ``c b a | a b c | c b a``, periodically for a radius beyond the map)."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps.unsqueeze(1)
    out = F.conv2d(out.index_select(-1, _reflected(out.shape[-1], radius, maps.device)), kernel.view(1, 1, 1, -1))
    out = F.conv2d(out.index_select(-2, _reflected(out.shape[-2], radius, maps.device)), kernel.view(1, 1, -1, 1))
    return out.squeeze(1)


def _reflected(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` on both sides with scipy's ``reflect`` rule."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)
