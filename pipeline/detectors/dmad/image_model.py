"""DMAD image variant (PPDM), ported from the official code (github.com/FlappyPeggy/DMAD, ``DMAD-PPDM``).

The network, as the official ``resnet.py`` / ``de_resnet.py`` / ``test.py`` / ``Train_mvtec.py`` build and use it:

- :class:`ImageOffsetNet`: CoordConv trunk; a coarse (1/8) and a fine (1/2) offset field warp the normalised image
  twice in sequence (``grid_sample``, zeros padding, grids clamped to [-1, 1]); a second, learnt pair of fields
  (the "inverse" offsets) warps the anomaly map back. Offsets are in ``grid_sample`` units, bounded by tanh times
  8/128 (coarse) and 3/128 (fine), as official.
- The frozen encoder (WideResNet50 layer1..layer3 officially; here any backbone from
  :mod:`pipeline.features.backbones`) runs on the warped image.
- :class:`OCBE`: RD4AD's one-class bottleneck in the official VQ version: the raw layer3 features are quantised by a
  200-code book, each level is reduced by a 3x3 conv, layer1/layer2 are strided down to layer3's size, and all four
  are concatenated into three (wide) bottleneck blocks at 1/32.
- :class:`ImageDecoder`: the de-WideResNet50 (transposed-conv bottleneck blocks) reconstructing layer3, layer2, layer1.

Anomaly map (official ``evaluation`` with ``cal_anomaly_map(..., amap_mode='a')``): ``1 - cos`` per level, upsampled
bilinearly (align_corners) to the input size and summed, warped back by the inverse fine then coarse grids, and
Gaussian-smoothed (sigma 4, scipy's reflect borders). Deformation map: the inverse fine offset length warped by the
inverse coarse grid plus the inverse coarse offset length, smoothed the same way (official ``anomaly_os2``).

Remaining differences from the official code, and why:

- Image score. Official: over the whole test set, ``minmax(max map) + w * minmax(max deformation map)`` (w 0.2 for
  screw/carpet/metal_nut, 0.05 otherwise), and the AUROC reported is the better of that and the AUROC of the map
  maximum alone. Ours: ``max map + deform_weight * max deformation map`` per image, with no min-max over the test
  set (a score must not depend on which other images are scored with it) and no best-of-two selection (it picks
  with the test labels). Both raw components are returned (:class:`ImageScores`), so the official set-level
  normalisation can be redone on a whole set.
- Checkpoints: the official training evaluates on the test set every 10 epochs and keeps the last such checkpoint;
  ours trains for the steps asked and never looks at test data.
- The official training uses a cosine learning-rate schedule over 400 epochs; we train at a constant ``lr``
  (AdamW with the official betas (0.5, 0.999)).
- Unused official weights are not kept: the ``nn.Conv2d`` weights ``CoordConv2d`` inherits but never uses, and the
  bottleneck's ``conv4`` / ``bn4``.
- Widths follow the encoder: with WideResNet50 they are the official ones; other backbones scale them (the official
  code has WideResNet50 only).
- Images are scored in batches (the official evaluation uses batch size 1; identical in eval mode), and the
  coordinate channels are computed for each input size (the official ``AddCoords2d`` caches those of the first
  input it sees). Inputs are square, as the official grid code assumes.
- The official encoder's ImageNet weights come from torchvision's ``IMAGENET1K_V1`` (the same file the official code
  loads); preprocessing (resize to 256, bilinear) is the product's, see ``pipeline.features.preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from pipeline.detectors.dmad.blocks import CoordConv, ResidualBlock, sample
from pipeline.features.preprocess import gaussian_blur

LAYERS = ["layer1", "layer2", "layer3"]
COARSE_SCALE = 2 * 8 / 256  # official scale1: the coarse offsets' bound, in grid_sample units
FINE_SCALE = 2 * 3 / 256  # official scale2
CODEBOOK_BETA = 0.25


def coordinate_channels(n: int, reduction: int = 4) -> Tensor:
    """The official ``AddCoords2d`` channels for a square ``n x n`` input: ``[4, n, n]`` = (row position within its
    block of ``reduction`` rows, block row, same for columns), each scaled to about [-1, 1]."""
    blocks = n // reduction
    block = (torch.arange(blocks, dtype=torch.float32) / (blocks - 1)).repeat_interleave(n // blocks)
    local = torch.arange(n, dtype=torch.float32) / (n - 1) - block
    rows = [(v * 2 - 1).view(n, 1).expand(n, n) for v in (local, block)]
    cols = [(v * 2 - 1).view(1, n).expand(n, n) for v in (local, block)]
    return torch.stack([*rows, *cols])


def image_coordinates(x: Tensor) -> Tensor:
    """The image variant's coordinate channels for a square input ``x``."""
    return coordinate_channels(x.shape[-1]).to(x)


def offset_head(width: int, strides: int) -> nn.Sequential:
    """``strides`` stride-2 conv-bn-relu steps, then a 2-channel conv and tanh."""
    layers: list[nn.Module] = []
    cin = 2 * width
    for _ in range(strides):
        layers += [nn.Conv2d(cin, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers, nn.Conv2d(width, 2, 3, 1, 1), nn.Tanh())


def identity_grid(batch: int, n: int, like: Tensor) -> Tensor:
    line = torch.linspace(-1, 1, n, dtype=torch.float32).to(like)
    ys, xs = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([xs, ys], dim=-1).expand(batch, n, n, 2)


def smoothness(field: Tensor) -> Tensor:
    """Official ``Smooth_Loss(ks=3)``: mean absolute difference between each offset (summed over x and y) and the
    mean of its 8 neighbours, with zero padding."""
    kernel = torch.full((3, 3), -1 / 8, dtype=field.dtype, device=field.device)
    kernel[1, 1] = 1
    return F.conv2d(F.pad(field, (1, 1, 1, 1)), kernel.view(1, 1, 3, 3).repeat(1, 2, 1, 1)).abs().mean()


@dataclass
class Deformation:
    warped: Tensor  # [B,3,H,W] the image after the coarse then the fine warp
    coarse: Tensor  # [B,H,W,2] offsets, grid_sample units
    fine: Tensor
    coarse_inverse: Tensor
    fine_inverse: Tensor

    def grid(self, offsets: Tensor) -> Tensor:
        return torch.clamp(offsets + identity_grid(offsets.shape[0], offsets.shape[1], offsets), -1, 1)

    def warp_back(self, x: Tensor) -> Tensor:
        """``x [B,C,H,W]`` sampled by the inverse fine grid, then the inverse coarse grid (official order)."""
        return sample(sample(x, self.grid(self.fine_inverse)), self.grid(self.coarse_inverse))

    def loss(self, x: Tensor, gamma: float = 1.0) -> Tensor:
        """Official ``offset_loss``: forward offset lengths, smoothness of all four fields, and how well the inverse
        warps bring the warped image back to ``x``."""
        fields = (self.coarse, self.fine, self.coarse_inverse, self.fine_inverse)
        return (length(self.coarse).mean() + length(self.fine).mean()
                + sum(smoothness(f.permute(0, 3, 1, 2)) for f in fields)
                + F.mse_loss(self.warp_back(self.warped), x) * gamma)


def length(offsets: Tensor) -> Tensor:
    """``[B,H,W,2]`` -> ``[B,H,W]`` offset lengths."""
    return (offsets ** 2).sum(dim=-1) ** 0.5


class ImageOffsetNet(nn.Module):
    """The official learnt deformation: coarse and fine forward offsets and their learnt inverses."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv_offset1 = nn.Sequential(
            CoordConv(3, width, image_coordinates), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            CoordConv(width, width, image_coordinates), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.conv_offset2 = nn.Sequential(ResidualBlock(width), nn.BatchNorm2d(width))
        self.conv_offset3 = offset_head(width, 1)
        self.conv_offset4 = offset_head(width, 3)
        self.conv_offset3_ = offset_head(width, 1)
        self.conv_offset4_ = offset_head(width, 3)

    def forward(self, x: Tensor) -> Deformation:
        n = x.shape[-1]
        x1 = self.conv_offset1(x)
        x2 = torch.cat([self.conv_offset2(x1), x1], dim=1)

        def full(head: nn.Module, scale: float) -> Tensor:
            return F.interpolate(head(x2) * scale, (n, n), mode="bilinear", align_corners=True).permute(0, 2, 3, 1)

        d = Deformation(x, full(self.conv_offset4, COARSE_SCALE), full(self.conv_offset3, FINE_SCALE),
                        full(self.conv_offset4_, COARSE_SCALE), full(self.conv_offset3_, FINE_SCALE))
        d.warped = sample(sample(x, d.grid(d.coarse)), d.grid(d.fine))
        return d


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (official ``VectorQuantizer``)."""

    def __init__(self, size: int, dim: int, beta: float = CODEBOOK_BETA):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        self.embedding.weight.data.uniform_(-1 / size, 1 / size)
        self.beta = beta

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B,D,h,w]`` -> (quantised ``z``, embedding + beta * commitment loss)."""
        latents = z.permute(0, 2, 3, 1)
        flat = latents.reshape(-1, latents.shape[-1])
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        q = codes[dist.argmin(dim=1)].view(latents.shape)
        loss = F.mse_loss(q.detach(), latents) * self.beta + F.mse_loss(q, latents.detach())
        return (latents + (q - latents).detach()).permute(0, 3, 1, 2), loss


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class OCBE(nn.Module):
    """RD4AD's one-class bottleneck, official VQ version (``BN_layer(vq=True)``). For encoder widths ``c1, c2, c3``
    (WideResNet50: 256, 512, 1024): reductions to ``c1/4`` channels, codebook of ``codebook_size`` x ``c3``, three
    wide bottleneck blocks to ``2*c3`` channels at half layer3's size."""

    def __init__(self, channels: list[int], codebook_size: int):
        super().__init__()
        c1, c2, c3 = channels
        r = c1 // 4
        self.conv1_r, self.bn1_r = conv3x3(c1, r), nn.BatchNorm2d(r)
        self.conv2_r, self.bn2_r = conv3x3(c2, r), nn.BatchNorm2d(r)
        self.conv3_r, self.bn3_r = conv3x3(c3, r), nn.BatchNorm2d(r)
        self.conv1, self.bn1 = conv3x3(r, r, 2), nn.BatchNorm2d(r)
        self.conv2, self.bn2 = conv3x3(r, r, 2), nn.BatchNorm2d(r)
        self.conv3, self.bn3 = conv3x3(r, r, 2), nn.BatchNorm2d(r)
        self.relu = nn.ReLU(inplace=True)
        self.vq3 = VectorQuantizer(codebook_size, c3)
        planes, cat = c3 // 2, c3 + 3 * r
        downsample = nn.Sequential(nn.Conv2d(cat, 4 * planes, 1, 2, bias=False), nn.BatchNorm2d(4 * planes))
        self.bn_layer = nn.Sequential(Bottleneck(cat, planes, 2, downsample, base_width=128),
                                      *(Bottleneck(4 * planes, planes, base_width=128) for _ in range(2)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        l1, l2, l3 = feats
        quantised, vq_loss = self.vq3(l3)
        l1 = self.relu(self.bn1_r(self.conv1_r(l1)))
        l2 = self.relu(self.bn2_r(self.conv2_r(l2)))
        l3 = self.relu(self.bn3_r(self.conv3_r(l3)))
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(l1))))))
        l2 = self.relu(self.bn3(self.conv3(l2)))
        return self.bn_layer(torch.cat([l1, l2, l3, quantised], 1)), vq_loss


class UpBottleneck(nn.Module):
    """The de-ResNet bottleneck block: as ResNet's, with a 2x2 transposed conv where ResNet strides down."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        width, cout = 2 * planes, 4 * planes  # the wide variant's base width 128
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = (nn.ConvTranspose2d(width, width, 2, 2, bias=False) if stride == 2 else conv3x3(width, width))
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = (nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.upsample is None else self.upsample(x)))


class ImageDecoder(nn.Module):
    """de-WideResNet50 (official ``de_wide_resnet50_2``): 3, 4 and 6 up-blocks back to layer3, layer2, layer1."""

    def __init__(self, channels: list[int]):
        super().__init__()
        cin = 2 * channels[2]
        for name, cout, blocks in zip(("layer1", "layer2", "layer3"), reversed(channels), (3, 4, 6), strict=True):
            planes = cout // 4
            setattr(self, name, nn.Sequential(UpBottleneck(cin, planes, 2),
                                              *(UpBottleneck(cout, planes) for _ in range(blocks - 1))))
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        a = self.layer1(x)
        b = self.layer2(a)
        return [self.layer3(b), b, a]


@dataclass
class ImageForward:
    deformation: Deformation
    features: list[Tensor]  # encoder features of the warped image, layer1..layer3
    reconstructions: list[Tensor]
    vq_loss: Tensor


@dataclass
class ImageScores:
    scores: Tensor  # [B] max map + deform_weight * max deformation map
    maps: Tensor  # [B,H,W] the official anomaly map
    deformation_maps: Tensor  # [B,H,W] the official inverse-offset map (anomaly_os2)
    map_max: Tensor  # [B]
    deformation_max: Tensor  # [B]


class ImageDMAD(nn.Module):
    """PPDM: ``offset`` warps the (ImageNet-normalised) image, the frozen ``backbone`` encodes it, ``bn`` fuses and
    quantises, ``decoder`` reconstructs. Parameter names follow the official checkpoint's ``offset`` / ``bn`` /
    ``decoder`` parts."""

    def __init__(self, backbone: nn.Module, channels: list[int], fingerprint: str, codebook_size: int = 200,
                 offset_channels: int = 64):
        super().__init__()
        self.backbone = backbone
        self.backbone_fingerprint = fingerprint
        self.offset = ImageOffsetNet(offset_channels)
        self.bn = OCBE(channels, codebook_size)
        self.decoder = ImageDecoder(channels)

    def train(self, mode: bool = True) -> ImageDMAD:
        super().train(mode)
        self.backbone.eval()  # frozen, in eval mode as official
        return self

    def forward(self, x: Tensor) -> ImageForward:
        deformation = self.offset(x)
        taps = self.backbone(deformation.warped)
        features = [taps[layer] for layer in LAYERS]
        embedding, vq_loss = self.bn(features)
        return ImageForward(deformation, features, self.decoder(embedding), vq_loss)


def anomaly_map(features: list[Tensor], reconstructions: list[Tensor], size: int) -> Tensor:
    """Official ``cal_anomaly_map(..., amap_mode='a')`` for a batch: ``[B,1,size,size]``, before warping back."""
    return sum(F.interpolate((1 - F.cosine_similarity(f, r)).unsqueeze(1), size=size, mode="bilinear",
                             align_corners=True) for f, r in zip(features, reconstructions, strict=True))


def score_images(model: ImageDMAD, x: Tensor, deform_weight: float, sigma: float = 4.0) -> ImageScores:
    """Scores and maps for ImageNet-normalised images ``x [B,3,n,n]``, as the official evaluation computes them per
    image (see the module docstring for the image score)."""
    out = model(x)
    d = out.deformation
    maps = gaussian_blur(d.warp_back(anomaly_map(out.features, out.reconstructions, x.shape[-1]))[:, 0], sigma)
    inverse = sample(length(d.fine_inverse).unsqueeze(1), d.grid(d.coarse_inverse)) + length(d.coarse_inverse)[:, None]
    deformation_maps = gaussian_blur(inverse[:, 0], sigma)
    map_max, deformation_max = maps.flatten(1).amax(1), deformation_maps.flatten(1).amax(1)
    return ImageScores(map_max + deform_weight * deformation_max, maps, deformation_maps, map_max, deformation_max)


def reconstruction_loss(features: list[Tensor], reconstructions: list[Tensor]) -> Tensor:
    """Official ``loss_fucntion``: per level, ``1 - cos`` between the whole flattened feature maps, batch mean."""
    return sum((1 - F.cosine_similarity(f.flatten(1), r.flatten(1))).mean()
               for f, r in zip(features, reconstructions, strict=True))


def losses(model: ImageDMAD, x: Tensor) -> dict[str, Tensor]:
    """The official training loss on ImageNet-normalised images and its parts."""
    out = model(x)
    parts = {"reconstruction": reconstruction_loss(out.features, out.reconstructions),
             "offset": out.deformation.loss(x), "vq": out.vq_loss}
    parts["total"] = parts["reconstruction"] + parts["offset"] + parts["vq"]
    return parts
