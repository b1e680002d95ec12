"""PatchCore (Roth et al., CVPR 2022): memory bank of patch features, nearest-neighbour scores.

Scoring follows the paper and the official code: each test patch's score is its Euclidean
distance to the nearest bank vector (exact faiss search); the image score is the maximum patch
score, optionally re-weighted by the paper's Eq. 7; the map is the patch-score grid upsampled
bilinearly to the input size and smoothed with a Gaussian (sigma 4 by default).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import PatchCoreSettings
from pipeline.detectors.base import ScoreBatch
from pipeline.features.backbones import build_backbone
from pipeline.features.patch_embedding import PatchEmbedder
from pipeline.features.preprocess import gaussian_blur
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import BankMetadata, load_index, load_metadata, resolve_bank_uri
from pipeline.memory_bank.index import ShardedIndex


def build_embedder(settings: PatchCoreSettings, storage: Storage, device: str = "cpu") -> tuple[PatchEmbedder, str]:
    backbone, channels, weights_fingerprint = build_backbone(
        settings.backbone, settings.layers, settings.weights, settings.seed, storage
    )
    embedder = PatchEmbedder(backbone, settings.layers, channels, settings.pretrain_embed_dim, settings.embed_dim,
                             settings.precision)
    return embedder.to(device).eval(), weights_fingerprint


def settings_from_metadata(meta: BankMetadata) -> PatchCoreSettings:
    return PatchCoreSettings(
        backbone=meta.backbone, weights=meta.weights, seed=meta.seed, layers=meta.layers,
        image_size=meta.image_size, pretrain_embed_dim=meta.pretrain_embed_dim, embed_dim=meta.embed_dim,
        coreset_ratio=meta.coreset_ratio, coreset_projection_dim=meta.coreset_projection_dim,
        num_neighbors=meta.num_neighbors, reweight=meta.reweight, sigma=meta.sigma, precision=meta.precision,
    )


class PatchCoreDetector:
    name = "patchcore"

    def __init__(self, embedder: PatchEmbedder, index: ShardedIndex, meta: BankMetadata, device: str = "cpu"):
        self.embedder = embedder
        self.index = index
        self.meta = meta
        self.device = device
        self.version = f"{meta.version}:{meta.fingerprint[:19]}"
        self.threshold = meta.threshold
        self.image_size = meta.image_size

    @classmethod
    def load(cls, storage: Storage, bank: str, version: str | None = None, device: str = "cpu") -> PatchCoreDetector:
        uri = resolve_bank_uri(storage, bank, version)
        meta = load_metadata(storage, uri)
        embedder, weights_fingerprint = build_embedder(settings_from_metadata(meta), storage, device)
        if weights_fingerprint != meta.weights_fingerprint:
            raise ValueError(
                f"bank {uri}: backbone weights {meta.weights} now have fingerprint {weights_fingerprint}, "
                f"the bank was built with {meta.weights_fingerprint}"
            )
        return cls(embedder, load_index(storage, uri, meta, use_gpu=device.startswith("cuda")), meta, device)

    def patch_scores(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-patch NN distances ``[B,h,w]``, NN ids ``[B,h*w,k]`` and the patch features."""
        feats, (h, w) = self.embedder(images.to(self.device))
        flat = feats.reshape(-1, feats.shape[-1]).float().cpu().numpy()
        dist, ids = self.index.search(flat, 1)
        b = images.shape[0]
        return dist[:, 0].reshape(b, h, w), ids.reshape(b, h * w, -1), flat.reshape(b, h * w, -1)

    def _reweighted(self, raw: np.ndarray, nn_ids: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Paper Eq. 7: damp the max score when the test patch's nearest bank vector lies in a dense area."""
        b = raw.shape[0]
        flat_raw = raw.reshape(b, -1)
        worst = flat_raw.argmax(axis=1)
        m_test = feats[np.arange(b), worst]  # [B, E]
        m_star = self.index.reconstruct(nn_ids[np.arange(b), worst, 0])
        _, support = self.index.search(m_star, self.meta.num_neighbors)  # includes m* itself
        scores = np.empty(b, dtype=np.float32)
        for i in range(b):
            neighbours = self.index.reconstruct(support[i][support[i] >= 0])
            d = np.linalg.norm(neighbours - m_test[i], axis=1)
            softmax = np.exp(d - d.max()) / np.exp(d - d.max()).sum()
            scores[i] = (1.0 - softmax[0]) * flat_raw[i, worst[i]]
        return scores

    def score(self, images: torch.Tensor) -> ScoreBatch:
        raw, nn_ids, feats = self.patch_scores(images)
        if self.meta.reweight:
            scores = self._reweighted(raw, nn_ids, feats)
        else:
            scores = raw.reshape(raw.shape[0], -1).max(axis=1).astype(np.float32)
        maps = F.interpolate(torch.from_numpy(raw).unsqueeze(1), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        maps = gaussian_blur(maps, self.meta.sigma)
        return ScoreBatch(scores=scores, maps=maps.numpy().astype(np.float32))
