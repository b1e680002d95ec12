"""Backbone weights named by torchvision's enum: which weights a setting selects, and the error
when they cannot be fetched (nothing downloads here: the hub cache is filled, or the download is
made to fail)."""

from __future__ import annotations

import os
import urllib.error
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from pipeline.config import StorageSettings
from pipeline.errors import WeightsError
from pipeline.features.backbones import build_classifier, torchvision_weights
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import upgrade_legacy

STORAGE = Storage(StorageSettings())


@pytest.mark.parametrize(("weights", "member"), [
    ("torchvision", "IMAGENET1K_V1"),  # what the official PatchCore and DMAD code load (pretrained=True)
    ("torchvision:IMAGENET1K_V1", "IMAGENET1K_V1"),
    ("torchvision:IMAGENET1K_V2", "IMAGENET1K_V2"),
    ("torchvision:DEFAULT", "IMAGENET1K_V2"),  # torchvision's DEFAULT is V2 for wide_resnet50_2
])
def test_the_setting_names_the_torchvision_enum_member(weights, member):
    assert torchvision_weights("wide_resnet50_2", weights).name == member


def test_an_unknown_member_is_refused_with_the_choices():
    with pytest.raises(WeightsError, match=r"patchcore.weights=torchvision:IMAGENET1K_V2: torchvision has no "
                                           r"IMAGENET1K_V2 weights for resnet18; choose one of torchvision:"):
        torchvision_weights("resnet18", "torchvision:IMAGENET1K_V2")


@pytest.fixture()
def offline(monkeypatch, tmp_path) -> list[str]:
    """An empty hub cache and a network that refuses: records the URLs torch.hub tried to fetch."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    tried: list[str] = []

    def refuse(url: str, *_args, **_kwargs) -> None:
        tried.append(url)
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tried


@pytest.mark.parametrize(("weights", "member"), [("torchvision", "IMAGENET1K_V1"),
                                                 ("torchvision:IMAGENET1K_V2", "IMAGENET1K_V2")])
def test_a_missing_download_fails_in_one_line_naming_the_file_to_provide(offline, tmp_path, weights, member):
    url = torchvision.models.get_model_weights("resnet50")[member].url
    with pytest.raises(WeightsError) as err:
        build_classifier("resnet50", weights, 0, STORAGE)
    assert offline == [url]
    cached = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
    assert str(err.value) == (f"patchcore.weights={weights}: cannot load torchvision's {member} weights for resnet50 "
                              f"(URLError: <urlopen error [Errno 101] Network is unreachable>); without network "
                              f"access, copy {url} to {cached} or give the weights as a state_dict file")


def test_cached_torchvision_weights_load_with_their_member_as_fingerprint(tmp_path, monkeypatch):
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / os.path.basename(urlparse(url).path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, fingerprint = build_classifier("resnet18", "torchvision", 0, STORAGE)
    assert fingerprint == "torchvision:resnet18:IMAGENET1K_V1"
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_a_bank_built_with_plain_torchvision_before_keeps_torchvisions_default():
    """Before the enum names, ``torchvision`` loaded DEFAULT (V2 for resnet50): such a bank keeps V2."""
    old = {"backbone": "resnet50", "weights": "torchvision", "weights_fingerprint": "torchvision:resnet50:DEFAULT"}
    new = upgrade_legacy(old)
    assert new["weights"] == "torchvision:DEFAULT"
    assert new["weights_fingerprint"] == "torchvision:resnet50:IMAGENET1K_V2"
    assert new["patch_distance"] == "euclidean" and new["anomaly_scorer_num_nn"] == 1 and new["patchsize"] == 3
    current = {"backbone": "resnet50", "weights": "torchvision",
               "weights_fingerprint": "torchvision:resnet50:IMAGENET1K_V1", "patch_distance": "squared"}
    kept = upgrade_legacy(current)
    assert kept["weights"] == "torchvision" and kept["weights_fingerprint"].endswith(":IMAGENET1K_V1")
    assert kept["patch_distance"] == "squared"
