"""open_clip models for the zero/few-shot detectors: loading, and tiny configs for tests.

``weights``: ``none`` (seeded random init), a ``state_dict`` file (local path, ``file://`` or
``s3://``, loaded with ``weights_only=True``), or an open_clip pretrained tag such as
``laion400m_e32`` (downloads where the network allows). The ``tiny-vit-test`` architecture is a
registered 64-px, 4-layer ViT with a 3-layer text tower: the same code path as ViT-L-14-336 or
ViT-B-16-plus-240, small enough for CPU tests; ``tiny-inctrl-test`` is a narrow 240-px ViT with InCTRL's shapes;
``tiny-vit-openai-test`` has OpenAI's head width (64), so the official AnomalyCLIP/CLIP model builders accept its
state_dict too (reference tests).

Activation: OpenAI's CLIP (and e.g. LAION's ``laion400m_*`` ViT-B-32 weights) were trained with QuickGELU;
open_clip only warns when such weights meet a GELU config. Here the activation follows the weights
whenever they say which they need: a pretrained tag's open_clip config (``quick_gelu``), a state_dict file
written by :mod:`pipeline.features.openai_clip` (``quick_gelu: true``) or holding the leftovers of
OpenAI's TorchScript file (``input_resolution``, ``context_length``, ``vocab_size``). Such weights get
QuickGELU whatever ``clip_arch`` says (``ViT-L-14-336`` and ``ViT-L-14-336-quickgelu`` then give the same
model); a ``-quickgelu`` architecture with weights known to be GELU is refused. A state_dict that says
nothing keeps the architecture's activation.
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

from pipeline.errors import ClipWeightsError
from pipeline.io.storage import Storage

CLIP_MEAN = open_clip.OPENAI_DATASET_MEAN
CLIP_STD = open_clip.OPENAI_DATASET_STD

TINY_CONFIGS = {
    "tiny-vit-test": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    },
    "tiny-vit-openai-test": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 6, "width": 64, "head_width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3},
    },
    # ViT-B-16-plus-240's input size, grid and embedding width (what the official InCTRL heads are built for)
    "tiny-inctrl-test": {
        "embed_dim": 640,
        "vision_cfg": {"image_size": 240, "layers": 12, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    },
}
# Entries of the state_dict of OpenAI's TorchScript CLIP files that are no weights; they mark OpenAI's origin.
OPENAI_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_registered = False


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
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ClipWeightsError(f"clip_weights={weights}: cannot load a state_dict ({exc})") from exc
        state, quick_gelu = _state_and_activation(payload, weights)
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=_force_quick_gelu(arch, weights,
                                                                                                 quick_gelu))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ClipWeightsError(f"clip_weights={weights}: does not fit {arch} ({exc})") from exc
        fingerprint = "sha256:" + hashlib.sha256(data).hexdigest()
    else:
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights)
        quick_gelu = tag_cfg.get("quick_gelu", False) if tag_cfg else None
        force = _force_quick_gelu(arch, weights, quick_gelu)
        try:
            model = open_clip.create_model(arch, pretrained=weights, require_pretrained=True, force_quick_gelu=force)
        except Exception as exc:  # noqa: BLE001
            raise ClipWeightsError(f"clip_weights={weights}: open_clip could not load it for {arch} ({exc})") from exc
        fingerprint = f"open_clip:{arch}:{weights}"
    return model.eval().requires_grad_(False), fingerprint


def tower_layers(arch: str) -> tuple[int, int]:
    """``(vision layers, text layers)`` of an open_clip architecture, from its config (no weights built)."""
    register_tiny_configs()
    config = open_clip.get_model_config(arch)
    if not config:
        raise ClipWeightsError(f"clip_arch={arch}: unknown open_clip architecture")
    return int(config["vision_cfg"]["layers"]), int(config["text_cfg"]["layers"])


def _place_hint(tag: str, tag_cfg: dict) -> str:
    """Which file to fetch, on a machine with network access, for ``--clip-weights FILE``."""
    hub = tag_cfg.get("hf_hub", "").rstrip("/")
    if hub:
        return (f"download https://huggingface.co/{hub}/resolve/main/open_clip_pytorch_model.bin where there is "
                f"network access and give its path or s3:// URI as clip_weights (--clip-weights FILE)")
    url = tag_cfg["url"]
    convert = " after python -m jobs.convert_openai_clip" if tag == "openai" else ""
    return f"download {url} where there is network access and give it as clip_weights (--clip-weights FILE){convert}"


def check_clip_weights(arch: str, weights: str, storage: Storage) -> None:
    """On the driver, before any work: the weights can be read (a file) or fetched (an open_clip tag, then
    cached for the workers); otherwise one sentence naming the file to place."""
    tower_layers(arch)
    if weights == "none":
        return
    if "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not storage.exists(weights):
            raise ClipWeightsError(f"clip_weights={weights}: no such file")
        return
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ClipWeightsError(f"clip_weights={weights}: open_clip has no such weights for {arch} (its tags: {tags}; "
                               f"or a state_dict file, or none)")
    try:
        open_clip.pretrained.download_pretrained(tag_cfg)
    except Exception as exc:  # noqa: BLE001 - no network, hub errors, a broken cache: the same advice
        raise ClipWeightsError(f"clip_weights={weights}: the {weights} weights of {arch} are not on this machine and "
                               f"could not be downloaded; "
                               f"{_place_hint(weights, tag_cfg)}") from exc


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether the model's MLPs use QuickGELU (checked on the first vision block)."""
    return isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def _state_and_activation(payload: object, weights: str) -> tuple[dict, bool | None]:
    """The state_dict in a loaded file, and whether its weights need QuickGELU (None: the file does not say)."""
    if not isinstance(payload, dict):
        raise ClipWeightsError(f"clip_weights={weights}: expected a state_dict, got {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    quick_gelu = payload.get("quick_gelu")
    if any(key in state for key in OPENAI_TORCHSCRIPT_EXTRAS):
        state = {k: v for k, v in state.items() if k not in OPENAI_TORCHSCRIPT_EXTRAS}
        quick_gelu = True
    return state, quick_gelu if isinstance(quick_gelu, bool) else None


def _force_quick_gelu(arch: str, weights: str, weights_quick_gelu: bool | None) -> bool:
    """True where the weights need QuickGELU and the architecture's config lacks it; refuses a ``-quickgelu``
    architecture for weights known to be GELU."""
    arch_quick_gelu = bool(open_clip.get_model_config(arch).get("quick_gelu", False))
    if weights_quick_gelu is False and arch_quick_gelu:
        raise ClipWeightsError(f"clip_arch={arch} uses QuickGELU, but clip_weights={weights} were trained with GELU: "
                               f"use {arch.removesuffix('-quickgelu')}")
    return bool(weights_quick_gelu) and not arch_quick_gelu


def tokenizer(arch: str):
    register_tiny_configs()
    return open_clip.get_tokenizer(arch)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0..1 images to CLIP's input normalisation."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
