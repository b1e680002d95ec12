"""``python -m jobs.convert_openai_clip`` on a tiny CLIP saved in the container of OpenAI's released files: a
TorchScript archive whose state_dict also holds ``input_resolution``, ``context_length`` and ``vocab_size``."""

import subprocess
import sys

import open_clip
import pytest
import torch

from pipeline.config import StorageSettings
from pipeline.features.clip import load_clip, normalize, tokenizer, uses_quick_gelu
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())
ARCH = "tiny-vit-openai-test"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def torchscript_clip(tmp_path_factory):
    """The file, and the tiny QuickGELU CLIP it was made from."""
    load_clip(ARCH, "none", 0, STORAGE)  # registers the tiny configs
    torch.manual_seed(5)
    model = open_clip.create_model(ARCH, force_quick_gelu=True).eval()
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        model.__dict__.pop(name, None)  # open_clip keeps some as ints; OpenAI's archives hold tensors
        model.register_buffer(name, torch.tensor(value))
    traced = torch.jit.trace_module(model, {"encode_text": tokenizer(ARCH)(["a photo"])}, check_trace=False)
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny-openai.pt"
    torch.jit.save(traced, str(path))
    return path, model


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.convert_openai_clip", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_converted_file_loads_without_torchscript_and_equals_the_archive(torchscript_clip, tmp_path):
    source, original = torchscript_clip
    out = tmp_path / "clip.state_dict.pt"
    done = convert("--source", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    payload = torch.load(out, weights_only=True)  # plain tensors and strings
    assert payload["quick_gelu"] is True and len(payload["source_sha256"]) == 64
    assert not {"input_resolution", "context_length", "vocab_size"} & set(payload["state_dict"])

    model, _ = load_clip(ARCH, str(out), 0, STORAGE)
    assert uses_quick_gelu(model)
    archive = torch.jit.load(str(source))
    text = tokenizer(ARCH)(["a damaged object", "an object"])
    images = normalize(torch.rand(2, 3, 32, 32))
    weights = archive.state_dict()
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    with torch.no_grad():  # the TorchScript graph computes in another order: equal up to float rounding
        torch.testing.assert_close(model.encode_text(text), archive.encode_text(text), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_image(images), original.encode_image(images), atol=1e-5, rtol=0)


def test_a_file_that_is_not_torchscript_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"visual.proj": torch.zeros(2, 2)}, plain)
    done = convert("--source", str(plain), "--out", str(tmp_path / "out.pt"))
    assert done.returncode == 2 and done.stderr.startswith("error: source=") and "not a TorchScript archive" in \
        done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()
