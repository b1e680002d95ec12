"""Our DMAD image variant against outputs of the official code (tests/data/official/dmad/image, see its README):
the same seeded weights (widths / 16) and inputs must give the same warped image, features, reconstructions,
anomaly and deformation maps, per-image score components and training loss, within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from pipeline.detectors.dmad import DMADDetector, normalise
from pipeline.detectors.dmad import image_model as ppdm
from pipeline.detectors.dmad.importer import official_image_state_to_ours
from pipeline.detectors.dmad.settings import DMADSettings
from tests.helpers import OFFICIAL

REFERENCE = OFFICIAL / "dmad" / "image" / "image.pt"
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyWideResNet(nn.Module):
    """torchvision's wide_resnet50_2 up to layer3 with every width / 16, as the reference's patched encoder, returning
    the taps as :func:`pipeline.features.backbones.build_backbone` does (parameter names as torchvision's)."""

    def __init__(self, base: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = base
        for name, planes, blocks, stride in (("layer1", base, 3, 1), ("layer2", 2 * base, 4, 2),
                                             ("layer3", 4 * base, 6, 2)):
            down = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))
            setattr(self, name, nn.Sequential(Bottleneck(cin, planes, stride, down, base_width=128),
                                              *(Bottleneck(4 * planes, planes, base_width=128)
                                                for _ in range(blocks - 1))))
            cin = 4 * planes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = {}
        for name in ppdm.LAYERS:
            x = getattr(self, name)(x)
            taps[name] = x
        return taps


@pytest.fixture(scope="module")
def reference():
    ref = torch.load(REFERENCE, weights_only=True)
    state = ref["state"]
    encoder = TinyWideResNet()
    encoder.load_state_dict({k: v.float() for k, v in state["encoder"].items()})
    model = ppdm.ImageDMAD(encoder.requires_grad_(False), [16, 32, 64], "test",
                           codebook_size=state["bn"]["vq3.embedding.weight"].shape[0],
                           offset_channels=state["offset"]["conv_offset1.0.conv.weight"].shape[0])
    ours = {k: v.float() if v.is_floating_point() else v for k, v in official_image_state_to_ours(state).items()}
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and all(name.startswith("backbone.") for name in missing)
    images = normalise(ref["images_u8"].permute(0, 3, 1, 2).float() / 255)
    return model.eval(), images, ref["outputs"]


def test_the_detector_scores_0_to_1_images_as_the_official_evaluation(reference):
    """The product path: 0..1 RGB in, ImageNet normalisation, the official maps, the per-image score."""
    model, _, official = reference
    settings = DMADSettings(variant="image", image_size=64, offset_channels=4, deform_weight=0.2)
    images = torch.load(REFERENCE, weights_only=True)["images_u8"].permute(0, 3, 1, 2).float() / 255
    batch = DMADDetector(model, settings).score(images)
    assert max_diff(torch.from_numpy(batch.maps), official["maps"]) <= TOLERANCE
    expected = official["map_max"] + 0.2 * official["deformation_max"]
    assert max_diff(torch.from_numpy(batch.scores), expected) <= TOLERANCE


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def test_features_maps_and_scores_match_the_official_evaluation(reference):
    model, images, official = reference
    with torch.no_grad():
        out = model(images)
        scores = ppdm.score_images(model, images, deform_weight=0.05)
    assert max_diff(out.deformation.warped, official["warped"]) <= TOLERANCE
    for level in range(3):
        assert max_diff(out.features[level], official["features"][level]) <= TOLERANCE, level
        assert max_diff(out.reconstructions[level], official["reconstructions"][level]) <= TOLERANCE, level
    assert max_diff(scores.maps, official["maps"]) <= TOLERANCE
    assert max_diff(scores.deformation_maps, official["deformation_maps"]) <= TOLERANCE
    assert max_diff(scores.map_max, official["map_max"]) <= TOLERANCE
    assert max_diff(scores.deformation_max, official["deformation_max"]) <= TOLERANCE
    assert max_diff(scores.scores, official["map_max"] + 0.05 * official["deformation_max"]) <= TOLERANCE
    # the official set-level score is the min-max normalised sum of the same two components
    def minmax(v: torch.Tensor) -> torch.Tensor:
        return (v - v.min()) / (v.max() - v.min() + 1e-8)
    set_score = minmax(scores.map_max.double()) + 0.05 * minmax(scores.deformation_max.double())
    assert max_diff(set_score, official["official_set_score"]) <= 1e-3  # min-max over 3 images amplifies rounding


def test_training_loss_matches_the_official_training_step(reference):
    model, images, official = reference
    model = model.train()  # batch statistics in offset net, bottleneck and decoder; the encoder stays in eval mode
    try:
        parts = ppdm.losses(model, images)
    finally:
        model.eval()
    for name, value in official["train_losses"].items():
        assert abs(parts[name].item() - value) <= TOLERANCE, name


def test_the_maps_are_warped_back_by_the_inverse_offsets(reference):
    """Guards the comparison itself: skipping the inverse warp changes the maps far beyond the tolerance."""
    model, images, official = reference
    with torch.no_grad():
        out = model(images)
    unwarped = ppdm.anomaly_map(out.features, out.reconstructions, images.shape[-1])[:, 0]
    from pipeline.features.preprocess import gaussian_blur
    assert max_diff(gaussian_blur(unwarped, 4.0), official["maps"]) > 100 * TOLERANCE
    assert np.isfinite(official["maps"].numpy()).all()
