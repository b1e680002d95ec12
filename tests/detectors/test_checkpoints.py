"""A score run on a checkpoint names the frozen pretrained parts it would initialise at random."""

import json

import pytest

from pipeline.config import ScoreConfig, StorageSettings
from pipeline.detectors.checkpoints import pack, resolve_checkpoint
from pipeline.io.storage import Storage


def resolve(tmp_path, detector: str, settings: dict, **score):
    path = tmp_path / "model.pt"
    path.write_bytes(pack(f"{detector}/test", json.dumps(settings), {}))
    cfg = ScoreConfig.model_validate({"input": "/a", "output": "/b", "detector": detector, "model": str(path),
                                      "prompts": "/p"} | score)
    return resolve_checkpoint(Storage(StorageSettings()), cfg).random_weights


@pytest.mark.parametrize(("detector", "settings", "score", "expected"), [
    ("dmad", {"variant": "image", "backbone": "wide_resnet50_2", "weights": "none"}, {},
     ("DMAD's frozen wide_resnet50_2 image encoder (dmad.weights=none)",)),
    ("dmad", {"variant": "image", "backbone": "wide_resnet50_2", "weights": "torchvision"}, {}, ()),
    ("dmad", {"variant": "video", "weights": "none"}, {}, ()),  # the video variant trains every weight
    ("anomalyclip", {"clip_arch": "ViT-L-14-336", "clip_weights": "none"}, {},
     ("CLIP ViT-L-14-336 (clip_weights=none)",)),
    ("anomalyclip", {"clip_arch": "ViT-L-14-336", "clip_weights": "none"}, {"clip_weights": "/w/clip.pt"}, ()),
    ("inctrl", {"clip_arch": "tiny", "clip_weights": "/w/clip.pt"}, {"clip_weights": "none"},
     ("CLIP tiny (clip_weights=none)",)),
])
def test_random_weights_of_a_checkpoint(tmp_path, detector, settings, score, expected):
    assert resolve(tmp_path, detector, settings, **score) == expected


def test_a_file_that_is_no_checkpoint_is_left_to_the_loader(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    cfg = ScoreConfig.model_validate({"input": "/a", "output": "/b", "detector": "dmad",
                                      "model": str(tmp_path / "model.pt")})
    assert resolve_checkpoint(Storage(StorageSettings()), cfg).random_weights == ()
