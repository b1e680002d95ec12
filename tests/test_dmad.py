import io

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.config import StorageSettings
from pipeline.detectors.dmad import (
    DMADDetector,
    DMADSettings,
    VectorQuantizer,
    build_model,
    clip_windows,
    load_checkpoint,
    save_checkpoint,
    train_dmad,
    video_frame_scores,
    warp,
)
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())
VIDEO = DMADSettings(image_size=32, in_frames=2, channels=8, codebook_size=16, code_dim=16, lr=2e-3, window=1)
IMAGE = DMADSettings(variant="image", image_size=32, channels=8, codebook_size=16, code_dim=16, lr=1e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normal_clip(frames: int = 20, size: int = 32) -> torch.Tensor:
    """A textured still background with a dark square moving right, 2 pixels a frame, wrapping around."""
    g = torch.Generator().manual_seed(0)
    background = torch.nn.functional.avg_pool2d(0.3 + 0.1 * torch.rand(1, 3, size, size, generator=g), 5, 1, 2)[0]
    clip = background.repeat(frames, 1, 1, 1)
    for t in range(frames):
        x = (2 * t) % (size - 6)
        clip[t, :, 12:18, x:x + 6] = 0.05
    return clip


@pytest.fixture(scope="module")
def video_model():
    windows = clip_windows(normal_clip(), VIDEO.in_frames)
    return train_dmad(VIDEO, [windows[0::2], windows[1::2]], steps=30, seed=0)


def test_settings_reject_what_the_networks_cannot_use():
    with pytest.raises(ValidationError):
        DMADSettings(variant="image", image_size=48)  # not a multiple of 32
    with pytest.raises(ValidationError):
        DMADSettings(window=4)  # an even window has no centre frame
    with pytest.raises(ValidationError):
        DMADSettings(alpha={"deformation": 0.0})
    with pytest.raises(ValidationError):
        DMADSettings(codebook=8)  # unknown field


def test_vq_picks_the_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(size=3, dim=2, beta=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]]))
    z = torch.tensor([[0.9, 1.2], [-1.5, 2.0], [0.1, -0.2], [5.0, 5.0]]).t().reshape(1, 2, 2, 2).requires_grad_()
    q, loss, codes = vq(z)
    assert codes.flatten().tolist() == [1, 2, 0, 1]
    assert torch.equal(q.detach().reshape(2, 4).t(), vq.codebook.detach()[[1, 2, 0, 1]])
    (q * torch.arange(8.0).view(1, 2, 2, 2)).sum().backward()
    assert torch.equal(z.grad, torch.arange(8.0).view(1, 2, 2, 2))  # identity gradient through the quantiser
    loss.backward()
    assert vq.codebook.grad[[0, 1, 2]].abs().sum(1).gt(0).all()  # used codes move towards their inputs


def test_warp_with_zero_offsets_is_the_identity_and_offsets_are_pixels():
    x = torch.rand(2, 3, 16, 20)
    assert torch.allclose(warp(x, torch.zeros(2, 2, 16, 20)), x, atol=1e-5)
    right = torch.zeros(2, 2, 16, 20)
    right[:, 0] = 1.0  # each pixel samples its right-hand neighbour
    assert torch.allclose(warp(x, right)[..., :-1], x[..., 1:], atol=1e-5)


def test_video_outputs_have_the_documented_shapes():
    torch.manual_seed(0)
    model = build_model(VIDEO).eval()
    out = model(torch.rand(3, 3 * VIDEO.in_frames, 32, 32))
    assert out.prediction.shape == (3, 3, 32, 32) and out.offset.shape == (3, 2, 32, 32)
    assert out.coarse.shape == (3, 2, 8, 8) and out.prediction.min() >= 0 and out.prediction.max() <= 1
    det = DMADDetector(model, VIDEO)
    parts = det.score_clip(torch.rand(7, 3, 32, 32))
    assert {k: v.shape for k, v in parts.items()} == {
        "deformation": (5,), "reconstruction": (5,), "gradient": (5,), "maps": (5, 32, 32)}
    batch = det.score(torch.rand(7, 3, 32, 32))
    assert np.isnan(batch.scores[:2]).all() and np.isfinite(batch.scores[2:]).all()
    assert batch.maps.shape == (7, 32, 32) and not batch.maps[:2].any()
    assert det.score_clip(torch.rand(2, 3, 32, 32))["maps"].shape == (0, 32, 32)  # too short to predict anything


def test_training_on_a_normal_clip_lowers_the_loss(video_model):
    _, curve = video_model
    assert len(curve) == 30
    assert np.mean([c["total"] for c in curve[-5:]]) < 0.3 * np.mean([c["total"] for c in curve[:5]])


def test_a_bright_square_appearing_scores_higher_than_every_normal_frame(video_model):
    det = DMADDetector(video_model[0], VIDEO)
    clip = normal_clip()
    clip[10, :, 3:9, 20:26] = 1.0  # in frame 10 only, away from the moving square
    parts = det.score_clip(clip)
    scores = video_frame_scores(parts, VIDEO.alpha, window=1)
    anomalous = 10 - VIDEO.in_frames
    normal = [i for i in range(len(scores)) if not anomalous <= i <= anomalous + VIDEO.in_frames]
    assert scores[anomalous] > scores[normal].max() + 0.3
    assert parts["reconstruction"][anomalous] > 2 * parts["reconstruction"][normal].max()
    square = parts["maps"][anomalous][3:9, 20:26].mean()
    assert square > 3 * parts["maps"][anomalous][20:, :10].mean()  # the map is hottest where the square is


def test_frame_scores_are_normalised_per_video_then_smoothed():
    constant = {"deformation": np.full(6, 3.0), "reconstruction": np.full(6, 0.1), "gradient": np.ones(6)}
    assert np.array_equal(video_frame_scores(constant, VIDEO.alpha, 3), np.zeros(6, np.float32))
    ramp = np.linspace(0.0, 1.0, 12) ** 2
    components = {"deformation": ramp, "reconstruction": 10 * ramp, "gradient": ramp + 5}
    scores = video_frame_scores(components, VIDEO.alpha, 5)
    assert np.isfinite(scores).all() and np.all(np.diff(scores) >= 0) and np.all(np.diff(scores[2:-2]) > 0)
    assert scores.min() >= 0 and scores.max() <= sum(VIDEO.alpha.values()) + 1e-6
    spike = {"deformation": np.zeros(9), "reconstruction": np.eye(9)[4], "gradient": np.zeros(9)}
    spread = video_frame_scores(spike, {"reconstruction": 1.0}, 3)
    assert np.allclose(spread, [0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    assert video_frame_scores({"gradient": np.zeros(0)}, {"gradient": 1.0}, 5).shape == (0,)


def test_video_checkpoint_round_trip_gives_identical_scores(video_model, tmp_path):
    det = DMADDetector(video_model[0], VIDEO)
    data = save_checkpoint(det.model, VIDEO)
    payload = torch.load(io.BytesIO(data), weights_only=True)
    assert DMADSettings.model_validate_json(payload["settings"]) == VIDEO
    (tmp_path / "dmad.pt").write_bytes(data)
    loaded = DMADDetector.load(STORAGE, str(tmp_path / "dmad.pt"))
    assert loaded.version == load_checkpoint(data).version and loaded.version.startswith("sha256:")
    assert len(loaded.version) == len("sha256:") + 16 and loaded.name == "dmad" and loaded.image_size == 32
    clip = normal_clip(12)
    expected, got = det.score_clip(clip), loaded.score_clip(clip)
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name
    assert np.array_equal(det.score(clip).scores, loaded.score(clip).scores, equal_nan=True)


def test_image_variant_scores_an_image_the_same_alone_or_in_a_batch():
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model, curve = train_dmad(IMAGE, [images[:2], images[2:]], steps=6, seed=0)
    assert curve[-1]["reconstruction"] < curve[0]["reconstruction"]
    det = DMADDetector(model, IMAGE)
    batch = det.score(images)
    assert batch.scores.shape == (4,) and batch.maps.shape == (4, 32, 32) and batch.scores.dtype == np.float32
    alone = det.score(images[2:3])
    assert np.allclose(alone.scores, batch.scores[2:3], rtol=1e-5)
    assert np.allclose(alone.maps, batch.maps[2:3], rtol=1e-4, atol=1e-6)
    assert np.all(batch.scores >= batch.maps.reshape(4, -1).max(1))  # max of the map + deformation term

    data = save_checkpoint(model, IMAGE)
    state = torch.load(io.BytesIO(data), weights_only=True)["state"]
    assert not any(name.startswith("backbone.") for name in state)  # the frozen CNN is rebuilt, not stored
    assert np.array_equal(load_checkpoint(data, STORAGE).score(images).scores, batch.scores)
