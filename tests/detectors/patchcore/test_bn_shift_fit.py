"""``patchcore.bn_shift: official`` (``jobs.fit --bn-shift official``) against the official code's backbone.

The official PatchCore reference (tests/data/official/patchcore) stored the layer2/layer3 taps of the official
model: a seeded resnet18 whose BatchNorm statistics the official ``feature_dimensions`` probe shifted. A fit with
the same seeded weights and ``bn_shift: official`` builds its embedder the way the fit workers do and must give
those taps; the default (clean backbone) must not."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import StorageSettings
from pipeline.detectors.patchcore import build_embedder
from pipeline.detectors.patchcore.fit import bn_shift_input
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.io.storage import Storage

DATA = Path(__file__).resolve().parents[2] / "data" / "official" / "patchcore"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _taps(bn_shift: str, side: int, images: np.ndarray) -> dict[str, np.ndarray]:
    settings = PatchCoreSettings(backbone="resnet18", weights="none", seed=0, layers=["layer2", "layer3"],
                                 image_size=side, crop_fraction=1.0, bn_shift=bn_shift)
    embedder, _ = build_embedder(settings, Storage(StorageSettings()), "cpu", bn_shift_input(settings))
    with torch.inference_mode():
        taps = embedder.backbone((torch.from_numpy(images) - MEAN) / STD)
    return {k: v.numpy() for k, v in taps.items()}


@pytest.mark.parametrize("case, side", [("ps3_nn1", 64), ("ps5_nn3", 72)])
def test_official_bn_shift_gives_the_official_backbone(case, side):
    ref = np.load(DATA / f"{case}.npz")
    shifted = _taps("official", side, ref["test_images"])
    for layer in ("layer2", "layer3"):
        assert np.abs(shifted[layer] - ref[f"taps_{layer}"]).max() < 1e-4, layer
    clean = _taps("none", side, ref["test_images"])
    assert np.abs(clean["layer3"] - ref["taps_layer3"]).max() > 1e-2  # the setting is what makes the difference
