import pytest
import torch

from pipeline.config import StorageSettings
from pipeline.features.clip import ClipWeightsError, load_clip, normalize
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
