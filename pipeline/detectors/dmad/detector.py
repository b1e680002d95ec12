"""DMAD (Liu et al., CVPR 2023, "Diversity-Measurable Anomaly Detection"), in plain torch.

Both variants squeeze what normal data looks like through a small VQ codebook and let a separate, penalised
deformation field absorb the *diversity* of normal samples (objects moving, parts slightly shifted). An anomaly then
shows as a residual the codebook cannot reproduce or as an unusually large deformation: the deformation magnitude
is the "diversity measure" of the title.

- ``variant="video"`` (PDM): a port of the official network and frame score, in
  :mod:`pipeline.detectors.dmad.video_model` (its docstring lists every remaining difference from the official code).
  This module wraps it: settings, 0..1 RGB clips to training windows, training, checkpoints and the detector.
- ``variant="image"`` (PPDM): a port of the official MVTec network (learnt offsets and inverse offsets, frozen
  encoder, RD4AD's bottleneck with a codebook, de-WideResNet50 decoder), its anomaly map and per-image score, in
  :mod:`pipeline.detectors.dmad.image_model` (its docstring lists every remaining difference from the official code,
  notably the image score without the official test-set min-max and best-of-two-AUROC selection). The official
  encoder is WideResNet50 with torchvision's IMAGENET1K_V1 weights: ``backbone="wide_resnet50_2"``,
  ``weights="torchvision:IMAGENET1K_V1"``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import StorageSettings
from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.detectors.dmad import image_model as ppdm
from pipeline.detectors.dmad import video_model as pdm
from pipeline.detectors.dmad.image_model import ImageDMAD
from pipeline.detectors.dmad.settings import CHECKPOINT_FORMAT, OFFICIAL_ALPHA, DMADSettings
from pipeline.detectors.dmad.video_model import VideoDMAD, to_model_space
from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from pipeline.features.preprocess import Preprocess
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig

VIDEO_FORMAT_2 = "dmad/2"  # its video checkpoints still load: same network; the settings also named these
FORMAT_2_IMAGE_SETTINGS = ("channels", "reconstruction_weight", "vq_weight", "smoothness_weight", "magnitude_weight")


# ---------------------------------------------------------------- video variant (PDM): see dmad_video


def clip_windows(frames: Tensor, in_frames: int) -> Tensor:
    """Training/scoring windows of one clip: ``[T,3,H,W]`` -> ``[max(T-in_frames, 0), in_frames+1, 3, H, W]``."""
    if frames.shape[0] <= in_frames:
        return frames.new_zeros((0, in_frames + 1, *frames.shape[1:]))
    return frames.unfold(0, in_frames + 1, 1).permute(0, 4, 1, 2, 3)


def split_windows(windows: Tensor, s: DMADSettings) -> tuple[Tensor, Tensor]:
    """0..1 RGB windows ``[B, in_frames+1, 3, H, W]`` -> (past frames on channels, target), in the official space."""
    if windows.ndim != 5 or windows.shape[1] != s.in_frames + 1 or windows.shape[2] != 3:
        raise ValueError(f"video batches are [B, in_frames+1={s.in_frames + 1}, 3, H, W], got {list(windows.shape)}")
    x = to_model_space(windows, s.colour)
    return x[:, :s.in_frames].flatten(1, 2), x[:, s.in_frames]


def video_losses(model: VideoDMAD, windows: Tensor, s: DMADSettings, scenes: Tensor | None = None
                 ) -> dict[str, Tensor]:
    past, target = split_windows(windows, s)
    return pdm.losses(model, past, target, scenes)


def video_frame_scores(components: Mapping[str, np.ndarray], s: DMADSettings) -> np.ndarray:
    """Frame scores of one video from its components (as :meth:`DMADDetector.score_clip` returns them)."""
    return pdm.frame_scores(components, s.score_weights, s.window, s.window_keep)


# ---------------------------------------------------------------- image variant (PPDM): see dmad_image


def normalise(images: Tensor) -> Tensor:
    """0..1 RGB -> ImageNet-normalised, as the official ``get_data_transforms``."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def image_losses(model: ImageDMAD, images: Tensor, s: DMADSettings) -> dict[str, Tensor]:
    return ppdm.losses(model, normalise(images))


def image_scores(model: ImageDMAD, images: Tensor, s: DMADSettings) -> ppdm.ImageScores:
    """Scores and maps of 0..1 images ``[B,3,H,W]``, each image on its own (see :func:`dmad_image.score_images`)."""
    return ppdm.score_images(model, normalise(images), s.deform_weight, s.sigma)


# ---------------------------------------------------------------- training


def build_model(settings: DMADSettings, storage: Storage | None = None) -> nn.Module:
    """A freshly initialised model (from torch's global RNG; the image backbone from ``settings.seed``)."""
    if settings.variant == "video":
        return VideoDMAD(settings)
    backbone, channels, fingerprint = build_backbone(settings.backbone, ppdm.LAYERS, settings.weights,
                                                     settings.seed, storage or Storage(StorageSettings()))
    return ImageDMAD(backbone, channels, fingerprint, settings.codebook_size, settings.offset_channels)


def video_background(windows: Tensor, scenes: Tensor, s: DMADSettings) -> tuple[Tensor, Tensor]:
    """Per scene, the median of the windows' target frames in the official space, and which scenes had frames."""
    return pdm.background_from(to_model_space(windows[:, s.in_frames], s.colour), scenes, s.scenes)


# ---------------------------------------------------------------- checkpoints and the detector


def save_checkpoint(model: nn.Module, settings: DMADSettings) -> bytes:
    """Plain tensors and strings only, so :func:`load_checkpoint` can use ``weights_only=True``. The frozen image
    backbone is not stored: it is rebuilt from the settings and checked against its weights' fingerprint."""
    state = {name: t for name, t in model.state_dict().items() if not name.startswith("backbone.")}
    return pack(CHECKPOINT_FORMAT, settings.model_dump_json(), state,
                backbone_fingerprint=model.backbone_fingerprint)


def load_checkpoint(data: bytes, storage: Storage | None = None, device: str = "cpu") -> DMADDetector:
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") not in (CHECKPOINT_FORMAT, VIDEO_FORMAT_2):
        raise ValueError(f"not a DMAD checkpoint (expected format {CHECKPOINT_FORMAT})")
    raw = json.loads(payload["settings"])
    if payload["format"] == VIDEO_FORMAT_2:
        if raw.get("variant") != "video":
            raise ValueError("this image-variant checkpoint (format dmad/2) is the old simplified model: retrain it "
                             "(the image variant is now the official network)")
        raw = {k: v for k, v in raw.items() if k not in FORMAT_2_IMAGE_SETTINGS}
    settings = DMADSettings.model_validate(raw)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the caller's RNG alone
        model = build_model(settings, storage)
    if model.backbone_fingerprint != payload["backbone_fingerprint"]:
        raise ValueError(f"backbone weights {settings.weights} now have fingerprint {model.backbone_fingerprint}, "
                         f"the checkpoint was trained with {payload['backbone_fingerprint']}")
    missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    missing = [name for name in missing if not name.startswith("backbone.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return DMADDetector(model.to(device), settings, checkpoint_version(data), device)


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> DMADDetector:
    return DMADDetector.load(storage, model.uri, device=device)


class DMADDetector:
    """DMAD behind the :class:`~pipeline.detectors.base.Detector` protocol.

    Image variant: :meth:`score` scores each image on its own. Video variant: :meth:`score` takes the batch as
    consecutive frames of one clip; the first ``in_frames`` frames have no prediction and get score NaN and an
    all-zero map, the rest get :func:`video_frame_scores` of the batch (so scores rank frames within the batch;
    background 0).
    Use :meth:`score_clip` on whole clips to keep the per-video normalisation per video.
    """

    name = "dmad"

    def __init__(self, model: nn.Module, settings: DMADSettings, version: str | None = None, device: str = "cpu"):
        self.model = model.eval()
        self.settings = settings
        self.device = device
        self.version = version or checkpoint_version(save_checkpoint(model, settings))
        self.threshold: float | None = None
        self.image_size = settings.image_size
        self.preprocess = Preprocess(settings.image_size, interpolation=settings.interpolation)

    @classmethod
    def load(cls, storage: Storage, uri: str, device: str = "cpu") -> DMADDetector:
        return load_checkpoint(storage.read_bytes(uri), storage, device)

    def _check(self, images: Tensor) -> None:
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected [N,3,{size},{size}] in 0..1, got {list(images.shape)}")

    def score_clip(self, frames: Tensor, chunk: int = 16, scene: int = 0) -> dict[str, np.ndarray]:
        """Components of frames ``in_frames..T-1`` of one clip ``[T,3,H,W]`` (0..1), each ``[T-in_frames]`` (see
        :func:`pipeline.detectors.dmad.video_model.frame_components`), and ``maps`` ``[T-in_frames,H,W]`` (per-pixel
        error). ``scene``: the background to use (see :func:`scene_of`). Combine them with
        :func:`video_frame_scores`."""
        if self.settings.variant != "video":
            raise ValueError("score_clip is for variant=video")
        self._check(frames)
        if not 0 <= scene < self.settings.scenes:
            raise ValueError(f"scene {scene} is not one of this model's {self.settings.scenes} backgrounds")
        size = self.image_size
        parts: dict[str, list[Tensor]] = {name: [torch.zeros(0)] for name in OFFICIAL_ALPHA[self.settings.layout]}
        parts["maps"] = [torch.zeros(0, size, size)]
        windows = clip_windows(frames, self.settings.in_frames)
        with torch.inference_mode():
            for start in range(0, windows.shape[0], chunk):
                past, target = split_windows(windows[start:start + chunk].to(self.device), self.settings)
                scenes = torch.full((past.shape[0],), scene, dtype=torch.long, device=self.device)
                for name, value in pdm.frame_components(self.model, past, target, scenes).items():
                    parts[name].append(value.float().cpu())
        return {name: torch.cat(values).numpy() for name, values in parts.items()}

    @property
    def context_frames(self) -> int:
        """The video variant predicts each frame from the ``in_frames`` before it; the image variant needs none."""
        return self.settings.in_frames if self.settings.variant == "video" else 0

    def score_sequence(self, frames: Tensor, video: str) -> ScoreBatch:
        """Scores and maps of frames ``context_frames..T-1`` of one clip of ``video``, normalised over the clip.
        A video name that names no background of this model is a ``ValueError``."""
        parts = self.score_clip(frames, scene=self.scene_of(video))
        return ScoreBatch(video_frame_scores(parts, self.settings), parts["maps"])

    def scene_of(self, name: str) -> int:
        """The background index for a video called ``name`` (0 unless the model has one per scene)."""
        return pdm.scene_of(name, self.settings.scenes)

    def score(self, images: Tensor) -> ScoreBatch:
        self._check(images)
        if self.settings.variant == "image":
            with torch.inference_mode():
                out = image_scores(self.model, images.to(self.device), self.settings)
            return ScoreBatch(out.scores.float().cpu().numpy(), out.maps.float().cpu().numpy())
        n, b = self.settings.in_frames, images.shape[0]
        scores = np.full(b, np.nan, dtype=np.float32)
        maps = np.zeros((b, self.image_size, self.image_size), dtype=np.float32)
        if b > n:
            parts = self.score_clip(images)
            scores[n:] = video_frame_scores(parts, self.settings)
            maps[n:] = parts["maps"]
        return ScoreBatch(scores, maps)
