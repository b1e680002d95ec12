"""Heatmap overlays look as they did: the table-driven, integer renderer against the float formula of the
overlay it replaced (same ramp, same threshold scale, same blend), within a stated tolerance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.results.heatmaps import blend, render_overlays
from tests.helpers.previous_overlay import reference_overlay

# Per colour level (0..255): the look-up table rounds the map to 1/1023 of the ramp and the blend runs in
# integers; the reference truncates twice. At most this much apart anywhere, and this much on average.
MAX_LEVELS, MEAN_LEVELS = 3, 1.0


def sample(side: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (*side, 3), dtype=np.uint8)
    amap = np.abs(rng.normal(0, 1.2, (28, 28))).astype(np.float32)  # spans the whole ramp at scale 1
    return rgb, amap


@pytest.mark.parametrize(("side", "scale"), [((96, 128), 1.0), ((300, 200), 0.7), ((1500, 900), 2.0)])
def test_render_matches_the_previous_overlay(side, scale):
    rgb, amap = sample(side, seed=side[0])
    expected = reference_overlay(rgb, amap, scale).astype(int)
    got = blend(rgb, amap, scale, 1024, "cpu").permute(1, 2, 0).numpy().astype(int)
    assert got.shape == expected.shape  # the large image is shrunk to 1024 px on its long side, as before
    diff = np.abs(got - expected)
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())


def test_threshold_scale_puts_the_threshold_mid_ramp():
    """A map equal to the scale everywhere is coloured with the middle anchor of the ramp."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    got = blend(rgb, np.full((8, 8), 0.4, np.float32), 0.4, 1024, "cpu")[:, 0, 0].numpy()
    np.testing.assert_allclose(got, np.array([180, 20, 120]) * 0.45, atol=1)


def test_each_format_decodes_to_the_overlay():
    yy, xx = np.mgrid[0:128, 0:160]
    rgb = np.stack([xx * 1.5, yy * 2.0, (xx + yy) * 0.8], axis=-1).clip(0, 255).astype(np.uint8)  # smooth, as photos
    amap = sample((8, 8), seed=1)[1]
    expected = blend(rgb, amap, 1.0, 1024, "cpu").permute(1, 2, 0).numpy().astype(int)
    for fmt, kind, tolerance in (("png", "PNG", 0), ("jpeg", "JPEG", 8), ("webp", "WEBP", 10)):
        (data,) = render_overlays([rgb], [amap], [1.0], fmt)
        image = Image.open(io.BytesIO(data))
        assert image.format == kind and image.size == (160, 128)
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - expected).mean() <= tolerance, fmt


def test_batch_keeps_order_and_nan_maps_do_not_fail():
    rgbs = [np.full((40, 40, 3), v, np.uint8) for v in (0, 120, 250)]
    maps = [np.zeros((10, 10), np.float32), np.full((10, 10), np.nan, np.float32), np.ones((10, 10), np.float32)]
    out = render_overlays(rgbs, maps, [1.0, 1.0, 1.0], "png")
    means = [np.asarray(Image.open(io.BytesIO(d))).mean() for d in out]
    assert means == sorted(means) and len(out) == 3
