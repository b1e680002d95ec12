"""Our InCTRL against outputs of the official code (tests/data/official/inctrl, made by its make_reference.py).

The official model's saved state_dict goes through our importer and the official few-shot prompt format through
our prompt-file reader; every intermediate the official forward computes must agree to 1e-4 (reached: ~1e-6).
"""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import StorageSettings
from pipeline.detectors.inctrl import encode_images, load_checkpoint, read_prompt_file
from pipeline.detectors.inctrl.importer import convert
from pipeline.features.clip import CLIP_MEAN, CLIP_STD
from pipeline.io.storage import Storage
from tests.helpers import OFFICIAL

DATA = OFFICIAL / "inctrl"
STORAGE = Storage(StorageSettings())
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(name: str) -> torch.Tensor:
    array = np.asarray(Image.open(DATA / "inputs" / f"{name}.png"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inctrl-official")
    source = folder / "checkpoint.pyth"
    source.write_bytes(gzip.decompress((DATA / "checkpoint.pyth.gz").read_bytes()))
    convert(source, str(folder / "inctrl.pt"), STORAGE)
    return folder


def detector_for(folder: Path, category: str):
    """Our detector from the imported checkpoint and a few-shot file in the released format: the list of
    CLIP-normalised prompt tensors the official test loads from ``{category}.pt``."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    prompt_file = folder / f"{category}.pt"
    torch.save([(png(f"{category}_prompt{j}") - mean) / std for j in range(2)], prompt_file)
    prompts = read_prompt_file(prompt_file.read_bytes(), str(prompt_file), 240, None)
    assert prompts.object_name == category
    data = (folder / "inctrl.pt").read_bytes()
    return load_checkpoint(data, STORAGE, prompts.images, shots=len(prompts.images), object_name=prompts.object_name)


def compare(ours: torch.Tensor, official: torch.Tensor, what: str) -> float:
    assert ours.shape == official.shape, what
    diff = float((ours.double() - official.double()).abs().max())
    assert diff <= TOLERANCE, f"{what}: max abs diff {diff:.2e}"
    return diff


@pytest.mark.parametrize("category", ["candle", "bird"])  # bird: the official CIFAR-10 text prompts
def test_forward_matches_the_official_code(imported, reference, category):
    detector = detector_for(imported, category)
    queries = torch.stack([png(f"{category}_query{i}") for i in range(2)])
    out = detector.forward(queries)  # both queries in one batch: the official runs them one at a time
    features = encode_images(detector.clip_model, queries, detector.settings.patch_layers)
    heads = detector.heads
    diffs = []
    for i in range(2):
        ref = {name.rsplit("/", 1)[1]: value for name, value in reference.items()
               if name.startswith(f"{category}/query{i}/")}
        prompt_tokens = ref["prompt_tokens"].flatten(1, 2)  # [layers, k*patches, width], prompts side by side
        with torch.no_grad():
            adapted = heads.adapter(features.global_[i])
            residual = adapted - heads.adapter(detector.prompts.global_[0]).mean(0)
        diffs += [
            compare(features.global_[i], ref["query_global"], "query CLS embedding"),
            compare(features.patches[i], ref["query_tokens"], "query patch tokens per layer"),
            compare(detector.prompts.global_[0], ref["prompt_global"], "prompt CLS embeddings"),
            compare(detector.prompts.patches[0], prompt_tokens, "prompt patch tokens per layer"),
            compare(adapted, ref["adapter_query"], "adapter"),
            compare(residual, -ref["residual"], "image residual (opposite sign by design)"),
            compare(out.patch_map[i], ref["patch_map"], "patch residual map"),
            compare(out.text[i], ref["text"], "text prior"),
            compare(out.image[i], ref["image"], "image residual score"),
            compare(out.patch_map[i] + out.text[i] + out.image[i], ref["holistic_input"], "holistic head input"),
            compare(out.holistic[i], ref["holistic"], "holistic score"),
            compare(out.final[i], ref["final"], "final score"),
        ]
    scores = detector.score(queries).scores
    diffs.append(compare(torch.from_numpy(scores), torch.stack([reference[f"{category}/query{i}/final"]
                                                               for i in range(2)]), "detector scores"))
    print(f"{category}: max abs diff {max(diffs):.2e}")


def test_the_reference_is_sensitive_to_what_the_official_code_does(imported, reference):
    """The comparison fails when our pipeline departs from the official one: another class name in the text
    prompts, or a residual left with the official sign (the importer's negation undone)."""
    detector = detector_for(imported, "candle")
    query = png("candle_query1")[None]
    final = reference["candle/query1/final"]
    assert abs(float(detector.forward(query).final[0]) - float(final)) <= TOLERANCE
    data = (imported / "inctrl.pt").read_bytes()
    prompts = torch.stack([png(f"candle_prompt{j}") for j in range(2)])
    renamed = load_checkpoint(data, STORAGE, prompts, shots=2, object_name="object")
    assert abs(float(renamed.forward(query).text[0]) - float(reference["candle/query1/text"])) > TOLERANCE
    with torch.no_grad():
        detector.heads.image_head[0].weight.neg_()
    assert abs(float(detector.forward(query).image[0]) - float(reference["candle/query1/image"])) > TOLERANCE

