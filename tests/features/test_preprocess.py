"""Resize + centre crop match torchvision's Resize + CenterCrop, and maps go back where they came from."""

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pipeline.detectors.patchcore import preprocess_of
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.features.preprocess import Preprocess, describe_inspected

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@pytest.mark.parametrize("seed", range(12))
def test_matches_torchvision_resize_and_center_crop(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 90, size=2))
    size = int(rng.integers(16, 80))
    crop = int(rng.integers(8, size + 1))
    mode = ["bilinear", "bicubic"][seed % 2]
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    prep = Preprocess(size, crop, mode)
    expected = TF.center_crop(TF.resize(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0, [size, size],
                                        interpolation=MODES[mode], antialias=True), [crop, crop]).clamp(0, 1)
    got = prep(rgb)
    assert got.shape == (3, crop, crop) and prep.input_size == crop
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(8))
def test_uncrop_puts_each_value_back_on_its_pixel(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(10, 70))
    prep = Preprocess(size, int(rng.integers(4, size + 1)))
    full = rng.random((size, size)).astype(np.float32) + 1.0
    cropped = prep.crop_square(torch.from_numpy(full)).numpy()
    back = prep.uncrop(cropped)
    inside = back == full
    assert back.shape == (size, size) and inside.sum() == prep.input_size ** 2
    assert np.all(back[~inside] == cropped.min())  # the cut-off border: the map's minimum


def test_patchcore_fits_score_the_whole_image_by_default_and_0875_is_the_official_crop():
    whole = preprocess_of(PatchCoreSettings())
    assert (whole.size, whole.crop, whole.inspected_fraction) == (256, None, 1.0)
    official = preprocess_of(PatchCoreSettings(crop_fraction=0.875))  # the paper's resize 256, crop 224
    assert (official.size, official.input_size, official.interpolation) == (256, 224, "bilinear")
    assert official.inspected_fraction == 0.875
    assert describe_inspected(1.0) == "the whole of each image is inspected"
    assert "outer 6.25 % of every edge is never scored" in describe_inspected(0.875)
