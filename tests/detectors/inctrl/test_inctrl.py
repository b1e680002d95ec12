import io
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.config import StorageSettings
from pipeline.detectors.inctrl import (
    InCTRLDetector,
    build_heads,
    choose_prompts,
    encode_images,
    group_prompts,
    inctrl_forward,
    load_checkpoint,
    save_checkpoint,
    text_features,
    train_inctrl,
)
from pipeline.detectors.inctrl.settings import InCTRLSettings
from pipeline.features.clip import load_clip
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())
SETTINGS = InCTRLSettings(clip_arch="tiny-vit-test", image_size=64, shots=2, patch_layers=[2, 3, 4], lr=3e-3,
                          templates=["a photo of a {}.", "a close-up photo of the {}."])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textures(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, 64, 64, generator=g)
    return torch.nn.functional.avg_pool2d(0.3 + 0.4 * noise, 5, 1, 2)


def bright_squares(n: int, seed: int) -> torch.Tensor:
    images = textures(n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for image in images:
        y, x = torch.randint(0, 48, (2,), generator=g).tolist()
        image[:, y:y + 16, x:x + 16] = 1.0
    return images


@pytest.fixture(scope="module")
def clip():
    return load_clip(SETTINGS.clip_arch, SETTINGS.clip_weights, SETTINGS.seed, STORAGE)


@pytest.fixture(scope="module")
def trained(clip):
    heads, curve = train_inctrl(SETTINGS, clip[0], textures(12, 0), bright_squares(8, 1), steps=40, batch_size=8)
    return heads, curve


@pytest.fixture(scope="module")
def detector(clip, trained):
    return InCTRLDetector(clip[0], trained[0], SETTINGS, textures(2, 100))


def test_settings_validation():
    assert InCTRLSettings(patch_layers=[9, 3, 6]).patch_layers == [3, 6, 9]
    for bad in ({"patch_layers": [3, 3]}, {"patch_layers": [0]}, {"templates": ["no slot"]}, {"shots": 0},
                {"unknown": 1}):
        with pytest.raises(ValidationError):
            InCTRLSettings(**bad)


def test_shapes(detector):
    images = torch.cat([textures(2, 5), bright_squares(1, 6)])
    batch = detector.score(images)
    assert detector.name == "inctrl" and detector.version.startswith("sha256:") and detector.image_size == 64
    assert batch.scores.shape == (3,) and batch.scores.dtype == np.float32
    assert batch.maps.shape == (3, 64, 64) and batch.maps.dtype == np.float32
    out = detector.forward(images)
    assert out.patch_map.shape == (3, 64) and out.image.shape == out.holistic.shape == out.text.shape == (3,)
    with pytest.raises(ValueError, match="expected"):
        detector.score(torch.rand(1, 3, 32, 32))


def test_clip_frozen_and_only_heads_get_gradients(clip):
    model = clip[0]
    before = {name: p.clone() for name, p in model.state_dict().items()}
    heads = build_heads(SETTINGS, model).train()
    query = encode_images(model, bright_squares(2, 2), SETTINGS.patch_layers)
    prompts = group_prompts(encode_images(model, textures(4, 3), SETTINGS.patch_layers), SETTINGS.shots)
    out = inctrl_forward(heads, query, prompts, text_features(model, SETTINGS), SETTINGS)
    (out.final.sum() + out.image.sum()).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in heads.parameters())
    train_inctrl(SETTINGS, model, textures(4, 0), bright_squares(2, 1), steps=1, batch_size=2)
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    model.visual.proj.requires_grad_(True)
    try:
        with pytest.raises(ValueError, match="frozen"):
            train_inctrl(SETTINGS, model, textures(4, 0), bright_squares(2, 1), steps=1, batch_size=2)
    finally:
        model.visual.proj.requires_grad_(False)


def test_choose_prompts_is_deterministic():
    uris = [f"s3://bucket/good/{i:03d}.png" for i in range(20)]
    chosen = choose_prompts(uris, 4, seed=7)
    shuffled = uris[:]
    random.Random(1).shuffle(shuffled)
    assert chosen == choose_prompts(shuffled, 4, seed=7)
    assert len(set(chosen)) == 4 and set(chosen) <= set(uris)
    assert chosen != choose_prompts(uris, 4, seed=8)
    with pytest.raises(ValueError, match="need 4"):
        choose_prompts(uris[:3], 4, seed=7)


def test_patch_residual_is_zero_for_a_prompt_image(detector):
    prompts = textures(2, 100)
    assert torch.equal(detector.forward(prompts).patch_map, torch.zeros(2, 64))
    assert detector.forward(textures(1, 101)).patch_map.min() > 0


def test_training_reduces_the_loss(trained, detector):
    curve = trained[1]
    assert np.mean(curve[-8:]) < 0.8 * np.mean(curve[:8])
    normal = detector.score(textures(6, 200)).scores
    anomalous = detector.score(bright_squares(6, 300)).scores
    assert anomalous.mean() > normal.mean()


def test_scores_do_not_depend_on_the_batch(detector):
    images = torch.cat([textures(8, 400), bright_squares(8, 500)])
    together = detector.score(images)
    for i in range(16):
        alone = detector.score(images[i:i + 1])
        np.testing.assert_allclose(alone.scores, together.scores[i:i + 1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(alone.maps, together.maps[i:i + 1], rtol=0, atol=1e-6)


def test_per_query_prompts_stay_with_their_query(clip, trained):
    """The training path: each query of a batch is scored against its own prompt set, as if alone."""
    model, heads = clip[0], trained[0]
    text = text_features(model, SETTINGS)
    queries, prompt_images = bright_squares(3, 600), textures(6, 700)
    with torch.no_grad():
        query = encode_images(model, queries, SETTINGS.patch_layers)
        prompts = group_prompts(encode_images(model, prompt_images, SETTINGS.patch_layers), SETTINGS.shots)
        together = inctrl_forward(heads, query, prompts, text, SETTINGS).final
        for i in range(3):
            one = encode_images(model, queries[i:i + 1], SETTINGS.patch_layers)
            own = group_prompts(encode_images(model, prompt_images[2 * i:2 * i + 2], SETTINGS.patch_layers), 2)
            alone = inctrl_forward(heads, one, own, text, SETTINGS).final
            torch.testing.assert_close(alone, together[i:i + 1], rtol=0, atol=1e-6)


def test_checkpoint_round_trip(clip, trained, detector):
    data = save_checkpoint(trained[0], SETTINGS, clip[1])
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert set(payload) == {"format", "settings", "state", "clip_fingerprint"}
    assert not any(name.startswith(("visual", "transformer")) for name in payload["state"])
    loaded = load_checkpoint(data, STORAGE, textures(2, 100))
    images = torch.cat([textures(2, 800), bright_squares(2, 900)])
    expected = detector.score(images)
    got = loaded.score(images)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.maps, expected.maps)
    assert loaded.version.startswith("sha256:") and len(loaded.version) == len("sha256:") + 16
    assert load_checkpoint(data, STORAGE, textures(4, 100), shots=4).score(images).scores.shape == (4,)
    with pytest.raises(ValueError, match="prompts"):
        load_checkpoint(data, STORAGE, textures(3, 100))


def test_checkpoint_refuses_other_clip_weights(trained):
    data = save_checkpoint(trained[0], SETTINGS, "open_clip:tiny-vit-test:some_tag")
    with pytest.raises(ValueError, match="trained with open_clip:tiny-vit-test:some_tag"):
        load_checkpoint(data, STORAGE, textures(2, 100))
    random_init = save_checkpoint(trained[0], SETTINGS, "random:seed=5")
    assert load_checkpoint(random_init, STORAGE, textures(2, 100)).score(textures(1, 1)).scores.shape == (1,)


@pytest.mark.parametrize("shots", [2, 4, 8])
def test_shots(clip, shots):
    settings = SETTINGS.model_copy(update={"shots": shots})
    heads, curve = train_inctrl(settings, clip[0], textures(shots + 2, 0), bright_squares(2, 1), steps=2,
                                batch_size=4)
    assert len(curve) == 2 and np.isfinite(curve).all()
    batch = InCTRLDetector(clip[0], heads, settings, textures(shots, 10)).score(bright_squares(2, 11))
    assert batch.scores.shape == (2,) and np.isfinite(batch.scores).all()
