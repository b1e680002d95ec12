"""Blocks both DMAD variants build from, as the official code has them in each network."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CoordConv(nn.Module):
    """A 3x3 convolution (no bias) over the input and four coordinate channels, ``coordinates(x) -> [1,4,H,W]``:
    each variant's official ``CoordConv2d`` encodes the position its own way."""

    def __init__(self, cin: int, cout: int, coordinates: Callable[[Tensor], Tensor]):
        super().__init__()
        self.conv = nn.Conv2d(cin + 4, cout, 3, padding=1, bias=False)
        self.coordinates = coordinates

    def forward(self, x: Tensor) -> Tensor:
        coords = self.coordinates(x).expand(x.shape[0], -1, -1, -1)
        return self.conv(torch.cat([x, coords], dim=1))


class ResidualBlock(nn.Module):
    """The offset networks' ``ResBlock`` with batch norm: ``x + conv1x1(relu(bn(conv3x3(relu(x)))))``."""

    def __init__(self, width: int):
        super().__init__()
        self.convs = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.convs(x)


def sample(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear warp by a ``grid_sample`` grid, zeros outside, corners aligned (as the official warps)."""
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
