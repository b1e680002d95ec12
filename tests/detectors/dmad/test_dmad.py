import io
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.config import StorageSettings
from pipeline.detectors.dmad import (
    DMADDetector,
    build_model,
    clip_windows,
    load_checkpoint,
    save_checkpoint,
    train_dmad,
    video_frame_scores,
)
from pipeline.detectors.dmad.image_model import VectorQuantizer, identity_grid, sample
from pipeline.detectors.dmad.settings import OFFICIAL_ALPHA, DMADSettings
from pipeline.detectors.dmad.video_model import frame_scores, scene_of, to_model_space
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())
TINY = {"image_size": 256, "in_frames": 2, "code_dim": 16, "skip_channels": 2, "offset_channels": 8,
        "codebook_size": 16, "lr": 2e-3}
VIDEO = DMADSettings(**TINY, window=1, window_keep=1)
SHANGHAI = DMADSettings(**TINY, layout="shanghai", colour="gray", scenes=2, window=1, window_keep=1)
IMAGE = DMADSettings(variant="image", image_size=32, backbone="resnet18", offset_channels=4, codebook_size=16,
                     lr=1e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normal_clip(frames: int = 14, size: int = 256) -> torch.Tensor:
    """A textured still background with a dark square moving right, 8 pixels a frame, wrapping around."""
    g = torch.Generator().manual_seed(0)
    background = torch.nn.functional.avg_pool2d(0.3 + 0.1 * torch.rand(1, 3, size, size, generator=g), 9, 1, 4)[0]
    clip = background.repeat(frames, 1, 1, 1)
    for t in range(frames):
        x = (8 * t) % (size - 48)
        clip[t, :, 96:144, x:x + 48] = 0.05
    return clip


@pytest.fixture(scope="module")
def video_model():
    windows = clip_windows(normal_clip(), VIDEO.in_frames)
    return train_dmad(VIDEO, [windows[0::2], windows[1::2]], steps=16, seed=0)


def test_settings_reject_what_the_networks_cannot_use():
    with pytest.raises(ValidationError):
        DMADSettings(variant="image", image_size=48)  # not a multiple of 32
    with pytest.raises(ValidationError, match="multiple of 256"):
        DMADSettings(image_size=128)  # the official CoordConv needs 32 cells at 1/8 of the frame
    with pytest.raises(ValidationError):
        DMADSettings(window=4)  # an even window has no centre frame
    with pytest.raises(ValidationError, match="window_keep"):
        DMADSettings(window=3, window_keep=4)
    with pytest.raises(ValidationError):
        DMADSettings(alpha={"deformation": 0.0})
    with pytest.raises(ValidationError, match="foreground"):
        DMADSettings(alpha={"foreground": 1.0})  # a shanghai component; ped2 has none
    with pytest.raises(ValidationError, match="layout=shanghai"):
        DMADSettings(scenes=3)
    with pytest.raises(ValidationError):
        DMADSettings(codebook=8)  # unknown field
    assert SHANGHAI.score_weights == {"deformation": 0.2, "reconstruction": 0.4, "foreground": 0.6}


def test_vq_picks_the_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(size=3, dim=2, beta=0.25)
    codebook = vq.embedding.weight
    with torch.no_grad():
        codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 3.0]]))
    z = torch.tensor([[0.9, 1.2], [-1.5, 2.0], [0.1, -0.2], [5.0, 5.0]]).t().reshape(1, 2, 2, 2).requires_grad_()
    q, loss = vq(z)
    assert torch.equal(q.detach().reshape(2, 4).t(), codebook.detach()[[1, 2, 0, 1]])  # the nearest codes
    (q * torch.arange(8.0).view(1, 2, 2, 2)).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.arange(8.0).view(1, 2, 2, 2))  # identity gradient through the quantiser
    loss.backward()
    assert codebook.grad[[0, 1, 2]].abs().sum(1).gt(0).all()  # used codes move towards their inputs


def test_image_warp_with_zero_offsets_is_the_identity_and_offsets_are_grid_units():
    x = torch.rand(2, 3, 16, 16)
    grid = identity_grid(2, 16, x)
    assert torch.allclose(sample(x, grid), x, atol=1e-5)
    right = grid.clone()
    right[..., 0] += 2 / 15  # one pixel in grid_sample units: each pixel samples its right-hand neighbour
    assert torch.allclose(sample(x, right)[..., :-1], x[..., 1:], atol=1e-5)


def test_video_outputs_have_the_documented_shapes():
    torch.manual_seed(0)
    model = build_model(VIDEO).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3 * VIDEO.in_frames, 256, 256) * 2 - 1)
    assert out.prediction.shape == (3, 3, 256, 256) and out.coarse.shape == (3, 256, 256, 2)
    assert out.mask.shape == (3, 3, 256, 256) and out.prediction.abs().max() <= 1  # the official -1..1 space
    det = DMADDetector(model, VIDEO)
    parts = det.score_clip(torch.rand(5, 3, 256, 256))
    assert {k: v.shape for k, v in parts.items()} == {
        "deformation": (3,), "reconstruction": (3,), "gradient": (3,), "maps": (3, 256, 256)}
    batch = det.score(torch.rand(5, 3, 256, 256))
    assert np.isnan(batch.scores[:2]).all() and np.isfinite(batch.scores[2:]).all()
    assert batch.maps.shape == (5, 256, 256) and not batch.maps[:2].any()
    assert det.score_clip(torch.rand(2, 3, 256, 256))["maps"].shape == (0, 256, 256)  # too short to predict


def test_frames_go_to_the_official_colour_space():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(to_model_space(rgb, "bgr")[:, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    grey = 0.299 + 0.587 * 0.5  # BT.601 luma, as OpenCV
    assert torch.allclose(to_model_space(rgb, "gray")[:, 0, 0], torch.full((3,), 2 * grey - 1))


def test_training_on_a_normal_clip_lowers_the_loss(video_model):
    _, curve = video_model
    assert len(curve) == 16
    assert np.mean([c["total"] for c in curve[-3:]]) < 0.5 * np.mean([c["total"] for c in curve[:3]])


def test_a_bright_square_appearing_scores_higher_than_every_normal_frame(video_model):
    det = DMADDetector(video_model[0], VIDEO)
    clip = normal_clip()
    clip[8, :, 16:64, 160:208] = 1.0  # in frame 8 only, away from the moving square
    parts = det.score_clip(clip)
    scores = video_frame_scores(parts, VIDEO)
    anomalous = 8 - VIDEO.in_frames
    normal = [i for i in range(len(scores)) if not anomalous <= i <= anomalous + VIDEO.in_frames]
    assert scores[anomalous] > scores[normal].max() + 0.3
    assert parts["reconstruction"][anomalous] > parts["reconstruction"][normal].max() + 0.02  # 48x48 px of 256x256
    square = parts["maps"][anomalous][16:64, 160:208].mean()
    assert square > 3 * parts["maps"][anomalous][200:, :64].mean()  # the map is hottest where the square is


def test_frame_scores_are_normalised_per_video_then_trimmed_and_averaged():
    constant = {"deformation": np.full(6, 3.0), "reconstruction": np.full(6, 0.1), "gradient": np.ones(6)}
    assert np.array_equal(frame_scores(constant, OFFICIAL_ALPHA["ped2"], 3, 2), np.zeros(6, np.float32))
    ramp = np.linspace(0.0, 1.0, 12) ** 2
    components = {"deformation": ramp, "reconstruction": 10 * ramp, "gradient": ramp + 5}
    scores = frame_scores(components, OFFICIAL_ALPHA["ped2"], 5, 3)
    assert np.isfinite(scores).all() and np.all(np.diff(scores) >= 0) and np.all(np.diff(scores[2:-2]) > 0)
    assert scores.min() >= 0 and scores.max() <= sum(OFFICIAL_ALPHA["ped2"].values()) + 1e-6
    spike = np.eye(9)[4]  # one odd frame is trimmed away; three in a row survive
    assert np.allclose(frame_scores({"x": spike}, {"x": 1.0}, 3, 2), 0)
    plateau = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0.0])
    assert np.allclose(frame_scores({"x": plateau}, {"x": 1.0}, 3, 2), plateau, atol=1e-6)
    assert frame_scores({"x": np.zeros(0)}, {"x": 1.0}, 5, 3).shape == (0,)


def test_shanghai_uses_the_background_of_the_videos_scene():
    assert scene_of("s3://cams/02_0014.avi", 13) == 1 and scene_of("anything.mp4", 1) == 0
    with pytest.raises(ValueError, match="scene"):
        scene_of("cam7.mp4", 13)
    with pytest.raises(ValueError, match="scene"):
        scene_of("14_0001.avi", 13)
    clip = normal_clip(6)
    windows = clip_windows(clip, SHANGHAI.in_frames)
    scenes = torch.tensor([0, 0, 1, 1])
    model, curve = train_dmad(SHANGHAI, [windows], steps=2, seed=0, scenes=[scenes])
    assert np.isfinite(curve[-1]["total"]) and model.background.shape == (2, 3, 256, 256)
    with torch.no_grad():
        model.background[1].fill_(0.9)
    det = DMADDetector(model, SHANGHAI)
    first, second = det.score_clip(clip, scene=0), det.score_clip(clip, scene=1)
    assert set(first) == {"deformation", "reconstruction", "foreground", "maps"}
    assert not np.allclose(first["maps"], second["maps"])  # the scene's background is in the prediction
    with pytest.raises(ValueError, match="scene 2"):
        det.score_clip(clip, scene=2)


def test_video_checkpoint_round_trip_gives_identical_scores(video_model, tmp_path):
    det = DMADDetector(video_model[0], VIDEO)
    data = save_checkpoint(det.model, VIDEO)
    payload = torch.load(io.BytesIO(data), weights_only=True)
    assert DMADSettings.model_validate_json(payload["settings"]) == VIDEO
    (tmp_path / "dmad.pt").write_bytes(data)
    loaded = DMADDetector.load(STORAGE, str(tmp_path / "dmad.pt"))
    assert loaded.version == load_checkpoint(data).version and loaded.version.startswith("sha256:")
    assert len(loaded.version) == len("sha256:") + 16 and loaded.name == "dmad" and loaded.image_size == 256
    clip = normal_clip(6)
    expected, got = det.score_clip(clip), loaded.score_clip(clip)
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name
    assert np.array_equal(det.score(clip).scores, loaded.score(clip).scores, equal_nan=True)
    old = io.BytesIO()
    torch.save({"format": "dmad/1", "settings": "{}", "state": {}}, old)  # before the official port: retrain
    with pytest.raises(ValueError, match="dmad/3"):
        load_checkpoint(old.getvalue())
    before_image_port = torch.load(io.BytesIO(data), weights_only=True)  # dmad/2: same video network
    settings = json.loads(before_image_port["settings"])
    before_image_port["format"] = "dmad/2"
    before_image_port["settings"] = json.dumps({**settings, "channels": 32, "vq_weight": 1.0})
    legacy = io.BytesIO()
    torch.save(before_image_port, legacy)
    assert np.array_equal(load_checkpoint(legacy.getvalue()).score(clip).scores, det.score(clip).scores, equal_nan=True)


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
    old_image = torch.load(io.BytesIO(data), weights_only=True)
    old_image["format"] = "dmad/2"  # the simplified image model before the official port
    stale = io.BytesIO()
    torch.save(old_image, stale)
    with pytest.raises(ValueError, match="retrain"):
        load_checkpoint(stale.getvalue(), STORAGE)


def test_skip_connections_do_not_train_the_encoder():
    torch.manual_seed(0)
    model = build_model(VIDEO)
    f4, skip3, skip4, _ = model.encoder(torch.rand(2, 3 * VIDEO.in_frames, 256, 256))
    (skip3.sum() + skip4.sum()).backward()
    assert model.encoder.stage1[0].weight.grad is None and model.encoder.stage4[0].weight.grad is None
    assert model.encoder.skip3[0].weight.grad.abs().sum() > 0  # the skips themselves learn from the decoder
