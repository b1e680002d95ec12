"""Our PatchCore against outputs of the official code (amazon-science/patchcore-inspection).

``tests/data/official/patchcore/`` holds, per case, the folder the official ``save_to_path`` wrote
and the official features, patch scores, image scores and maps for three test images; see its
README. Here the folder goes through our importer into a bank, the seeded backbone weights sit in
torch's hub cache under the file name torchvision's ``IMAGENET1K_V1`` uses (the imported bank names
those weights), and ``PatchCoreDetector.load`` scores the same images through the real path,
including the BatchNorm shift the official code applies. Tolerance: 1e-4 absolute; reached: at most
7.2e-6 (backbone taps), 7.2e-7 (features), 1.7e-6 (patch scores), 7.2e-7 (image scores), 1.2e-6 (maps).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torchvision

from pipeline.config import StorageSettings
from pipeline.detectors.patchcore import PatchCoreDetector
from pipeline.detectors.patchcore.importer import convert
from pipeline.io.storage import Storage
from tests.helpers import OFFICIAL

DATA = OFFICIAL / "patchcore"
_spec = importlib.util.spec_from_file_location("patchcore_make_reference", DATA / "make_reference.py")
make_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference)
CASES = make_reference.CASES

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hub_with_seeded_weights(tmp_path_factory) -> pathlib.Path:
    """$TORCH_HOME whose hub cache holds the reference's seeded resnet18 as torchvision's IMAGENET1K_V1 file."""
    home = tmp_path_factory.mktemp("torch-home")
    backbone = make_reference.seeded_backbone()
    reference = np.load(DATA / f"{next(iter(CASES))}.npz")
    assert make_reference.weights_sha256(backbone) == str(reference["weights_sha256"]), "seeded init drifted"
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(backbone.state_dict(), home / "hub" / "checkpoints" / os.path.basename(urlparse(url).path))
    return home


def close(ours: np.ndarray, official: np.ndarray) -> float:
    assert ours.shape == official.shape
    return float(np.abs(ours - official).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_official_bank_scores_as_the_official_code(case, hub_with_seeded_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(hub_with_seeded_weights))
    ref = np.load(DATA / f"{case}.npz")
    storage = Storage(StorageSettings())
    applied = convert(DATA / case, str(tmp_path / "bank"), storage)
    side = CASES[case][0]
    assert applied["bn_shift_input"] == [side, side] and applied["weights"] == "torchvision:IMAGENET1K_V1"
    detector = PatchCoreDetector.load(storage, str(tmp_path / "bank"), engine="faiss")
    images = torch.from_numpy(ref["test_images"])

    with torch.inference_mode():
        taps = detector.embedder.backbone((images - detector.embedder.mean) / detector.embedder.std)
    assert close(taps["layer2"].numpy(), ref["taps_layer2"]) <= TOLERANCE
    assert close(taps["layer3"].numpy(), ref["taps_layer3"]) <= TOLERANCE
    feats, _ = detector.embedder(images)
    assert close(feats.reshape(-1, feats.shape[-1]).numpy(), ref["features"]) <= TOLERANCE
    patch_scores, _, _ = detector.patch_scores(images)
    assert close(patch_scores.reshape(-1).numpy(), ref["patch_scores"]) <= TOLERANCE
    for engine in ("faiss", "torch"):
        result = PatchCoreDetector.load(storage, str(tmp_path / "bank"), engine=engine).score(images)
        assert close(result.scores, ref["image_scores"]) <= TOLERANCE, engine
        assert close(result.maps, ref["maps"]) <= TOLERANCE, engine


def test_the_clean_backbone_would_not_match(hub_with_seeded_weights, tmp_path, monkeypatch):
    """The BatchNorm shift matters: without it the same bank gives other features than the official code."""
    monkeypatch.setenv("TORCH_HOME", str(hub_with_seeded_weights))
    case = "ps3_nn1"
    ref = np.load(DATA / f"{case}.npz")
    storage = Storage(StorageSettings())
    convert(DATA / case, str(tmp_path / "bank"), storage)
    manifest = tmp_path / "bank" / "v0001" / "bank.json"
    manifest.write_text(manifest.read_text().replace('"bn_shift_input": [\n    64,\n    64\n  ]',
                                                     '"bn_shift_input": null'))
    detector = PatchCoreDetector.load(storage, str(tmp_path / "bank"))
    assert detector.meta.bn_shift_input is None
    feats, _ = detector.embedder(torch.from_numpy(ref["test_images"]))
    assert close(feats.reshape(-1, feats.shape[-1]).numpy(), ref["features"]) > 100 * TOLERANCE
