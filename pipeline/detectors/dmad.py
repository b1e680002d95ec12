"""DMAD (Liu et al., CVPR 2023, "Diversity-Measurable Anomaly Detection"), in plain torch.

Both variants squeeze what normal data looks like through a small VQ codebook and let a separate, penalised
deformation field absorb the *diversity* of normal samples (objects moving, parts slightly shifted). An anomaly then
shows as a residual the codebook cannot reproduce or as an unusually large deformation: the deformation magnitude
is the "diversity measure" of the title.

- ``variant="video"`` (PDM): a port of the official network and frame score, in
  :mod:`pipeline.detectors.dmad_video` (its docstring lists every remaining difference from the official code).
  This module wraps it: settings, 0..1 RGB clips to training windows, training, checkpoints and the detector.
- ``variant="image"`` (PPDM): an offset field warps the input before a frozen CNN (layer1..layer3); the layer3
  branch is quantised, a decoder reconstructs the feature pyramid; the map is the summed ``1 - cosine`` similarity,
  warped back with the negated offsets (an approximate inverse) and Gaussian-smoothed; the image score is the map's
  maximum plus ``deform_weight`` times the mean offset length.

The image variant is NOT yet the official PPDM: the official one uses a WideResNet50 encoder with RD4AD's bottleneck
and de-ResNet decoder, quantises inside the bottleneck, and inverts its warp with a second learnt offset network;
ours adds the two offset levels and applies them in one warp, quantises a 1x1 projection of layer3, and inverts the
warp with the negated offsets.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator
from torch import Tensor, nn

from pipeline.config import Interpolation, StorageSettings
from pipeline.detectors import dmad_video as pdm
from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.detectors.dmad_video import OFFICIAL_ALPHA, Layout, VideoDMAD, to_model_space
from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig

IMAGE_LAYERS = ["layer1", "layer2", "layer3"]
CHECKPOINT_FORMAT = "dmad/2"  # 2: the ported official video network

Component = Literal["deformation", "reconstruction", "gradient", "foreground"]


class DMADSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: Literal["video", "image"] = "video"
    image_size: int = Field(256, ge=32, le=1024,
                            description="square input size: a multiple of 256 (video, as official), 32 (image)")
    interpolation: Interpolation = Field("bilinear", description="resize filter (as the official code resizes)")
    layout: Layout = Field("ped2", description="video: which official model file the network follows")
    colour: Literal["bgr", "gray"] = Field("bgr", description="video: BGR (official ped2) or grey (avenue, shanghai)")
    in_frames: int = Field(4, ge=1, le=16, description="video: past frames the next frame is predicted from")
    channels: int = Field(32, ge=4, le=512, description="image: base width of the trainable networks")
    skip_channels: int = Field(32, ge=1, le=512, description="video: width of the detached skip connections")
    offset_channels: int = Field(64, ge=1, le=512, description="video: width of the offset network")
    scenes: int = Field(1, ge=1, le=1000, description="video: backgrounds, one per scene (shanghai)")
    codebook_size: int = Field(200, ge=2, le=65536)
    code_dim: int = Field(256, ge=2, le=4096, description="codebook vectors; video: the encoder's last width")
    beta: float = Field(0.25, ge=0, description="VQ commitment weight")
    max_offset_coarse: float = Field(2.0, gt=0, description="largest coarse offset, in input pixels")
    max_offset_fine: float = Field(3.0, gt=0, description="largest fine offset, in input pixels")
    reconstruction_weight: float = Field(1.0, ge=0, description="image loss: feature cosine")
    vq_weight: float = Field(1.0, ge=0, description="image loss: codebook + commitment")
    smoothness_weight: float = Field(0.01, ge=0, description="image loss: total variation of the offsets, in pixels")
    magnitude_weight: float = Field(0.005, ge=0, description="image loss: mean offset length, in pixels")
    alpha: dict[Component, NonNegativeFloat] | None = Field(
        None, description="video: weights of the per-video normalised frame score components (default: official)")
    window: int = Field(11, ge=1, description="video: frames in the trimmed moving average of frame scores (odd)")
    window_keep: int = Field(5, ge=1, description="video: frames of each window, closest to its mean, averaged")
    deform_weight: float = Field(0.05, ge=0, description="image: score = max(map) + deform_weight * mean offset")
    sigma: float = Field(4.0, ge=0, description="image: Gaussian smoothing of the maps, in pixels")
    backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = "resnet18"
    weights: str = Field("none", min_length=1, description="image backbone: path, s3:// URI, 'torchvision', 'none'")
    seed: int = Field(0, description="image backbone initialisation when weights='none'")
    lr: float = Field(2e-4, gt=0)

    @field_validator("window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError("give an odd window, so the average is centred on the frame")
        return window

    @field_validator("alpha")
    @classmethod
    def _some_weight(cls, alpha: dict[str, float] | None) -> dict[str, float] | None:
        if alpha is not None and sum(alpha.values()) <= 0:
            raise ValueError("give at least one positive component weight")
        return alpha

    @model_validator(mode="after")
    def _size_fits_the_network(self) -> DMADSettings:
        stride = 256 if self.variant == "video" else 32
        if self.image_size % stride:
            raise ValueError(f"image_size must be a multiple of {stride} for variant={self.variant}")
        if self.variant == "video":
            if self.code_dim % 8:
                raise ValueError("code_dim must be a multiple of 8 for variant=video (the encoder widths)")
            if self.window_keep > self.window:
                raise ValueError("window_keep must not exceed window")
            if self.scenes > 1 and self.layout != "shanghai":
                raise ValueError("scenes > 1 needs layout=shanghai (one background per scene)")
            unknown = set(self.score_weights) - set(OFFICIAL_ALPHA[self.layout])
            if unknown:
                raise ValueError(f"alpha: layout={self.layout} has no component {sorted(unknown)}; "
                                 f"use {sorted(OFFICIAL_ALPHA[self.layout])}")
        return self

    @property
    def score_weights(self) -> dict[str, float]:
        """The frame score's component weights: ``alpha``, or the official ones for the layout."""
        return dict(self.alpha) if self.alpha is not None else dict(OFFICIAL_ALPHA[self.layout])


# ---------------------------------------------------------------- building blocks


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def add_coords(x: Tensor) -> Tensor:
    """Append x and y coordinate channels in [-1, 1] (CoordConv), so convolutions can place content by position."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


class CoordBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + 2, cout), conv_bn_relu(cout, cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(add_coords(x))


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (VQ-VAE, van den Oord et al., 2017)."""

    def __init__(self, size: int, dim: int, beta: float):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(size, dim).uniform_(-1 / size, 1 / size))
        self.beta = beta

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z [B,D,h,w]`` -> (quantised ``z`` whose gradient passes straight to ``z``, codebook + beta * commitment
        loss, code indices ``[B,h,w]``)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)
        codes = dist.argmin(dim=1)
        q = self.codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss, codes.view(b, h, w)


class OffsetNet(nn.Module):
    """Pyramid deformation: a coarse offset field at 1/4 resolution and a fine full-resolution one, in pixels,
    bounded by tanh. Both heads start at zero, i.e. at the identity warp."""

    def __init__(self, cin: int, width: int, max_coarse: float, max_fine: float):
        super().__init__()
        self.trunk = CoordBlock(cin, width)
        self.coarse = nn.Sequential(conv_bn_relu(width, width, 2), conv_bn_relu(width, width, 2),
                                    nn.Conv2d(width, 2, 3, padding=1))
        self.fine = nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, 2, 3, padding=1))
        for head in (self.coarse[-1], self.fine[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.max_coarse = max_coarse
        self.max_fine = max_fine

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return torch.tanh(self.coarse(h)) * self.max_coarse, torch.tanh(self.fine(h)) * self.max_fine


def compose(coarse: Tensor, fine: Tensor) -> Tensor:
    """The total offset field: the coarse field upsampled to the fine one's size, plus the fine one."""
    return F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True) + fine


def warp(x: Tensor, offset: Tensor) -> Tensor:
    """Sample ``x [B,C,H,W]`` at each pixel's position plus ``offset [B,2,H,W]`` (dx, dy in pixels); the border
    repeats outside the image. Zero offsets give ``x`` back."""
    _, _, h, w = offset.shape
    ys = torch.linspace(-1, 1, h, device=offset.device, dtype=offset.dtype)
    xs = torch.linspace(-1, 1, w, device=offset.device, dtype=offset.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    scale = torch.tensor([2 / (w - 1), 2 / (h - 1)], device=offset.device, dtype=offset.dtype)
    grid = torch.stack([grid_x, grid_y], dim=-1) + offset.permute(0, 2, 3, 1) * scale
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def total_variation(field: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring offsets: the offset smoothness penalty."""
    return (field[..., :, 1:] - field[..., :, :-1]).abs().mean() + (field[..., 1:, :] - field[..., :-1, :]).abs().mean()


def offset_length(field: Tensor) -> Tensor:
    """Per-sample mean length of the offset vectors ``[B]``, in pixels."""
    return field.pow(2).sum(1).add(1e-12).sqrt().mean((1, 2))


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` between feature vectors at each position: ``[B,C,h,w]`` x2 -> ``[B,h,w]``."""
    return 1 - F.cosine_similarity(a, b, dim=1)


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


# ---------------------------------------------------------------- image variant (PPDM)


class FeatureBottleneck(nn.Module):
    """Fuses layer1..layer3 into one embedding at 1/32 of the input (as RD4AD's bottleneck); the layer3 branch goes
    through the codebook, which limits what the decoder can reproduce."""

    def __init__(self, channels: list[int], width: int, code_dim: int, codebook_size: int, beta: float):
        super().__init__()
        c1, c2, c3 = channels
        self.to_code = nn.Conv2d(c3, code_dim, 1)
        self.vq = VectorQuantizer(codebook_size, code_dim, beta)
        self.reduce = nn.ModuleList([nn.Sequential(conv_bn_relu(c1, width, 2), conv_bn_relu(width, width, 2)),
                                     conv_bn_relu(c2, width, 2), conv_bn_relu(c3, width)])
        self.fuse = conv_bn_relu(3 * width + code_dim, 4 * width, 2)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        q, vq_loss, _ = self.vq(self.to_code(feats[-1]))
        reduced = [reduce(f) for reduce, f in zip(self.reduce, feats, strict=True)]
        return self.fuse(torch.cat([*reduced, q], dim=1)), vq_loss


class FeatureDecoder(nn.Module):
    """Reconstructs layer3, then layer2, then layer1 from the bottleneck embedding, each at its own size."""

    def __init__(self, width: int, channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList()
        self.heads = nn.ModuleList()
        cin = width
        for c in reversed(channels):
            self.stages.append(nn.Sequential(nn.ConvTranspose2d(cin, c, 2, 2, bias=False), nn.BatchNorm2d(c),
                                             nn.ReLU(inplace=True), conv_bn_relu(c, c)))
            self.heads.append(nn.Conv2d(c, c, 1))
            cin = c

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            out.append(head(x))
        return out[::-1]


@dataclass
class ImageOutput:
    features: list[Tensor]  # frozen encoder features of the warped image, layer1..layer3
    reconstructions: list[Tensor]  # the decoder's reconstructions of them
    coarse: Tensor
    fine: Tensor
    offset: Tensor  # [B,2,H,W] pixels
    vq_loss: Tensor


class ImageDMAD(nn.Module):
    """PPDM: deform the image, encode with a frozen CNN, quantise, reconstruct the features."""

    def __init__(self, s: DMADSettings, backbone: nn.Module, channels: list[int], fingerprint: str):
        super().__init__()
        self.backbone = backbone
        self.backbone_fingerprint = fingerprint
        self.offset_net = OffsetNet(3, s.channels, s.max_offset_coarse, s.max_offset_fine)
        self.bottleneck = FeatureBottleneck(channels, s.channels, s.code_dim, s.codebook_size, s.beta)
        self.decoder = FeatureDecoder(4 * s.channels, channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ImageDMAD:
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics must not move
        return self

    def forward(self, images: Tensor) -> ImageOutput:
        x = (images - self.mean) / self.std
        coarse, fine = self.offset_net(x)
        offset = compose(coarse, fine)
        taps = self.backbone(warp(x, offset))
        feats = [taps[layer] for layer in IMAGE_LAYERS]
        embedding, vq_loss = self.bottleneck(feats)
        return ImageOutput(feats, self.decoder(embedding), coarse, fine, offset, vq_loss)


def image_losses(model: ImageDMAD, images: Tensor, s: DMADSettings) -> dict[str, Tensor]:
    out = model(images)
    parts = {
        "reconstruction": sum(cosine_distance(f, r).mean()
                              for f, r in zip(out.features, out.reconstructions, strict=True)),
        "vq": out.vq_loss,
        "smoothness": total_variation(out.coarse) + total_variation(out.fine),
        "magnitude": (offset_length(out.coarse) + offset_length(out.fine)).mean(),
    }
    parts["total"] = (s.reconstruction_weight * parts["reconstruction"] + s.vq_weight * parts["vq"]
                      + s.smoothness_weight * parts["smoothness"] + s.magnitude_weight * parts["magnitude"])
    return parts


def image_scores(model: ImageDMAD, images: Tensor, s: DMADSettings) -> tuple[Tensor, Tensor]:
    """Image scores ``[B]`` and anomaly maps ``[B,H,W]`` in the input's (undeformed) frame."""
    out = model(images)
    size = images.shape[-2:]
    amap = sum(F.interpolate(cosine_distance(f, r).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
               for f, r in zip(out.features, out.reconstructions, strict=True))
    amap = gaussian_blur(warp(amap, -out.offset)[:, 0], s.sigma)
    return amap.flatten(1).amax(1) + s.deform_weight * offset_length(out.offset), amap


# ---------------------------------------------------------------- training


def build_model(settings: DMADSettings, storage: Storage | None = None) -> nn.Module:
    """A freshly initialised model (from torch's global RNG; the image backbone from ``settings.seed``)."""
    if settings.variant == "video":
        return VideoDMAD(settings)
    backbone, channels, fingerprint = build_backbone(settings.backbone, IMAGE_LAYERS, settings.weights,
                                                     settings.seed, storage or Storage(StorageSettings()))
    return ImageDMAD(settings, backbone, channels, fingerprint)


def make_optimizer(model: nn.Module, settings: DMADSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; the video background learns faster, as official (50x, shanghai 10x)."""
    params = [p for name, p in model.named_parameters() if p.requires_grad and name != "background"]
    groups: list[dict] = [{"params": params}]
    if isinstance(model, VideoDMAD):
        groups.append({"params": [model.background], "lr": settings.lr * pdm.BACKGROUND_LR_SCALE[settings.layout]})
    return torch.optim.AdamW(groups, lr=settings.lr)


def video_background(windows: Tensor, scenes: Tensor, s: DMADSettings) -> tuple[Tensor, Tensor]:
    """Per scene, the median of the windows' target frames in the official space, and which scenes had frames."""
    return pdm.background_from(to_model_space(windows[:, s.in_frames], s.colour), scenes, s.scenes)


def train_step(model: nn.Module, batch: Tensor, optimizer: torch.optim.Optimizer, settings: DMADSettings,
               scenes: Tensor | None = None) -> dict[str, float]:
    """One optimiser step. ``batch``: windows ``[B, in_frames+1, 3, H, W]`` (video, see :func:`clip_windows`; with
    each window's ``scenes`` for layout=shanghai) or images ``[B,3,H,W]`` (image), 0..1, B >= 2 (batch norm).
    Returns the loss parts and their weighted ``total``."""
    model.train()
    device = next(model.parameters()).device
    batch = batch.to(device)
    if settings.variant == "video":
        parts = video_losses(model, batch, settings, None if scenes is None else scenes.to(device))
    else:
        parts = image_losses(model, batch, settings)
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in parts.items()}


def train_dmad(settings: DMADSettings, batches: Sequence[Tensor], steps: int, seed: int,
               storage: Storage | None = None, device: str = "cpu", scenes: Sequence[Tensor] | None = None
               ) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model (initialised from ``seed``) for ``steps`` steps, cycling over ``batches`` (video: with
    each window's scene in ``scenes``, default all 0; the backgrounds start at the batches' per-scene median).
    Returns the model in eval mode and the loss curve."""
    if not batches:
        raise ValueError("batches yielded no batch to train on")
    scenes = scenes if scenes is not None else [torch.zeros(len(b), dtype=torch.long) for b in batches]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(settings, storage).to(device)
        if settings.variant == "video":
            with torch.no_grad():
                model.background.copy_(video_background(torch.cat(list(batches)), torch.cat(list(scenes)),
                                                        settings)[0])
        optimizer = make_optimizer(model, settings)
        curve = [train_step(model, batches[i % len(batches)], optimizer, settings, scenes[i % len(batches)])
                 for i in range(steps)]
    return model.eval(), curve


# ---------------------------------------------------------------- checkpoints and the detector


def save_checkpoint(model: nn.Module, settings: DMADSettings) -> bytes:
    """Plain tensors and strings only, so :func:`load_checkpoint` can use ``weights_only=True``. The frozen image
    backbone is not stored: it is rebuilt from the settings and checked against its weights' fingerprint."""
    state = {name: t for name, t in model.state_dict().items() if not name.startswith("backbone.")}
    return pack(CHECKPOINT_FORMAT, settings.model_dump_json(), state,
                backbone_fingerprint=model.backbone_fingerprint)


def load_checkpoint(data: bytes, storage: Storage | None = None, device: str = "cpu") -> DMADDetector:
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a DMAD checkpoint (expected format {CHECKPOINT_FORMAT})")
    settings = DMADSettings.model_validate_json(payload["settings"])
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
        :func:`pipeline.detectors.dmad_video.frame_components`), and ``maps`` ``[T-in_frames,H,W]`` (per-pixel
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

    def scene_of(self, name: str) -> int:
        """The background index for a video called ``name`` (0 unless the model has one per scene)."""
        return pdm.scene_of(name, self.settings.scenes)

    def score(self, images: Tensor) -> ScoreBatch:
        self._check(images)
        if self.settings.variant == "image":
            with torch.inference_mode():
                scores, maps = image_scores(self.model, images.to(self.device), self.settings)
            return ScoreBatch(scores.float().cpu().numpy(), maps.float().cpu().numpy())
        n, b = self.settings.in_frames, images.shape[0]
        scores = np.full(b, np.nan, dtype=np.float32)
        maps = np.zeros((b, self.image_size, self.image_size), dtype=np.float32)
        if b > n:
            parts = self.score_clip(images)
            scores[n:] = video_frame_scores(parts, self.settings)
            maps[n:] = parts["maps"]
        return ScoreBatch(scores, maps)
