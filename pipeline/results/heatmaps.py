"""Anomaly maps as colour overlays, rendered where the map is: ramp, blend and encode on the worker's device.

The ramp is a lookup table built once per device from the anchor colours below; a map value is
scaled so that ``scale`` (the calibrated threshold) lands in the middle of the ramp, so yellow
means well above threshold. JPEG is encoded by ``torchvision.io.encode_jpeg`` (on the GPU when the
tensors are there, libjpeg on the CPU); PNG and WebP by PIL on the CPU.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import encode_jpeg

OverlayFormat = Literal["jpeg", "png", "webp"]
EXTENSIONS: dict[str, str] = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}

# A perceptually ordered dark-blue -> red -> yellow ramp (anchor colours, linearly interpolated).
RAMP = np.array([[0, 0, 40], [40, 0, 140], [180, 20, 120], [240, 90, 30], [255, 230, 60]], dtype=np.float32)
LUT_SIZE = 1024  # ramp entries: neighbouring entries differ by at most 0.7 of a colour level
IMAGE_WEIGHT, MAP_WEIGHT = 0.55, 0.45
SCALE_SPAN = 2.0  # the ramp runs from 0 to SCALE_SPAN * scale: the scale (the threshold) is its middle


def colorize(values: np.ndarray) -> np.ndarray:
    """``values`` in 0..1 to RGB (float, 0..255) by linear interpolation between the ramp's anchors."""
    pos = np.clip(values, 0.0, 1.0) * (len(RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(RAMP) - 2)
    frac = (pos - lo)[..., None]
    return RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac


@functools.cache
def _channel_luts(device: str) -> torch.Tensor:
    """``MAP_WEIGHT`` x the ramp at ``LUT_SIZE`` evenly spaced values, rounded: [3, LUT_SIZE] uint8."""
    ramp = np.round(colorize(np.linspace(0.0, 1.0, LUT_SIZE)) * MAP_WEIGHT).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(ramp.T)).to(device)


def overlay_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    factor = min(1.0, max_side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def _planar(rgb: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    """[H, W, 3] -> contiguous [3, H, W] uint8 on ``device`` (numpy transposes a host array fastest)."""
    if isinstance(rgb, np.ndarray) and device == "cpu":
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return torch.as_tensor(rgb).to(device).permute(2, 0, 1).contiguous()


def blend(rgb: np.ndarray | torch.Tensor, amap: np.ndarray | torch.Tensor, scale: float, max_side: int,
          device: str) -> torch.Tensor:
    """The overlay of one image as a [3, H, W] uint8 tensor on ``device``: the image (shrunk to at most
    ``max_side``) blended with the ramp colour of the map (resized bilinearly to the same size).

    Planar uint8/int16 arithmetic and one table look-up per channel: a float or interleaved blend of a
    1024 px image costs two to three times more on a CPU."""
    img = _planar(rgb, device)
    size = overlay_size(img.shape[1], img.shape[2], max_side)
    if size != tuple(img.shape[1:]):
        img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True,
                            align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    m = torch.as_tensor(amap).to(device=device, dtype=torch.float32)
    m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    steps = (LUT_SIZE - 1) / (SCALE_SPAN * max(scale, 1e-12))
    index = m.mul_(steps).nan_to_num_(0.0).clamp_(0, LUT_SIZE - 1).add_(0.5).to(torch.int32).view(-1)
    luts = _channel_luts(device)
    colour = torch.empty((3, index.numel()), dtype=torch.uint8, device=device)
    for channel in range(3):
        torch.index_select(luts[channel], 0, index, out=colour[channel])
    # IMAGE_WEIGHT x 255 + MAP_WEIGHT x 255 <= 255: the sum fits in uint8
    image_part = img.to(torch.int16).mul_(round(IMAGE_WEIGHT * 256)).bitwise_right_shift_(8).to(torch.uint8)
    return image_part.add_(colour.view(3, *size))


def encode(overlays: list[torch.Tensor], fmt: OverlayFormat, quality: int) -> list[bytes]:
    """Encode [3, H, W] uint8 overlays: JPEG as one batch on their device, PNG and WebP by PIL."""
    if fmt == "jpeg":
        return [bytes(t.cpu().numpy()) for t in encode_jpeg(overlays, quality=quality)]
    out = []
    for overlay in overlays:
        buffer = io.BytesIO()
        image = Image.fromarray(overlay.permute(1, 2, 0).cpu().numpy())
        if fmt == "png":
            image.save(buffer, format="PNG", compress_level=1)
        else:
            image.save(buffer, format="WEBP", quality=quality, method=0)
        out.append(buffer.getvalue())
    return out


def render_overlays(images: Sequence[np.ndarray | torch.Tensor], maps: Sequence[np.ndarray | torch.Tensor],
                    scales: Sequence[float], fmt: OverlayFormat = "jpeg", quality: int = 80, max_side: int = 1024,
                    device: str = "cpu") -> list[bytes]:
    """Encoded overlays of a batch of images (HWC uint8) and their anomaly maps, rendered on ``device``."""
    with torch.inference_mode():
        overlays = [blend(rgb, amap, scale, max_side, device) for rgb, amap, scale in zip(images, maps, scales,
                                                                                          strict=True)]
        return encode(overlays, fmt, quality) if overlays else []
