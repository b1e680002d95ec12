import hashlib
import io

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pipeline.config import StorageSettings
from pipeline.detectors.anomalyclip import (
    AnomalyCLIPDetector,
    anomalyclip_losses,
    build_prompts,
    encode_image,
    load_checkpoint,
    save_checkpoint,
    train_anomalyclip,
)
from pipeline.detectors.anomalyclip.settings import AnomalyCLIPSettings
from pipeline.errors import ClipWeightsError
from pipeline.features.clip import load_clip, normalize, tokenizer
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())
SETTINGS = AnomalyCLIPSettings(clip_arch="tiny-vit-test", seed=0, image_size=64, n_ctx=6, deep_prompt_depth=3,
                               deep_prompt_length=2, dpam_start=2, feature_layers=[1, 2, 3, 4], lr=5e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip():
    model, fingerprint = load_clip(SETTINGS.clip_arch, SETTINGS.clip_weights, SETTINGS.seed, STORAGE)
    return model, fingerprint


def labelled_set(n: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth textured images; every other one has a bright square, its mask the square."""
    g = torch.Generator().manual_seed(seed)
    images = F.avg_pool2d(0.3 + 0.2 * torch.rand(n, 3, size, size, generator=g), 5, 1, 2)
    masks = torch.zeros(n, size, size)
    for i in range(1, n, 2):
        y, x = torch.randint(0, size - 20, (2,), generator=g).tolist()
        images[i, :, y:y + 20, x:x + 20] = 1.0
        masks[i, y:y + 20, x:x + 20] = 1.0
    labels = torch.arange(n) % 2
    return images, labels, masks


@pytest.fixture(scope="module")
def trained(clip):
    batch = labelled_set()
    return train_anomalyclip(SETTINGS, clip[0], iter([batch] * 12), steps=12)


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        AnomalyCLIPSettings(unknown=1)
    with pytest.raises(ValidationError):
        AnomalyCLIPSettings(n_ctx=2, deep_prompt_length=4)
    with pytest.raises(ValidationError):
        AnomalyCLIPSettings(feature_layers=[0, 3])
    assert AnomalyCLIPSettings(feature_layers=[4, 2]).feature_layers == [2, 4]


def test_untrained_detector_shapes():
    detector = AnomalyCLIPDetector.untrained(SETTINGS, STORAGE)
    out = detector.score(labelled_set(3)[0])
    assert detector.name == "anomalyclip" and detector.version.startswith("sha256:")
    assert out.scores.shape == (3,) and out.scores.dtype == "float32"
    assert out.maps.shape == (3, 64, 64) and out.maps.dtype == "float32"
    assert ((out.scores >= 0) & (out.scores <= 1)).all() and ((out.maps >= 0) & (out.maps <= 1)).all()
    with pytest.raises(ValueError, match="expected"):
        detector.score(torch.zeros(1, 3, 32, 32))


def test_global_path_is_the_class_token_without_ln_post_and_dpam_changes_patches(clip):
    """As the official code: the global embedding is open_clip's class token projected without ``ln_post`` (the
    DPAM path leaves it alone); patch tokens go through ``ln_post`` and the projection."""
    model = clip[0]
    x = normalize(labelled_set(2)[0])
    layers = len(model.visual.transformer.resblocks)
    with torch.no_grad():
        reference = model.encode_image(x)
        plain_global, plain = encode_image(model, x, [1, layers], dpam_start=layers + 1)
        dpam_global, dpam = encode_image(model, x, [1, layers], dpam_start=2)
        model.visual.output_tokens = True
        try:
            _, tokens = model.visual(x)
            trunk = model.visual.transformer(model.visual.ln_pre(_embed(model.visual, x)))
        finally:
            model.visual.output_tokens = False
    torch.testing.assert_close(plain_global, trunk[:, 0] @ model.visual.proj, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.visual.ln_post(trunk[:, 0]) @ model.visual.proj, reference, atol=1e-5, rtol=0)
    assert (plain_global - reference).abs().max() > 1e-2  # so ln_post really is left out
    torch.testing.assert_close(dpam_global, plain_global, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain[1], tokens @ model.visual.proj, atol=1e-5, rtol=0)
    torch.testing.assert_close(dpam[0], plain[0])  # layer 1 comes before DPAM starts
    assert (dpam[1] - plain[1]).abs().max() > 1e-2


def _embed(visual, x):
    """open_clip's token embedding before ``ln_pre``: patches, class token, positional embedding."""
    x = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + visual.positional_embedding


def test_prompts_without_deep_tokens_equal_encode_text(clip):
    """With the context set to the embedding of the placeholder token, the learnt prompt path is plain CLIP text."""
    model = clip[0]
    settings = SETTINGS.model_copy(update={"deep_prompt_depth": 1})
    prompts = build_prompts(settings, model)
    with torch.no_grad():
        prompts.ctx.copy_(model.token_embedding(prompts.token_ids[:, 1:1 + settings.n_ctx]))
        placeholder = " ".join(["X"] * settings.n_ctx)
        texts = tokenizer(settings.clip_arch)([f"{placeholder} object.", f"{placeholder} damaged object."])
        torch.testing.assert_close(prompts(model), model.encode_text(texts, normalize=True), atol=1e-5, rtol=0)


def test_only_prompt_tensors_get_gradients(clip):
    model = clip[0]
    prompts = build_prompts(SETTINGS, model)
    losses = anomalyclip_losses(model, prompts, SETTINGS, *labelled_set(4))
    losses["total"].backward()
    assert {name for name, _ in prompts.named_parameters()} == {"ctx", "deep"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts.parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_training_reduces_the_loss(clip, trained):
    prompts, curve = trained
    assert len(curve) == 12 and set(curve[0]) == {"step", "total", "image", "focal", "dice"}
    first, last = curve[0]["total"], sum(c["total"] for c in curve[-3:]) / 3
    assert last < first - 0.05, (first, last)
    assert all(not p.requires_grad for p in clip[0].parameters())


def test_trained_prompts_find_unseen_squares(clip, trained):
    detector = AnomalyCLIPDetector(clip[0], trained[0], SETTINGS, clip[1])
    images, labels, masks = labelled_set(8, seed=3)
    out = detector.score(images)
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    inside = [out.maps[i][masks[i].numpy() > 0].mean() for i in range(1, 8, 2)]
    outside = [out.maps[i][masks[i].numpy() == 0].mean() for i in range(1, 8, 2)]
    assert min(inside) > max(outside)


def test_scores_do_not_depend_on_the_batch(clip, trained):
    detector = AnomalyCLIPDetector(clip[0], trained[0], SETTINGS, clip[1])
    images = labelled_set(16, seed=1)[0]
    batch = detector.score(images)
    for i in range(len(images)):  # every image: alone it scores as it does in the batch
        alone = detector.score(images[i:i + 1])
        assert abs(float(alone.scores[0]) - float(batch.scores[i])) < 1e-5, i
        assert abs(alone.maps[0] - batch.maps[i]).max() < 1e-5, i


def test_checkpoint_round_trip(clip, trained, tmp_path):
    model, fingerprint = clip
    data = save_checkpoint(trained[0], SETTINGS, fingerprint)
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert set(payload["state"]) == {"ctx", "deep"} and payload["clip_fingerprint"] == fingerprint
    (tmp_path / "prompts.pt").write_bytes(data)
    loaded = AnomalyCLIPDetector.load(STORAGE, str(tmp_path / "prompts.pt"))
    original = AnomalyCLIPDetector(model, trained[0], SETTINGS, fingerprint)
    images = labelled_set(4, seed=2)[0]
    a, b = original.score(images), loaded.score(images)
    assert (a.scores == b.scores).all() and (a.maps == b.maps).all()
    assert loaded.version == original.version == "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def test_checkpoint_refuses_other_clip_weights(clip, trained):
    data = save_checkpoint(trained[0], SETTINGS, "sha256:0123")
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(data, STORAGE)
    random_trained = save_checkpoint(trained[0], SETTINGS, "random:seed=7")
    assert load_checkpoint(random_trained, STORAGE).name == "anomalyclip"
    with pytest.raises(ClipWeightsError, match="missing.pt"):  # the override is the one loaded
        load_checkpoint(random_trained, STORAGE, clip_weights="/nonexistent/missing.pt")
    with pytest.raises(ValueError, match="not an AnomalyCLIP checkpoint"):
        load_checkpoint(save_checkpoint_like_other_detector(), STORAGE)


def save_checkpoint_like_other_detector() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "dmad/1"}, buffer)
    return buffer.getvalue()
