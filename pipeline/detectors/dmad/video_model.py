"""DMAD's video variant (PDM), ported from the official code (github.com/FlappyPeggy/DMAD, ``DMAD-PDM``).

The official repository has one model file per dataset; ``layout`` names which one a model follows:

- ``ped2`` and ``avenue``: the encoder predicts a 3-channel foreground mask from its first two stages; the decoded
  frame and the mask are warped twice in sequence (coarse grid, then fine grid) and blended over one learnt
  background image. ``avenue`` differs in where its coarse offset head downsamples, its largest coarse offset (3
  pixels, not 2), its 2-D offset smoothness kernel and its loss weights.
- ``shanghai``: one background per scene, concatenated to the input frames; the decoder predicts a 1-channel mask;
  the warped masked frame is added to the background where the mask is off.

Widths follow the official ``memory_dim`` (``code_dim`` here): the encoder stages are ``code_dim/8 .. code_dim``,
the detached skip connections ``skip_channels`` wide (ped2 32, avenue 64, shanghai ``code_dim/32``), the offset
network ``offset_channels`` wide (64 in every official model). The networks work in the official colour space
(BGR for ped2, grey repeated to 3 channels for avenue and shanghai, scaled to -1..1); :func:`to_model_space` maps
this product's 0..1 RGB frames there. Every CoordConv needs its input side to be a multiple of 32, so frames are
a multiple of 256 pixels (the official size is 256).

Per-frame components (:func:`frame_components`), as the official ``loss_function(..., compute_err=True)``:

- ``deformation``: the maximum over the frame of local box means of the coarse offset (its vertical component for
  ped2/avenue, its length for shanghai), in the official grid units;
- ``reconstruction``: the L1 (ped2) / squared (avenue) error of the prediction, or for shanghai the maximum of local
  box means of the squared error summed over channels;
- ``gradient`` (ped2/avenue): the maximum of local box means of the gradient difference;
- ``foreground`` (shanghai): the largest mean squared error inside a connected region of the predicted mask.

Frame scores (:func:`frame_scores`): each component is min-max normalised per video (the official ``1e-8`` in the
denominator), smoothed by the official trimmed moving average (per window, keep the frames closest to the window
mean, weighted), and the components are summed with the ``alpha`` weights.

Differences from the official code, and why:

- Kept fixes: the official training scripts evaluate on the test set after every epoch and keep the epoch with the
  best test AUROC; we train for the steps asked and keep the last model. Official ShanghaiTech backgrounds are
  per *video* and the test videos' backgrounds are computed from the test frames themselves; here there is one
  background per *scene* (from the file name's leading scene number), learnt from training frames only, and a
  scored video uses its scene's. The avenue post-processing script (``process_avenue.py``) reads test-set files and
  searches weights against test labels; it is not ported: avenue scores use the in-model components like ped2.
- Smoothing runs per video, with the series' end values repeated over the half-window at each end; the official
  script smooths the concatenation of all test videos, so windows straddle videos, and sets the first frames of the
  whole test set to the most normal value.
- ShanghaiTech's score chain after the per-video trimmed average (two more trimmed averages over the concatenated
  test set and a Kalman filter) is not ported; its mask regions are 8-connected pixel groups with holes filled and
  at least 14 pixels (the official ``cv2.contourArea`` measures the outline polygon, slightly smaller).
- Training: the background starts at the per-pixel median of the training frames (the official ped2/avenue load
  a precomputed image from the repository, shanghai the per-pixel mode of each video); one learning rate for the
  steps asked (the official anneals it over epochs and changes the background's rate after epoch 5).
- Inputs: this product decodes RGB and resizes with its own preprocessing (bilinear by default, as OpenCV); the
  grey conversion is computed in floating point, OpenCV's rounds to 8 bits (at most 1/255 apart).
- The official VQ picks the nearest code with ``topk``; ``argmin`` gives the same code except on exact ties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from pipeline.detectors.dmad.blocks import CoordConv, ResidualBlock, sample

if TYPE_CHECKING:
    from pipeline.detectors.dmad.settings import DMADSettings

COORD_CELLS = 32  # the official CoordConv adds a coarse 32-cell position and the offset inside the cell
BACKGROUND_LR_SCALE = {"ped2": 50.0, "avenue": 50.0, "shanghai": 10.0}  # official background learning rates
CENTRE_WEIGHTS_11 = np.array([1, 1, 1, 1, 1.2, 1.6, 1.2, 1, 1, 1, 1])  # official ped2 weights for an 11-frame window
FOREGROUND_THRESHOLD = 0.7  # shanghai: mask value above which a pixel is foreground
FOREGROUND_MIN_AREA = 14  # shanghai: smallest region (pixels) whose error counts


@dataclass(frozen=True)
class LayoutSpec:
    """What differs between the official per-dataset model files."""

    fine_strides: tuple[int, int]  # the fine offset head's two convolutions
    coarse_strides: tuple[int, int, int]  # the coarse offset head's three convolutions
    box_deformation: tuple[int, int]  # (height, width) of the box means of the offset score
    box_reconstruction: tuple[int, int] | None  # shanghai: box of the squared-error score; None: a frame mean
    box_gradient: tuple[int, int] | None
    separable_smoothness: bool  # ped2's 1-D offset smoothness kernels; the others use a 2-D kernel
    image_gradient_weight: float  # loss weight of the once-warped prediction's gradient term
    offset_length_weight: float


LAYOUTS: dict[str, LayoutSpec] = {
    "ped2": LayoutSpec((1, 1), (1, 2, 2), (7, 18), None, (16, 14), True, 0.25, 0.4),
    "avenue": LayoutSpec((1, 1), (2, 2, 1), (6, 18), None, (16, 14), False, 1.0, 1.0),
    "shanghai": LayoutSpec((1, 1), (2, 2, 1), (6, 18), (42, 31), None, False, 1.0, 1.0),
}


# ---------------------------------------------------------------- building blocks


def coord_channels(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The official CoordConv's 4 extra channels ``[1,4,h,w]``: per axis, the 32-cell coarse position and the
    position inside the cell (both as ``2v - 1``), ordered vertical-fine, vertical-cell, horizontal-fine,
    horizontal-cell. ``h`` and ``w`` must be multiples of 32."""
    def axis(n: int) -> tuple[Tensor, Tensor]:
        cell = (torch.arange(COORD_CELLS, dtype=torch.float32) / (COORD_CELLS - 1)).repeat_interleave(n // COORD_CELLS)
        fine = torch.arange(n, dtype=torch.float32) / (n - 1) - cell
        return fine * 2 - 1, cell * 2 - 1
    vf, vc = axis(h)
    hf, hc = axis(w)
    rows = [t.view(h, 1).expand(h, w) for t in (vf, vc)]
    cols = [t.view(1, w).expand(h, w) for t in (hf, hc)]
    return torch.stack([rows[0], rows[1], cols[0], cols[1]]).unsqueeze(0).to(device, dtype)


def video_coordinates(x: Tensor) -> Tensor:
    """The video variant's coordinate channels (:func:`coord_channels`) for ``x``."""
    return coord_channels(x.shape[-2], x.shape[-1], x.device, x.dtype)


def double_conv(cin: int, cout: int, coords: bool = False) -> nn.Sequential:
    """(conv 3x3 -> BN -> ReLU) twice."""
    def conv(i: int, o: int) -> nn.Module:
        return CoordConv(i, o, video_coordinates) if coords else nn.Conv2d(i, o, 3, padding=1, bias=False)
    return nn.Sequential(conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         conv(cout, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up_block(cin: int, cout: int) -> nn.Sequential:
    """x2 transposed convolution -> BN -> ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def head(cin: int, cout: int, width: int, activation: nn.Module) -> nn.Sequential:
    """Two conv -> BN -> ReLU, then a biased conv and ``activation``: the mask and frame generators."""
    return nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.Conv2d(width, cout, 3, padding=1), activation)


class Codebook(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (VQ-VAE)."""

    def __init__(self, size: int, dim: int, beta: float):
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(size, dim).uniform_(-1 / size, 1 / size))
        self.beta = beta

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B,D,h,w]`` -> (quantised ``z``, codebook loss + ``beta`` x commitment loss)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        dist = flat.pow(2).sum(1, keepdim=True) + self.codebook.pow(2).sum(1) - 2 * flat @ self.codebook.t()
        q = self.codebook[dist.argmin(dim=1)].view(b, h, w, d).permute(0, 3, 1, 2)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss


# ---------------------------------------------------------------- the network


class Encoder(nn.Module):
    def __init__(self, cin: int, dim: int, skip: int, frame_mask: bool):
        super().__init__()
        c = dim // 8
        self.stage1 = double_conv(cin, c)
        self.stage2 = double_conv(c, 2 * c)
        self.stage3 = double_conv(2 * c, 4 * c)
        self.stage4 = nn.Sequential(nn.Conv2d(4 * c, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                                    nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 3, padding=1))
        if frame_mask:  # ped2/avenue: the foreground mask comes from the first two stages
            self.mask_up = up_block(2 * c, c)
            self.mask_head = head(2 * c, 3, c, nn.Sigmoid())
        self.skip3 = double_conv(4 * c, skip)
        self.skip4 = double_conv(dim, skip)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        f1 = self.stage1(x)
        f2 = self.stage2(F.max_pool2d(f1, 2))
        f3 = self.stage3(F.max_pool2d(f2, 2))
        f4 = self.stage4(F.max_pool2d(f3, 2))
        mask = self.mask_head(torch.cat([self.mask_up(f2), f1], 1)) if hasattr(self, "mask_head") else None
        # the skip connections learn from the decoder's loss without changing the encoder
        return f4, self.skip3(f3.detach()), self.skip4(f4.detach()), mask


class VideoDecoder(nn.Module):
    def __init__(self, dim: int, skip: int, frame_mask: bool):
        super().__init__()
        c = dim // 8
        self.stage4 = double_conv(dim + skip, dim, coords=True)
        self.up4 = up_block(dim, 4 * c)
        self.stage3 = double_conv(4 * c + skip, 4 * c, coords=True)
        self.up3 = up_block(4 * c, 2 * c)
        self.stage2 = double_conv(2 * c, 2 * c, coords=True)
        self.up2 = up_block(2 * c, c)
        self.head = head(c, 3, c, nn.Tanh())
        if not frame_mask:  # shanghai: a 1-channel mask from the last decoder stage
            self.mask_head = head(c, 1, c, nn.Sigmoid())

    def forward(self, q: Tensor, skip3: Tensor, skip4: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.up4(self.stage4(torch.cat([q, skip4], 1)))
        x = self.up2(self.stage2(self.up3(self.stage3(torch.cat([x, skip3], 1)))))
        return self.head(x), (self.mask_head(x) if hasattr(self, "mask_head") else None)


class VideoOffsetNet(nn.Module):
    """Two offset fields in the official grid units (``2 * pixels / width``), bounded by tanh: ``coarse`` (first
    warp) and ``fine`` (second warp), both upsampled to the frame; and the sampling grids they give."""

    def __init__(self, cin: int, width: int, spec: LayoutSpec, max_coarse: float, max_fine: float):
        super().__init__()
        self.trunk = nn.Sequential(
            CoordConv(cin, width, video_coordinates), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            CoordConv(width, width, video_coordinates), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(ResidualBlock(width), nn.BatchNorm2d(width))
        s = spec.fine_strides
        self.fine = nn.Sequential(nn.Conv2d(2 * width, width, 3, s[0], 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, 2, 3, s[1], 1), nn.Tanh())
        s2 = spec.coarse_strides
        self.coarse = nn.Sequential(nn.Conv2d(2 * width, width, 3, s2[0], 1), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, s2[1], 1), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), nn.Conv2d(width, 2, 3, s2[2], 1), nn.Tanh())
        self.max_coarse, self.max_fine = max_coarse, max_fine

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (coarse grid, fine grid, coarse offset, fine offset), all ``[B,H,W,2]`` (x, y)."""
        b, _, h, w = x.shape
        t = self.trunk(x)
        t = torch.cat([self.residual(t), t], 1)
        offsets = []
        for net, limit in ((self.coarse, self.max_coarse), (self.fine, self.max_fine)):
            o = net(t) * 2 * limit / h  # the official code scales by the first spatial side
            offsets.append(F.interpolate(o, (h, w), mode="bilinear", align_corners=True).permute(0, 2, 3, 1))
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, h, 1).expand(b, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, w).expand(b, h, w)
        grid = torch.stack([xs, ys], dim=-1)
        coarse, fine = offsets
        return (grid + coarse).clamp(-1, 1), (grid + fine).clamp(-1, 1), coarse, fine


@dataclass
class VideoOutput:
    prediction: Tensor  # [B,3,H,W] the predicted frame after both warps, -1..1 (official space)
    once_warped: Tensor  # [B,3,H,W] after the coarse warp only
    mask: Tensor  # the foreground mask before warping
    mask_final: Tensor  # the mask after both warps
    coarse: Tensor  # [B,H,W,2] official grid units
    fine: Tensor  # [B,H,W,2]
    vq_loss: Tensor  # codebook + beta * commitment


class VideoDMAD(nn.Module):
    """PDM: predicts frame t from ``in_frames`` past frames stacked on channels, all in the official space."""

    backbone_fingerprint = None

    def __init__(self, s: DMADSettings):
        super().__init__()
        self.layout = s.layout
        self.spec = LAYOUTS[s.layout]
        self.in_frames = s.in_frames
        frame_mask = s.layout != "shanghai"
        cin = 3 * s.in_frames + (0 if frame_mask else 3)  # shanghai also sees its scene's background
        self.encoder = Encoder(cin, s.code_dim, s.skip_channels, frame_mask)
        self.vq = Codebook(s.codebook_size, s.code_dim, s.beta)
        self.decoder = VideoDecoder(s.code_dim, s.skip_channels, frame_mask)
        self.offset_net = VideoOffsetNet(cin, s.offset_channels, self.spec, s.max_offset_coarse, s.max_offset_fine)
        self.background = nn.Parameter(torch.zeros(s.scenes, 3, s.image_size, s.image_size))

    def forward(self, past: Tensor, scene: Tensor | None = None) -> VideoOutput:
        """``past [B, 3*in_frames, H, W]``; ``scene [B]`` indexes the backgrounds (default: the first)."""
        scene = scene if scene is not None else torch.zeros(past.shape[0], dtype=torch.long, device=past.device)
        background = self.background[scene].detach()  # the background learns from its own loss only
        x = past if self.layout != "shanghai" else torch.cat([past, background], 1)
        grid1, grid2, coarse, fine = self.offset_net(x)
        z, skip3, skip4, mask = self.encoder(x)
        q, vq_loss = self.vq(z)
        frame, decoder_mask = self.decoder(q, skip3, skip4)
        if mask is None:
            mask = decoder_mask
            frame = frame * mask
        once = sample(frame, grid1)
        twice = sample(once, grid2)
        mask1 = sample(mask, grid1)
        mask2 = sample(mask1, grid2)
        if self.layout == "shanghai":  # the masked frame already holds the foreground
            once, twice = once + (1 - mask1) * background, twice + (1 - mask2) * background
        else:
            once, twice = once * mask1 + (1 - mask1) * background, twice * mask2 + (1 - mask2) * background
        return VideoOutput(twice, once, mask, mask2, coarse, fine, vq_loss)


# ---------------------------------------------------------------- colour space, losses, scores


def to_model_space(frames: Tensor, colour: Literal["bgr", "gray"]) -> Tensor:
    """0..1 RGB ``[..., 3, H, W]`` -> the official input: BGR (ped2) or grey repeated on 3 channels (avenue,
    shanghai; ITU-R BT.601 luma, as OpenCV), scaled to -1..1."""
    if colour == "bgr":
        x = frames.flip(-3)
    else:
        weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=frames.dtype).view(3, 1, 1)
        x = (frames * weights).sum(-3, keepdim=True).expand_as(frames)
    return x * 2 - 1


def gradient_difference(pred: Tensor, target: Tensor) -> Tensor:
    """``[B,1,H,W]``: ``|dx target - dx pred| + |dy target - dy pred|`` of the channel sums, each difference taken
    with the pixel before it (zero before the first row/column), as the official ``Gradient_Loss``."""
    def d(t: Tensor, dim: int) -> Tensor:
        t = t.sum(1, keepdim=True)
        return t - F.pad(t, (1, 0, 0, 0) if dim == 3 else (0, 0, 1, 0)).narrow(dim, 0, t.shape[dim])
    return (d(target, 3) - d(pred, 3)).abs() + (d(target, 2) - d(pred, 2)).abs()


def box_max(x: Tensor, box: tuple[int, int]) -> Tensor:
    """Per sample, the largest mean of ``|x|`` (summed over channels) over ``box`` (height, width) windows, the
    frame zero-padded by a whole box on each side: ``[B,C,H,W]`` -> ``[B]``."""
    bh, bw = box
    padded = F.pad(x.abs().sum(1, keepdim=True), (bw, bw, bh, bh))
    return F.avg_pool2d(padded, (bh, bw), stride=1).flatten(1).amax(1)


def smoothness(offset: Tensor, size: int, separable: bool) -> Tensor:
    """Offset field ``[B,H,W,2]`` -> per-pixel ``[B,1,H,W]`` distance of each offset from its neighbours' mean over
    ``size`` pixels (both components summed): separate rows/columns (ped2) or a square (the others)."""
    o = offset.permute(0, 3, 1, 2).sum(1, keepdim=True)
    r = size // 2
    if separable:
        def along(kernel_shape: tuple[int, int], pad: tuple[int, int, int, int]) -> Tensor:
            k = torch.full(kernel_shape, -1 / (size - 1), device=o.device, dtype=o.dtype)
            k.view(-1)[size // 2] = 1
            return F.conv2d(F.pad(o, pad), k.view(1, 1, *kernel_shape))
        return along((1, size), (r, r, 0, 0)).abs() + along((size, 1), (0, 0, r, r)).abs()
    k = torch.full((size, size), -1 / (size * size - 1), device=o.device, dtype=o.dtype)
    k[r, r] = 1
    return F.conv2d(F.pad(o, (r, r, r, r)), k.view(1, 1, size, size)).abs()


def offset_length(offset: Tensor) -> Tensor:
    return offset.pow(2).sum(-1).sqrt()


def losses(model: VideoDMAD, past: Tensor, target: Tensor, scene: Tensor | None = None) -> dict[str, Tensor]:
    """The official training loss and its parts; ``past``/``target`` in the official space."""
    out = model(past, scene)
    spec = model.spec
    if model.layout == "shanghai":
        if scene is None:
            raise ValueError("layout=shanghai needs each sample's scene")
        background = model.background[scene]
        weight = 1 + 100 * F.avg_pool2d((target - background.detach()).abs().sqrt(), 15, 1, 7).abs()
        pixel_weight = weight[:, 0]

        def weighted(x: Tensor) -> Tensor:
            return (x * weight).sum() / weight.sum()
        mask_entropy = -(out.mask * torch.log(out.mask + 1e-8)).mean() + F.relu(out.mask.mean() - 0.01) * 0.1
        uncovered = 1 - out.mask_final.detach()
        parts = {
            "prediction": weighted(F.mse_loss(out.prediction, target, reduction="none")),
            "once_warped": weighted(F.mse_loss(out.once_warped, target, reduction="none")),
            "gradient": weighted(gradient_difference(out.prediction, target))
                        + weighted(gradient_difference(out.once_warped, target)),
            "offset": ((offset_length(out.coarse) * pixel_weight).sum()
                       + (offset_length(out.fine) * pixel_weight).sum()) / pixel_weight.sum(),
            "smoothness": weighted(smoothness(out.coarse, 7, False)) + weighted(smoothness(out.fine, 3, False)),
            # the background learns where the predicted mask leaves it uncovered
            "background": mask_entropy * 0.1
                          + (uncovered * F.mse_loss(background, target, reduction="none")).sum() / uncovered.sum(),
        }
    else:
        parts = {
            "prediction": F.mse_loss(out.prediction, target),
            "once_warped": F.mse_loss(out.once_warped, target),
            "gradient": gradient_difference(out.prediction, target).mean()
                        + gradient_difference(out.once_warped, target).mean() * spec.image_gradient_weight,
            "offset": (offset_length(out.coarse).mean() + offset_length(out.fine).mean()) * spec.offset_length_weight,
            "smoothness": smoothness(out.coarse, 7, spec.separable_smoothness).mean()
                          + smoothness(out.fine, 3, spec.separable_smoothness).mean(),
            "background": F.mse_loss(model.background[0].expand_as(target), target),
        }
    parts["vq"] = out.vq_loss
    parts["total"] = (parts["prediction"] + parts["once_warped"] + parts["gradient"] + parts["vq"]
                      + 0.25 * (parts["offset"] + parts["smoothness"]) + parts["background"])
    return parts


def foreground_error(mask: Tensor, error: Tensor) -> Tensor:
    """shanghai: per sample, the largest mean of ``error [B,H,W]`` over a region of ``mask [B,1,H,W]`` above
    :data:`FOREGROUND_THRESHOLD` (8-connected, holes filled, at least :data:`FOREGROUND_MIN_AREA` pixels); 0 when
    there is none."""
    masks = (mask[:, 0] > FOREGROUND_THRESHOLD).cpu().numpy()
    errors = error.float().cpu().numpy()
    out = []
    for m, e in zip(masks, errors, strict=True):
        labels, n = ndimage.label(ndimage.binary_fill_holes(m), structure=np.ones((3, 3)))
        best = 0.0
        for k in range(1, n + 1):
            region = labels == k
            if region.sum() >= FOREGROUND_MIN_AREA:
                best = max(best, float(e[region].mean()))
        out.append(best)
    return torch.tensor(out)


def frame_components(model: VideoDMAD, past: Tensor, target: Tensor, scene: Tensor | None = None
                     ) -> dict[str, Tensor]:
    """Per predicted frame, the official score components (see the module docstring) ``[B]`` each, and ``maps``
    ``[B,H,W]``: the per-pixel error the reconstruction component is built on (L1 for ped2, squared otherwise,
    averaged over channels). Inputs in the official space."""
    out = model(past, scene)
    spec = model.spec
    diff = out.prediction - target
    if model.layout == "ped2":
        error = diff.abs()
        reconstruction = error.mean((1, 2, 3))
    else:
        error = diff.pow(2)
        reconstruction = (box_max(error, spec.box_reconstruction) if spec.box_reconstruction
                          else error.mean((1, 2, 3)))
    parts = {"reconstruction": reconstruction, "maps": error.mean(1)}
    if model.layout == "shanghai":
        parts["deformation"] = box_max(offset_length(out.coarse).unsqueeze(1), spec.box_deformation)
        parts["foreground"] = foreground_error(out.mask_final, error.mean(1)).to(past.device)
    else:
        parts["deformation"] = box_max(out.coarse[..., 1].unsqueeze(1), spec.box_deformation)
        parts["gradient"] = box_max(gradient_difference(out.prediction, target), spec.box_gradient)
    return parts


def trimmed_average(x: np.ndarray, window: int, keep: int) -> np.ndarray:
    """The official temporal smoothing: each frame becomes the weighted mean of the ``keep`` frames of its centred
    ``window`` closest to that window's mean (centre-weighted for an 11-frame window, as the official ped2; equal
    weights otherwise). The series' end values repeat over the half-window beyond each end."""
    weights = CENTRE_WEIGHTS_11 if window == len(CENTRE_WEIGHTS_11) else np.ones(window)
    padded = np.pad(np.asarray(x, dtype=np.float64), window // 2, mode="edge")
    out = np.empty(len(x))
    for i in range(len(x)):
        a = padded[i:i + window]
        chosen = np.zeros(window)
        chosen[np.argsort(np.abs(a - a.mean()))[:keep]] = 1
        w = weights * chosen
        out[i] = np.sum(a * w) / w.sum()
    return out


def frame_scores(components: Mapping[str, np.ndarray], alpha: Mapping[str, float], window: int, keep: int
                 ) -> np.ndarray:
    """Frame scores of one video (higher = more anomalous): each component in ``alpha`` min-max normalised over
    the video, smoothed with :func:`trimmed_average`, weighted by ``alpha`` and summed. Normalising per video takes
    out the differing scales of the components and the videos: the scores rank frames within one video."""
    total = None
    for name, weight in alpha.items():
        x = np.asarray(components[name], dtype=np.float64)
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        norm = (x - x.min()) / (x.max() - x.min() + 1e-8)
        part = weight * trimmed_average(norm, window, keep)
        total = part if total is None else total + part
    return np.zeros(0, dtype=np.float32) if total is None else total.astype(np.float32)


def scene_of(name: str, scenes: int) -> int:
    """The background index of a video: 0 with one background; with several (ShanghaiTech) the file name's leading
    scene number minus one (``01_0014.avi`` -> 0)."""
    if scenes == 1:
        return 0
    match = re.match(r"(\d+)_", name.rsplit("/", 1)[-1])
    if not match or not 1 <= int(match.group(1)) <= scenes:
        raise ValueError(f"{name}: cannot tell the scene (expected a name like 01_0014.avi, scenes 1..{scenes})")
    return int(match.group(1)) - 1


def background_from(targets: Tensor, scenes: Tensor, n_scenes: int) -> tuple[Tensor, Tensor]:
    """Per scene, the per-pixel median of ``targets [N,3,H,W]`` (official space) and whether it had any frame:
    ``([S,3,H,W], [S])``; a scene without frames stays 0 (mid-grey)."""
    background = targets.new_zeros((n_scenes, *targets.shape[1:]))
    seen = torch.zeros(n_scenes, dtype=torch.bool)
    for k in range(n_scenes):
        mine = targets[scenes == k]
        if len(mine):
            background[k] = mine.median(dim=0).values
            seen[k] = True
    return background, seen
