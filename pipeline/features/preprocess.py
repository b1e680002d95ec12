"""Decoded RGB arrays to model input tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes a model input: a square resize to ``size`` with ``interpolation``
    (antialiased, as PIL resizes), then a centred ``crop`` (``None``: no crop), as the official
    torchvision ``Resize`` + ``CenterCrop`` transforms do. The image is squashed to the square rather
    than resized by its shorter side: the same on the square images of MVTec AD, and a wide video frame
    keeps its sides in view instead of losing them to the crop."""

    size: int
    crop: int | None = None
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    @classmethod
    def from_fraction(cls, size: int, crop_fraction: float, interpolation: Literal["bilinear", "bicubic"]
                      ) -> Preprocess:
        """Official PatchCore's ``--resize 256 --imagesize 224`` is ``size=256, crop_fraction=0.875``."""
        crop = round(size * crop_fraction)
        return cls(size, crop if crop < size else None, interpolation)

    @property
    def input_size(self) -> int:
        """The square side the model sees."""
        return self.crop or self.size

    @property
    def inspected_fraction(self) -> float:
        """The centred fraction of each side of the (resized) image that the model sees: 1 without a crop."""
        return self.input_size / self.size

    def _offset(self) -> int:
        return int(round((self.size - self.input_size) / 2.0))  # torchvision's CenterCrop rounding

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """``[H,W,3]`` uint8 to ``[3,input_size,input_size]`` float in 0..1."""
        t = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if t.shape[-2:] != (self.size, self.size):
            t = F.interpolate(t, size=(self.size, self.size), mode=self.interpolation, antialias=True,
                              align_corners=False)
        return self.crop_square(t[0]).clamp_(0.0, 1.0)

    def crop_square(self, t: torch.Tensor) -> torch.Tensor:
        """The centred crop of a ``[..., size, size]`` tensor (a resized image or mask)."""
        o, n = self._offset(), self.input_size
        return t[..., o:o + n, o:o + n]

    def uncrop(self, amap: np.ndarray) -> np.ndarray:
        """A ``[input_size, input_size]`` map placed back on the resized ``[size, size]`` image, so heatmaps
        and stored maps line up with the whole input; the border the crop cut off gets the map's minimum
        (no evidence either way)."""
        if not self.crop:
            return amap
        full = np.full((self.size, self.size), amap.min(), dtype=amap.dtype)
        o, n = self._offset(), self.input_size
        full[o:o + n, o:o + n] = amap
        return full


def describe_inspected(fraction: float) -> str:
    """What part of each image a model with this :attr:`Preprocess.inspected_fraction` scores, for the log."""
    if fraction >= 1:
        return "the whole of each image is inspected"
    return (f"only the centred {100 * fraction:.3g} % of each image's sides ({100 * fraction ** 2:.3g} % of its area) "
            f"is inspected: the outer {50 * (1 - fraction):.3g} % of every edge is never scored")


LETTERBOX_PAD = -1.0  # never a pixel value (pixels are 0..1), so the image's extent can be read back


@dataclass(frozen=True)
class Letterbox(Preprocess):
    """The image resized (antialiased bilinear) so its longer side is ``size``, its proportions kept, at the top
    left of a ``size x size`` square padded with :data:`LETTERBOX_PAD`, as SAM's ``ResizeLongestSide`` + pad. A
    detector that needs the image's true shape reads it back with :func:`letterbox_extent`; the maps it returns
    are squares over the whole image, like every detector's."""

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        h, w = rgb.shape[:2]
        scale = self.size / max(h, w)
        nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))  # SAM's get_preprocess_shape
        t = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if (nh, nw) != (h, w):
            t = F.interpolate(t, size=(nh, nw), mode=self.interpolation, antialias=True, align_corners=False)
        out = torch.full((3, self.size, self.size), LETTERBOX_PAD)
        out[:, :nh, :nw] = t[0].clamp_(0.0, 1.0)
        return out


def letterbox_extent(image: torch.Tensor) -> tuple[int, int]:
    """``(h, w)`` of the image inside a :class:`Letterbox` square ``[3,S,S]`` (the whole square for any other
    input)."""
    valid = image[0] >= 0
    rows, cols = valid.any(1), valid.any(0)
    return int(rows.sum()), int(cols.sum())


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
