"""PatchCore's locally aware patch features, as in the paper and its official code.

Per tapped layer: every position's 3x3 neighbourhood is unfolded (``C*9`` values) and
adaptive-average-pooled to ``pretrain_embed_dim``; deeper layers are bilinearly upsampled to
the first layer's grid; the per-layer vectors are concatenated and pooled again to
``embed_dim``. Channel pooling and spatial interpolation are both linear on different axes,
so we pool *before* upsampling: the same numbers for a fraction of the memory traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD


class PatchEmbedder(nn.Module):
    def __init__(self, backbone: nn.Module, layers: list[str], pretrain_embed_dim: int, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)
        self.pretrain_embed_dim = pretrain_embed_dim
        self.embed_dim = embed_dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``images``: float ``[B,3,H,W]`` in 0..1. Returns ``[B, h*w, embed_dim]`` and the grid ``(h, w)``."""
        taps = self.backbone((images - self.mean) / self.std)
        batch = images.shape[0]
        grid = taps[self.layers[0]].shape[-2:]
        pooled = []
        for layer in self.layers:
            fmap = taps[layer]
            h, w = fmap.shape[-2:]
            patches = F.unfold(fmap, kernel_size=3, padding=1)  # [B, C*9, h*w]
            flat = patches.transpose(1, 2).reshape(batch * h * w, 1, -1)
            reduced = F.adaptive_avg_pool1d(flat, self.pretrain_embed_dim)  # [B*h*w, 1, P]
            reduced = reduced.reshape(batch, h, w, -1).permute(0, 3, 1, 2)
            if (h, w) != tuple(grid):
                reduced = F.interpolate(reduced, size=grid, mode="bilinear", align_corners=False)
            pooled.append(reduced.permute(0, 2, 3, 1).reshape(batch * grid[0] * grid[1], 1, -1))
        stacked = torch.cat(pooled, dim=2)
        embedded = F.adaptive_avg_pool1d(stacked, self.embed_dim)
        return embedded.reshape(batch, grid[0] * grid[1], self.embed_dim), (int(grid[0]), int(grid[1]))
