import open_clip
import pytest
import torch

from pipeline.config import StorageSettings
from pipeline.errors import ClipWeightsError
from pipeline.features.clip import _force_quick_gelu, load_clip, normalize, uses_quick_gelu
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())


def test_tiny_clip_is_seeded_frozen_and_loads_a_weights_file(tmp_path):
    a, fp_a = load_clip("tiny-vit-test", "none", 0, STORAGE)
    b, _ = load_clip("tiny-vit-test", "none", 0, STORAGE)
    c, _ = load_clip("tiny-vit-test", "none", 1, STORAGE)
    x = normalize(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))
        assert not torch.equal(a.encode_image(x), c.encode_image(x))
    assert fp_a == "random:seed=0" and not any(p.requires_grad for p in a.parameters())
    path = tmp_path / "clip.pt"
    torch.save(c.state_dict(), path)
    d, fp_d = load_clip("tiny-vit-test", str(path), 0, STORAGE)
    with torch.no_grad():
        assert torch.equal(d.encode_image(x), c.encode_image(x))
    assert fp_d.startswith("sha256:")


def test_clip_errors_name_the_setting(tmp_path):
    with pytest.raises(ClipWeightsError, match="clip_arch=no-such-vit"):
        load_clip("no-such-vit", "none", 0, STORAGE)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsError, match="clip_weights=.*bad.pt"):
        load_clip("tiny-vit-test", str(bad), 0, STORAGE)


def test_openai_weights_get_quick_gelu_whatever_the_arch_says(tmp_path):
    """A state_dict marked as OpenAI's (by our converter, or by the leftovers of OpenAI's TorchScript file) is built
    with QuickGELU; an unmarked one keeps the architecture's GELU."""
    gelu, _ = load_clip("tiny-vit-test", "none", 0, STORAGE)
    state = gelu.state_dict()
    files = {"plain": state, "converted": {"state_dict": state, "quick_gelu": True},
             "torchscript-dump": {**state, "input_resolution": torch.tensor(64), "context_length": torch.tensor(77),
                                  "vocab_size": torch.tensor(49408)}}
    models = {}
    for name, payload in files.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        models[name] = load_clip("tiny-vit-test", str(tmp_path / f"{name}.pt"), 0, STORAGE)[0]
    quick = open_clip.create_model("tiny-vit-test", force_quick_gelu=True)
    quick.load_state_dict(state)
    assert [uses_quick_gelu(m) for m in models.values()] == [False, True, True]
    x = normalize(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(models["plain"].encode_image(x), gelu.encode_image(x))
        for name in ("converted", "torchscript-dump"):
            torch.testing.assert_close(models[name].encode_image(x), quick.eval().encode_image(x), atol=0, rtol=0)
        assert (models["converted"].encode_image(x) - gelu.encode_image(x)).abs().max() > 1e-3


def test_quick_gelu_follows_pretrained_tags_and_mismatches_are_refused(tmp_path):
    openai = open_clip.get_pretrained_cfg("ViT-L-14-336", "openai")["quick_gelu"]
    assert _force_quick_gelu("ViT-L-14-336", "openai", openai) is True
    assert _force_quick_gelu("ViT-L-14-336-quickgelu", "openai", openai) is False  # already QuickGELU
    assert _force_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", False) is False
    gelu_file = tmp_path / "gelu.pt"
    torch.save({"state_dict": {}, "quick_gelu": False}, gelu_file)
    with pytest.raises(ClipWeightsError, match="clip_arch=ViT-B-32-quickgelu uses QuickGELU.*use ViT-B-32"):
        load_clip("ViT-B-32-quickgelu", str(gelu_file), 0, STORAGE)
