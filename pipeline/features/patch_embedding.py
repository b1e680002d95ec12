"""PatchCore's locally aware patch features, as in the paper and its official code.

The official recipe, per tapped layer: unfold every position's ``p x p`` neighbourhood
(``patchsize`` p, 3 by default, odd; ``C*p*p`` values, zero padded), adaptive-average-pool that
vector to ``pretrain_embed_dim``, upsample deeper layers bilinearly to the first layer's grid,
concatenate the layers and adaptive-average-pool again to ``embed_dim``.

Every step but the upsampling is a fixed linear map over channels, and the upsampling is linear
over space, so they commute. We fold "unfold -> pool -> concat -> pool" into one fixed
``p x p`` convolution per layer (``embed_dim`` output channels), run it at the layer's own resolution,
upsample its output and sum. Same numbers (tested against the literal recipe), a fraction of the
memory traffic, and oneDNN/cuDNN run it in any precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD


def adaptive_pool_matrix(length: int, size: int) -> torch.Tensor:
    """The ``[size, length]`` matrix ``M`` with ``adaptive_avg_pool1d(x, size) == M @ x``."""
    eye = torch.eye(length, dtype=torch.float64).unsqueeze(1)
    return F.adaptive_avg_pool1d(eye, size).squeeze(1).T.contiguous()


def folded_kernels(channels: list[int], pretrain_embed_dim: int, embed_dim: int, patchsize: int = 3
                   ) -> list[torch.Tensor]:
    """Per layer, the ``[embed_dim, C, p, p]`` kernel equal to unfold + pool + concat + pool."""
    second = adaptive_pool_matrix(len(channels) * pretrain_embed_dim, embed_dim)
    kernels = []
    for i, c in enumerate(channels):
        first = adaptive_pool_matrix(c * patchsize * patchsize, pretrain_embed_dim)
        block = second[:, i * pretrain_embed_dim:(i + 1) * pretrain_embed_dim] @ first
        kernels.append(block.reshape(embed_dim, c, patchsize, patchsize).float())
    return kernels


class PatchEmbedder(nn.Module):
    def __init__(self, backbone: nn.Module, layers: list[str], channels: list[int], pretrain_embed_dim: int,
                 embed_dim: int, precision: str = "float32", patchsize: int = 3):
        super().__init__()
        if patchsize < 1 or patchsize % 2 == 0:
            raise ValueError(f"patchcore.patchsize={patchsize}: must be odd (the neighbourhood is centred)")
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.layers = list(layers)
        self.embed_dim = embed_dim
        self.precision = precision
        self.padding = patchsize // 2
        kernels = folded_kernels(channels, pretrain_embed_dim, embed_dim, patchsize)
        for layer, kernel in zip(self.layers, kernels, strict=True):
            self.register_buffer(f"kernel_{layer}", kernel, persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``images``: float ``[B,3,H,W]`` in 0..1. Returns float32 ``[B, h*w, embed_dim]`` and ``(h, w)``."""
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        dtype = torch.bfloat16 if self.precision == "bfloat16" else None
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            taps = self.backbone(x)
            grid = tuple(taps[self.layers[0]].shape[-2:])
            out = None
            for layer in self.layers:
                y = F.conv2d(taps[layer], getattr(self, f"kernel_{layer}"), padding=self.padding)
                if tuple(y.shape[-2:]) != grid:
                    y = F.interpolate(y.float(), size=grid, mode="bilinear", align_corners=False)
                out = y.float() if out is None else out + y.float()
        batch = images.shape[0]
        return out.permute(0, 2, 3, 1).reshape(batch, grid[0] * grid[1], self.embed_dim), (int(grid[0]), int(grid[1]))
