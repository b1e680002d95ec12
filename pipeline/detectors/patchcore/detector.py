"""PatchCore (Roth et al., CVPR 2022): memory bank of patch features, nearest-neighbour scores.

Scoring follows the official code (amazon-science/patchcore-inspection): a patch's score is the
mean of the squared L2 distances to its ``anomaly_scorer_num_nn`` nearest bank vectors (1 by
default; exact search with faiss, or a chunked torch matmul with an exact float32 re-rank on the
worker's device, see ``memory_bank/knn.py``: both engines return the distances, the rule is applied
here); the image score is the maximum patch score, optionally re-weighted by the paper's Eq. 7
(``reweight``, with its own ``num_neighbors``: the official code has no Eq. 7); the map is the
patch-score grid upsampled bilinearly to the input size and smoothed with a Gaussian (sigma 4,
scipy's ``reflect`` borders). Banks written before this rule score as they were calibrated:
plain L2 to the nearest vector (``bank.json`` ``patch_distance: euclidean``, see
``memory_bank/bank.py`` ``LEGACY_DEFAULTS``).

Remaining differences from the official code, and why:
- features: its unfold -> pool -> upsample -> concat -> pool is folded into one fixed convolution per
  layer (``features/patch_embedding.py``): the same linear map, float32 summation order differs
  (tested equal to the official outputs within 1e-4, ``tests/test_official_patchcore.py``);
- coreset: our greedy k-center runs distributed (two-round composable coreset) on a seeded
  Gaussian projection; the official sampler is single-process with its own projection, so a bank
  we fit holds other vectors than the official fit of the same images (imported banks are used as
  they are);
- backbone BatchNorm: the official code's all-ones train-mode forward (see
  ``features/backbones.py``) is reproduced for imported banks only (``bn_shift_input``); our fits
  use the clean pretrained backbone, the paper's intent;
- ensembles (several backbones, scores min-max normalised over the test set) are not supported:
  the normalisation needs the whole test set, which a batch job scoring an archive does not have;
- preprocessing (``features/preprocess.py``): a square resize then the centred crop, where the
  official ``Resize(256)`` keeps the aspect ratio (the same on square images); maps are put back on
  the whole resized image (border = the map's minimum) for heatmaps, the official code returns the crop's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import ScoreConfig
from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.features.backbones import build_backbone
from pipeline.features.patch_embedding import PatchEmbedder
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import BankMetadata, load_index, load_metadata, resolve_bank_uri
from pipeline.memory_bank.knn import NearestNeighbours, build_knn, resolve_knn_engine


def build_embedder(settings: PatchCoreSettings, storage: Storage, device: str = "cpu",
                   bn_shift_input: tuple[int, int] | None = None) -> tuple[PatchEmbedder, str]:
    """The patch embedder and its weights' fingerprint; ``bn_shift_input`` for banks the official code made."""
    backbone, channels, weights_fingerprint = build_backbone(
        settings.backbone, settings.layers, settings.weights, settings.seed, storage, bn_shift_input
    )
    embedder = PatchEmbedder(backbone, settings.layers, channels, settings.pretrain_embed_dim, settings.embed_dim,
                             settings.precision, settings.patchsize)
    return embedder.to(device).eval(), weights_fingerprint


def preprocess_of(settings: PatchCoreSettings) -> Preprocess:
    """The resize and centred crop a bank's images get (at fit, calibration and score alike)."""
    return Preprocess.from_fraction(settings.image_size, settings.crop_fraction, settings.interpolation)


def resolve_bank(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """The bank version to score with (``cfg.bank_version``, else the latest) and its metadata."""
    storage.check_reachable(cfg.bank, "bank")
    uri = resolve_bank_uri(storage, cfg.bank, cfg.bank_version)
    meta = load_metadata(storage, uri)
    pc = meta.patchcore
    random = (f"the {pc.backbone} backbone of bank {uri} (patchcore.weights=none)",) if pc.weights == "none" else ()
    return ModelRef(uri, f"{meta.version}:{meta.fingerprint[:19]}", meta.threshold,
                    {"bank.version": meta.version, "bank.fingerprint": meta.fingerprint, "bank.weights": pc.weights},
                    meta.model_dump_json(indent=2).encode(), metadata_name="bank.json", random_weights=random,
                    inspected_fraction=preprocess_of(pc).inspected_fraction)


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> PatchCoreDetector:
    return PatchCoreDetector.load(storage, model.uri, device=device, engine=cfg.knn_engine,
                                  precision=cfg.knn_precision)


class PatchCoreDetector:
    """Scores where the features are: nearest-neighbour search, image score, Eq. 7 and the maps
    all run on the detector's device; only ``[B]`` scores and ``[B,H,W]`` maps come back."""

    name = "patchcore"
    context_frames = 0  # scores images one by one

    def __init__(self, embedder: PatchEmbedder, knn: NearestNeighbours, meta: BankMetadata, device: str = "cpu"):
        self.embedder = embedder
        self.knn = knn
        self.meta = meta
        self.device = device
        self.version = f"{meta.version}:{meta.fingerprint[:19]}"
        self.threshold = meta.threshold
        self.preprocess = preprocess_of(meta.patchcore)

    @classmethod
    def load(cls, storage: Storage, bank: str, version: str | None = None, device: str = "cpu",
             engine: str = "auto", precision: str | None = None) -> PatchCoreDetector:
        uri = resolve_bank_uri(storage, bank, version)
        meta = load_metadata(storage, uri)
        embedder, weights_fingerprint = build_embedder(meta.patchcore, storage, device,
                                                       meta.bn_shift_input)
        if weights_fingerprint != meta.weights_fingerprint:
            raise ValueError(
                f"bank {uri}: backbone weights {meta.patchcore.weights} now have fingerprint {weights_fingerprint}, "
                f"the bank was built with {meta.weights_fingerprint}"
            )
        use_faiss_gpu = resolve_knn_engine(engine, device) == "faiss" and device.startswith("cuda")
        index = load_index(storage, uri, meta, use_gpu=use_faiss_gpu)
        return cls(embedder, build_knn(index, engine, device, precision), meta, device)

    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch scores ``[B,h,w]`` (the bank's ``patch_distance`` rule), nearest-neighbour ids
        ``[B,h*w]`` and the patch features ``[B,h*w,E]``."""
        feats, (h, w) = self.embedder(images.to(self.device, non_blocking=True))
        b = feats.shape[0]
        if self.meta.patch_distance == "euclidean":
            dist, ids = self.knn.search(feats.reshape(b * h * w, -1), 1)
            scores = dist[:, 0]
        else:
            dist, ids = self.knn.search(feats.reshape(b * h * w, -1), min(self.meta.patchcore.anomaly_scorer_num_nn,
                                                                          self.knn.ntotal))
            scores = dist.square().mean(dim=1)
        return scores.reshape(b, h, w), ids[:, 0].reshape(b, h * w), feats

    def _reweighted(self, raw: torch.Tensor, nn_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Paper Eq. 7: damp the max score when the test patch's nearest bank vector lies in a dense area."""
        b = raw.shape[0]
        rows = torch.arange(b, device=raw.device)
        flat_raw = raw.reshape(b, -1)
        worst = flat_raw.argmax(dim=1)
        m_test = feats[rows, worst]  # [B, E]
        m_star = self.knn.reconstruct(nn_ids[rows, worst]).to(m_test.device)
        k = min(self.meta.patchcore.num_neighbors, self.knn.ntotal)
        _, support = self.knn.search(m_star, k)  # [B, k], includes m* itself
        neighbours = self.knn.reconstruct(support.reshape(-1)).to(m_test.device).reshape(b, k, -1)
        d = torch.linalg.vector_norm(neighbours - m_test[:, None], dim=-1)
        return (1.0 - torch.softmax(d, dim=1)[:, 0]) * flat_raw[rows, worst]

    def score(self, images: torch.Tensor) -> ScoreBatch:
        raw, nn_ids, feats = self.patch_scores(images)
        if self.meta.patchcore.reweight:
            scores = self._reweighted(raw, nn_ids, feats)
        else:
            scores = raw.reshape(raw.shape[0], -1).amax(dim=1)
        maps = F.interpolate(raw.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = gaussian_blur(maps, self.meta.patchcore.sigma)
        return ScoreBatch(scores=scores.float().cpu().numpy(), maps=maps.float().cpu().numpy())
