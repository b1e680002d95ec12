"""open_clip models for the zero/few-shot detectors: loading, and tiny configs for tests.

``weights``: ``none`` (seeded random init), a ``state_dict`` file (local path, ``file://`` or
``s3://``, loaded with ``weights_only=True``), or an open_clip pretrained tag such as
``laion400m_e32`` (downloads where the network allows). The ``tiny-vit-test`` architecture is a
registered 64-px, 4-layer ViT with a 3-layer text tower: the same code path as ViT-L-14-336 or
ViT-B-16-plus-240, small enough for CPU tests; ``tiny-inctrl-test`` is a narrow 240-px ViT with InCTRL's shapes.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import open_clip
import torch
from torch import nn

from pipeline.io.storage import Storage

CLIP_MEAN = open_clip.OPENAI_DATASET_MEAN
CLIP_STD = open_clip.OPENAI_DATASET_STD

TINY_CONFIGS = {
    "tiny-vit-test": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    },
    # ViT-B-16-plus-240's input size, grid and embedding width (what the official InCTRL heads are built for)
    "tiny-inctrl-test": {
        "embed_dim": 640,
        "vision_cfg": {"image_size": 240, "layers": 12, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    },
}
_registered = False


class ClipWeightsError(RuntimeError):
    """CLIP weights could not be loaded; the message names the setting."""


def register_tiny_configs() -> None:
    global _registered
    if _registered:
        return
    folder = Path(tempfile.mkdtemp(prefix="clip-configs-"))
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    _registered = True


def load_clip(arch: str, weights: str, seed: int, storage: Storage) -> tuple[nn.Module, str]:
    """A frozen open_clip model in eval mode, and a fingerprint of its weights."""
    register_tiny_configs()
    if arch not in open_clip.list_models():
        raise ClipWeightsError(f"clip_arch={arch}: unknown open_clip architecture")
    if weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(arch, pretrained=None)
        fingerprint = f"random:seed={seed}"
    elif "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
        try:
            data = storage.read_bytes(weights)
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ClipWeightsError(f"clip_weights={weights}: cannot load a state_dict ({exc})") from exc
        model = open_clip.create_model(arch, pretrained=None)
        try:
            model.load_state_dict(state.get("state_dict", state))
        except RuntimeError as exc:
            raise ClipWeightsError(f"clip_weights={weights}: does not fit {arch} ({exc})") from exc
        fingerprint = "sha256:" + hashlib.sha256(data).hexdigest()
    else:
        try:
            model = open_clip.create_model(arch, pretrained=weights, require_pretrained=True)
        except Exception as exc:  # noqa: BLE001
            raise ClipWeightsError(f"clip_weights={weights}: open_clip could not load it for {arch} ({exc})") from exc
        fingerprint = f"open_clip:{arch}:{weights}"
    return model.eval().requires_grad_(False), fingerprint


def tokenizer(arch: str):
    register_tiny_configs()
    return open_clip.get_tokenizer(arch)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0..1 images to CLIP's input normalisation."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
