"""Our AnomalyCLIP against outputs of the official code (tests/data/official/anomalyclip/README.md says how they
were made): the same tiny OpenAI-layout CLIP, the same released-format prompt learner, the same images.

``fixed``: upstream code as it is now (features_list [2, 3, 5, 6], DPAM in layers 3..6 of 6, 48 px from a 32 px
CLIP, so positional embeddings are resized). ``released``: the code the authors' checkpoints were trained with
(four "feature layers", all of them in fact the last one), which ours reproduces with ``feature_layers=[6]`` (the
tiny CLIP's last layer; 24 for ViT-L). Our anomaly map is the mean of the layer maps where the official one is the
sum, so the official map is compared with ours times the number of official layers. Tolerance 1e-4; reached (both
cases, CPU float32): pixel maps 5.7e-6, layer maps 2.0e-6, text features 3.1e-7, image features 1.2e-7, image
scores 0.
"""


import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline.config import StorageSettings
from pipeline.detectors.anomalyclip import AnomalyCLIPDetector, build_prompts, encode_image, similarity_maps
from pipeline.detectors.anomalyclip.importer import prompt_tensors, read_prompt_learner
from pipeline.detectors.anomalyclip.settings import AnomalyCLIPSettings
from pipeline.features.clip import load_clip, normalize, uses_quick_gelu
from pipeline.features.preprocess import gaussian_blur
from pipeline.io.storage import Storage
from tests.helpers import OFFICIAL
from tests.helpers.official import openai_state_file

DATA = OFFICIAL / "anomalyclip"
STORAGE = Storage(StorageSettings())
TOLERANCE = 1e-4
CASES = {"fixed": {"feature_layers": [2, 3, 5, 6]}, "released": {"feature_layers": [6]}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    weights = str(openai_state_file(tmp_path_factory.mktemp("clip")))
    model, fingerprint = load_clip("tiny-vit-openai-test", weights, 0, STORAGE)
    return model, fingerprint, weights


def detector_for(case: str, clip) -> tuple[AnomalyCLIPDetector, dict]:
    reference = torch.load(DATA / f"reference_{case}.pt", weights_only=True)
    official = reference["settings"]
    model, fingerprint, weights = clip
    state, sizes = prompt_tensors(read_prompt_learner((DATA / "prompt_learner.pth").read_bytes()))
    dpam_start = len(model.visual.transformer.resblocks) - official["DPAM_layer"] + 2
    settings = AnomalyCLIPSettings(clip_arch="tiny-vit-openai-test", clip_weights=weights, **sizes,
                                   dpam_start=dpam_start, image_size=official["image_size"], sigma=official["sigma"],
                                   **CASES[case])
    prompts = build_prompts(settings, model)
    prompts.load_state_dict(state)
    return AnomalyCLIPDetector(model, prompts, settings, fingerprint), reference


def max_diff(ours: torch.Tensor, official: torch.Tensor) -> float:
    assert ours.shape == official.shape, (ours.shape, official.shape)
    return float((ours.detach().double() - official.detach().double()).abs().max())


def test_the_openai_layout_state_dict_gets_quick_gelu(clip):
    assert uses_quick_gelu(clip[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_equal_the_official_code(case, clip):
    detector, reference = detector_for(case, clip)
    images = torch.load(DATA / "inputs.pt", weights_only=True)["images"]
    s = detector.settings
    with torch.no_grad():
        pooled, patches = encode_image(detector.clip_model, normalize(images), s.feature_layers, s.dpam_start)
        layer_maps = torch.stack(similarity_maps(patches, detector.text, s.temperature, s.image_size))
    out = detector.score(images)
    official_layers = len(reference["settings"]["features_list"])
    ours_by_official_layer = layer_maps if case == "fixed" else layer_maps.expand(official_layers, -1, -1, -1, -1)
    diffs = {
        "text features": max_diff(detector.text, reference["text_features"]),
        "image features": max_diff(torch.nn.functional.normalize(pooled, dim=-1), reference["image_features"]),
        "layer maps": max_diff(ours_by_official_layer, reference["similarity_maps"]),
        "image scores": max_diff(torch.from_numpy(out.scores), reference["image_scores"]),
        "pixel maps": max_diff(torch.from_numpy(out.maps) * official_layers, reference["pixel_maps"]),
    }
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_released_layers_are_all_the_last_one_and_differ_from_the_fixed_code():
    """What makes ``feature_layers=[24]`` necessary for the released prompts, seen in the official outputs."""
    released = torch.load(DATA / "reference_released.pt", weights_only=True)["similarity_maps"]
    fixed = torch.load(DATA / "reference_fixed.pt", weights_only=True)["similarity_maps"]
    assert all(torch.equal(layer, released[-1]) for layer in released)
    assert torch.equal(fixed[-1], released[-1]) and max_diff(fixed[0], fixed[-1]) > 0.1


@pytest.mark.parametrize(("shape", "sigma"), [((2, 48, 48), 4.0), ((1, 5, 7), 4.0), ((1, 30, 41), 1.5)])
def test_map_smoothing_equals_scipy_gaussian_filter(shape, sigma):
    """The official maps go through ``scipy.ndimage.gaussian_filter`` (mode ``reflect``), also on maps smaller
    than the kernel radius."""
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    official = np.stack([gaussian_filter(m, sigma=sigma) for m in maps.numpy()])
    assert np.abs(gaussian_blur(maps, sigma).numpy() - official).max() < 1e-6
