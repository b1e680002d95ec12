"""DMAD (Liu et al., CVPR 2023, "Diversity-Measurable Anomaly Detection"), in plain torch.

Both variants squeeze what normal data looks like through a small VQ codebook and let a separate, penalised
deformation field absorb the *diversity* of normal samples (objects moving, parts slightly shifted). An anomaly then
shows as a residual the codebook cannot reproduce or as an unusually large deformation: the deformation magnitude
is the "diversity measure" of the title.

- ``variant="video"`` (PDM): predict frame t from frames ``t-in_frames..t-1``. Encoder -> VQ -> decoder with
  coordinate channels -> a coarse + fine offset field warps the decoded frame -> blended with a learnt background
  template through a predicted foreground mask. Frame score: :func:`video_frame_scores`.
- ``variant="image"`` (PPDM): an offset field warps the input before a frozen CNN (layer1..layer3); the layer3
  branch is quantised, a decoder reconstructs the feature pyramid; the map is the summed ``1 - cosine`` similarity,
  warped back with the negated offsets (an approximate inverse) and Gaussian-smoothed; the image score is the map's
  maximum plus ``deform_weight`` times the mean offset length.

Deliberate simplifications of the official code (github.com/FlappyPeggy/DMAD): the two offset levels are added and
applied in one warp (not two warps in sequence); the video decoder has no unquantised skip connections; the image
variant inverts its warp with the negated offsets instead of a second learnt offset network and quantises a 1x1
projection of layer3; frame components are frame means (not the maximum of local box means); temporal smoothing is
a plain moving average; the background template starts at mid-grey, not at a precomputed median image.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator
from torch import Tensor, nn

from pipeline.config import Interpolation, StorageSettings
from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.checkpoints import checkpoint_version, pack
from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig

IMAGE_LAYERS = ["layer1", "layer2", "layer3"]
BACKGROUND_LR_SCALE = 50.0  # as the official PDM: the background template learns 50x faster than the networks
CHECKPOINT_FORMAT = "dmad/1"

Component = Literal["deformation", "reconstruction", "gradient"]


class DMADSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: Literal["video", "image"] = "video"
    image_size: int = Field(256, ge=32, le=1024, description="square input size: a multiple of 8 (video), 32 (image)")
    interpolation: Interpolation = Field("bilinear", description="resize filter (as the official code resizes)")
    in_frames: int = Field(4, ge=1, le=16, description="video: past frames the next frame is predicted from")
    channels: int = Field(32, ge=4, le=512, description="base width of the trainable networks")
    codebook_size: int = Field(200, ge=2, le=65536)
    code_dim: int = Field(256, ge=2, le=4096)
    beta: float = Field(0.25, ge=0, description="VQ commitment weight")
    max_offset_coarse: float = Field(2.0, gt=0, description="largest coarse offset, in input pixels")
    max_offset_fine: float = Field(3.0, gt=0, description="largest fine offset, in input pixels")
    reconstruction_weight: float = Field(1.0, ge=0, description="loss: frame L2 (video), feature cosine (image)")
    gradient_weight: float = Field(1.0, ge=0, description="loss: gradient difference (video)")
    vq_weight: float = Field(1.0, ge=0, description="loss: codebook + commitment")
    smoothness_weight: float = Field(0.01, ge=0, description="loss: total variation of the offsets, in pixels")
    magnitude_weight: float = Field(0.005, ge=0, description="loss: mean offset length, in pixels")
    alpha: dict[Component, NonNegativeFloat] = Field(
        default_factory=lambda: {"deformation": 0.2, "reconstruction": 0.4, "gradient": 0.6},
        description="video: weights of the per-video normalised frame score components (official values)")
    window: int = Field(11, ge=1, description="video: frames in the centred moving average of frame scores (odd)")
    deform_weight: float = Field(0.05, ge=0, description="image: score = max(map) + deform_weight * mean offset")
    sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the maps, in pixels")
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
    def _some_weight(cls, alpha: dict[str, float]) -> dict[str, float]:
        if sum(alpha.values()) <= 0:
            raise ValueError("give at least one positive component weight")
        return alpha

    @model_validator(mode="after")
    def _size_fits_the_network(self) -> DMADSettings:
        stride = 8 if self.variant == "video" else 32
        if self.image_size % stride:
            raise ValueError(f"image_size must be a multiple of {stride} for variant={self.variant}")
        return self


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


def gradient_difference(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean ``|d pred - d target|`` over x and y: the gradient difference loss (power 1) ``[B]``."""
    def dx(t: Tensor) -> Tensor:
        return t[..., :, 1:] - t[..., :, :-1]

    def dy(t: Tensor) -> Tensor:
        return t[..., 1:, :] - t[..., :-1, :]

    return (dx(pred) - dx(target)).abs().mean((1, 2, 3)) + (dy(pred) - dy(target)).abs().mean((1, 2, 3))


def total_variation(field: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring offsets: the offset smoothness penalty."""
    return (field[..., :, 1:] - field[..., :, :-1]).abs().mean() + (field[..., 1:, :] - field[..., :-1, :]).abs().mean()


def offset_length(field: Tensor) -> Tensor:
    """Per-sample mean length of the offset vectors ``[B]``, in pixels."""
    return field.pow(2).sum(1).add(1e-12).sqrt().mean((1, 2))


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` between feature vectors at each position: ``[B,C,h,w]`` x2 -> ``[B,h,w]``."""
    return 1 - F.cosine_similarity(a, b, dim=1)


# ---------------------------------------------------------------- video variant (PDM)


@dataclass
class VideoOutput:
    prediction: Tensor  # [B,3,H,W] the predicted next frame, 0..1
    coarse: Tensor  # [B,2,H/4,W/4] pixels
    fine: Tensor  # [B,2,H,W] pixels
    offset: Tensor  # [B,2,H,W] coarse (upsampled) + fine
    vq_loss: Tensor


class VideoDMAD(nn.Module):
    """PDM: predicts the next frame from ``in_frames`` past frames stacked on channels (all 0..1)."""

    backbone_fingerprint = None

    def __init__(self, s: DMADSettings):
        super().__init__()
        c, cin = s.channels, 3 * s.in_frames
        self.in_frames = s.in_frames
        self.enc1 = nn.Sequential(conv_bn_relu(cin, c), conv_bn_relu(c, c))
        self.enc2 = nn.Sequential(conv_bn_relu(c, 2 * c), conv_bn_relu(2 * c, 2 * c))
        self.enc3 = nn.Sequential(conv_bn_relu(2 * c, 4 * c), conv_bn_relu(4 * c, 4 * c))
        self.to_code = nn.Conv2d(4 * c, s.code_dim, 3, padding=1)
        self.vq = VectorQuantizer(s.codebook_size, s.code_dim, s.beta)
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.decoder = nn.Sequential(CoordBlock(s.code_dim, 4 * c), up, CoordBlock(4 * c, 2 * c), up,
                                     CoordBlock(2 * c, c), up, nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid())
        self.mask_head = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, 1, 3, padding=1), nn.Sigmoid())
        self.offset_net = OffsetNet(cin, c, s.max_offset_coarse, s.max_offset_fine)
        self.background = nn.Parameter(torch.full((3, s.image_size, s.image_size), 0.5))

    def forward(self, past: Tensor) -> VideoOutput:
        f1 = self.enc1(past)
        f3 = self.enc3(F.max_pool2d(self.enc2(F.max_pool2d(f1, 2)), 2))
        q, vq_loss, _ = self.vq(self.to_code(F.max_pool2d(f3, 2)))
        coarse, fine = self.offset_net(past)
        offset = compose(coarse, fine)
        foreground = warp(torch.cat([self.decoder(q), self.mask_head(f1)], dim=1), offset)
        frame, mask = foreground[:, :3], foreground[:, 3:]
        # the template learns from its own loss only (as the official code), so it stays a background
        prediction = mask * frame + (1 - mask) * self.background.detach()
        return VideoOutput(prediction, coarse, fine, offset, vq_loss)


def clip_windows(frames: Tensor, in_frames: int) -> Tensor:
    """Training/scoring windows of one clip: ``[T,3,H,W]`` -> ``[max(T-in_frames, 0), in_frames+1, 3, H, W]``."""
    if frames.shape[0] <= in_frames:
        return frames.new_zeros((0, in_frames + 1, *frames.shape[1:]))
    return frames.unfold(0, in_frames + 1, 1).permute(0, 4, 1, 2, 3)


def _split_windows(windows: Tensor, in_frames: int) -> tuple[Tensor, Tensor]:
    if windows.ndim != 5 or windows.shape[1] != in_frames + 1 or windows.shape[2] != 3:
        raise ValueError(f"video batches are [B, in_frames+1={in_frames + 1}, 3, H, W], got {list(windows.shape)}")
    return windows[:, :in_frames].flatten(1, 2), windows[:, in_frames]


def video_losses(model: VideoDMAD, windows: Tensor, s: DMADSettings) -> dict[str, Tensor]:
    past, target = _split_windows(windows, s.in_frames)
    out = model(past)
    parts = {
        "reconstruction": F.mse_loss(out.prediction, target),
        "gradient": gradient_difference(out.prediction, target).mean(),
        "vq": out.vq_loss,
        "smoothness": total_variation(out.coarse) + total_variation(out.fine),
        "magnitude": (offset_length(out.coarse) + offset_length(out.fine)).mean(),
        "background": F.mse_loss(model.background.expand_as(target), target),  # the template's own loss
    }
    parts["total"] = (s.reconstruction_weight * parts["reconstruction"] + s.gradient_weight * parts["gradient"]
                      + s.vq_weight * parts["vq"] + s.smoothness_weight * parts["smoothness"]
                      + s.magnitude_weight * parts["magnitude"] + parts["background"])
    return parts


def video_components(model: VideoDMAD, windows: Tensor, sigma: float) -> dict[str, Tensor]:
    """Per-frame score components of the predicted frames, and their smoothed squared-error maps."""
    past, target = _split_windows(windows, model.in_frames)
    out = model(past)
    err = (out.prediction - target).pow(2)
    return {"deformation": offset_length(out.offset), "reconstruction": err.mean((1, 2, 3)),
            "gradient": gradient_difference(out.prediction, target), "maps": gaussian_blur(err.mean(1), sigma)}


def video_frame_scores(components: Mapping[str, np.ndarray], alpha: Mapping[str, float], window: int) -> np.ndarray:
    """Frame scores of one video from its per-frame components (as :meth:`DMADDetector.score_clip` returns them).

    Each component named in ``alpha`` is min-max normalised over the video (a constant component contributes 0),
    the normalised components are summed with the ``alpha`` weights, and the sum is smoothed with a centred moving
    average over ``window`` frames whose ends repeat the first/last value. Higher = more anomalous. As in the
    official evaluation, normalising per video takes out the differing scales of the components and of the videos,
    so the scores rank frames within one video, not across videos. Components must be finite.
    """
    total: np.ndarray | None = None
    for name, weight in alpha.items():
        x = np.asarray(components[name], dtype=np.float64)
        span = float(x.max() - x.min()) if x.size else 0.0
        norm = (x - x.min()) / span if span > 0 else np.zeros_like(x)
        total = weight * norm if total is None else total + weight * norm
    if total is None or total.size == 0:
        return np.zeros(0, dtype=np.float32)
    r = window // 2
    smoothed = np.convolve(np.pad(total, r, mode="edge"), np.full(window, 1.0 / window), mode="valid")
    return smoothed.astype(np.float32)


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
    """AdamW over the trainable parameters; the video background template gets ``BACKGROUND_LR_SCALE`` x lr."""
    params = [p for name, p in model.named_parameters() if p.requires_grad and name != "background"]
    groups: list[dict] = [{"params": params}]
    if isinstance(model, VideoDMAD):
        groups.append({"params": [model.background], "lr": settings.lr * BACKGROUND_LR_SCALE})
    return torch.optim.AdamW(groups, lr=settings.lr)


def train_step(model: nn.Module, batch: Tensor, optimizer: torch.optim.Optimizer, settings: DMADSettings
               ) -> dict[str, float]:
    """One optimiser step. ``batch``: windows ``[B, in_frames+1, 3, H, W]`` (video, see :func:`clip_windows`) or
    images ``[B,3,H,W]`` (image), 0..1, B >= 2 (batch norm). Returns the loss parts and their weighted ``total``."""
    model.train()
    batch = batch.to(next(model.parameters()).device)
    losses = video_losses if settings.variant == "video" else image_losses
    parts = losses(model, batch, settings)
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in parts.items()}


def train_dmad(settings: DMADSettings, batches: Iterable[Tensor], steps: int, seed: int,
               storage: Storage | None = None, device: str = "cpu") -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model (initialised from ``seed``) for ``steps`` steps, cycling over ``batches``; an iterable
    that can be read only once ends training when it runs out. Returns the model in eval mode and the loss curve."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(settings, storage).to(device)
        optimizer = make_optimizer(model, settings)
        curve: list[dict[str, float]] = []
        while len(curve) < steps:
            before = len(curve)
            for batch in batches:
                curve.append(train_step(model, batch, optimizer, settings))
                if len(curve) == steps:
                    break
            if len(curve) == before:
                if not curve:
                    raise ValueError("batches yielded no batch to train on")
                break
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
    all-zero map, the rest get :func:`video_frame_scores` of the batch (so scores rank frames within the batch).
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

    def score_clip(self, frames: Tensor, chunk: int = 16) -> dict[str, np.ndarray]:
        """Components of frames ``in_frames..T-1`` of one clip ``[T,3,H,W]`` (0..1): ``deformation`` (mean offset
        length, pixels), ``reconstruction`` (MSE), ``gradient`` (gradient difference), each ``[T-in_frames]``, and
        ``maps`` ``[T-in_frames,H,W]`` (smoothed squared error). Combine them with :func:`video_frame_scores`."""
        if self.settings.variant != "video":
            raise ValueError("score_clip is for variant=video")
        self._check(frames)
        size = self.image_size
        parts: dict[str, list[Tensor]] = {"deformation": [torch.zeros(0)], "reconstruction": [torch.zeros(0)],
                                          "gradient": [torch.zeros(0)], "maps": [torch.zeros(0, size, size)]}
        windows = clip_windows(frames, self.settings.in_frames)
        with torch.inference_mode():
            for start in range(0, windows.shape[0], chunk):
                batch = windows[start:start + chunk].to(self.device)
                for name, value in video_components(self.model, batch, self.settings.sigma).items():
                    parts[name].append(value.float().cpu())
        return {name: torch.cat(values).numpy() for name, values in parts.items()}

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
            scores[n:] = video_frame_scores(parts, self.settings.alpha, self.settings.window)
            maps[n:] = parts["maps"]
        return ScoreBatch(scores, maps)
