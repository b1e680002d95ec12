"""CNN backbones with named layer taps, and weights from a path, ``s3://``, torchvision or none.

``weights`` values:
- ``none``: seeded random initialisation (tests, demos, benchmarks; never a quality claim);
- ``torchvision:ENUM``: torchvision's ImageNet weights named by their enum member
  (``torchvision:IMAGENET1K_V1``, ``torchvision:IMAGENET1K_V2``, ``torchvision:DEFAULT``), fetched
  into torch's hub cache where the network allows; plain ``torchvision`` means ``IMAGENET1K_V1``,
  what the official PatchCore and DMAD code load (``pretrained=True``). torchvision's ``DEFAULT``
  is ``IMAGENET1K_V2`` for resnet50 and wide_resnet50_2: other features than the papers used;
- anything else: a ``state_dict`` file (local path, ``file://`` or ``s3://``), loaded with
  ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from pipeline.errors import WeightsError

if TYPE_CHECKING:
    from pipeline.io.storage import Storage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


PAPER_TORCHVISION_WEIGHTS = "IMAGENET1K_V1"  # torchvision's ``pretrained=True``, as the official code


def is_torchvision(weights: str) -> bool:
    return weights == "torchvision" or weights.startswith("torchvision:")


def torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The enum member ``weights`` (``torchvision`` or ``torchvision:ENUM``) names for architecture ``name``."""
    member = weights.partition(":")[2] or PAPER_TORCHVISION_WEIGHTS
    enum = torchvision.models.get_model_weights(name)
    if member not in enum.__members__:
        raise WeightsError(f"patchcore.weights={weights}: torchvision has no {member} weights for {name}; "
                           f"choose one of {', '.join('torchvision:' + m for m in enum.__members__)}")
    return enum[member]


def upgrade_legacy_torchvision(name: str, weights: str, fingerprint: str) -> tuple[str, str]:
    """``(weights, fingerprint)`` of an artifact recorded before torchvision weights were named by enum:
    its plain ``torchvision`` (fingerprint ``torchvision:NAME:DEFAULT``) loaded torchvision's DEFAULT, so
    it keeps that (``torchvision:DEFAULT``, IMAGENET1K_V2 for resnet50/wide_resnet50_2); else unchanged."""
    if weights == "torchvision" and fingerprint == f"torchvision:{name}:DEFAULT":
        return "torchvision:DEFAULT", f"torchvision:{name}:{torchvision_weights(name, 'torchvision:DEFAULT').name}"
    return weights, fingerprint


def load_torchvision(name: str, weights: str) -> tuple[nn.Module, str]:
    """``name`` with torchvision's weights (from the hub cache, else downloaded), and their fingerprint
    ``torchvision:NAME:MEMBER`` (``DEFAULT`` resolved to the member it stands for)."""
    member = torchvision_weights(name, weights)
    try:
        model = torchvision.models.get_model(name, weights=member)
    except Exception as exc:  # noqa: BLE001
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(member.url).path))
        raise WeightsError(
            f"patchcore.weights={weights}: cannot load torchvision's {member.name} weights for {name} "
            f"({type(exc).__name__}: {exc}); without network access, copy {member.url} to {cached} "
            f"or give the weights as a state_dict file") from exc
    return model, f"torchvision:{name}:{member.name}"


def load_state_dict(storage: Storage, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    try:
        data = storage.read_bytes(weights)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"patchcore.weights={weights}: cannot read ({exc})") from exc
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"patchcore.weights={weights}: not a loadable state_dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"patchcore.weights={weights}: expected a state_dict, got {type(state).__name__}")
    return state, "sha256:" + hashlib.sha256(data).hexdigest()


def build_classifier(name: str, weights: str, seed: int, storage: Storage) -> tuple[nn.Module, str]:
    """The full torchvision model with weights applied, and a fingerprint of those weights."""
    if is_torchvision(weights):
        return load_torchvision(name, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
    if weights == "none":
        return model, f"random:seed={seed}"
    state, fingerprint = load_state_dict(storage, weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise WeightsError(
            f"patchcore.weights={weights}: missing {len(missing)} tensors for {name}, e.g. {missing[:3]}"
        )
    return model, fingerprint


def shift_batchnorm_as_official_patchcore(taps: nn.Module, input_hw: tuple[int, int]) -> None:
    """The official PatchCore code measures its feature sizes by running one all-ones image
    (``[1, 3, H, W]``, not normalised) through the backbone, still in train mode, up to the last
    tapped layer: every BatchNorm met on the way moves its running statistics 10 % (momentum 0.1)
    towards that image's. Its banks were built, and are scored, with that shifted backbone, so an
    imported bank needs exactly this; our own fits keep the clean backbone."""
    taps.train()
    with torch.no_grad():
        taps(torch.ones(1, 3, *input_hw))
    taps.eval()


def build_backbone(name: str, layers: list[str], weights: str, seed: int, storage: Storage,
                   bn_shift_input: tuple[int, int] | None = None) -> tuple[nn.Module, list[int], str]:
    """A frozen module returning ``{layer: feature map}`` for ``layers`` (later layers are never
    run), the channel count of each tap, and the weights' fingerprint. ``bn_shift_input``: the
    ``(H, W)`` of :func:`shift_batchnorm_as_official_patchcore`, for banks made by the official code."""
    model, fingerprint = build_classifier(name, weights, seed, storage)
    taps = create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
    if bn_shift_input is not None:
        shift_batchnorm_as_official_patchcore(taps, bn_shift_input)
    taps.eval().requires_grad_(False)
    with torch.inference_mode():
        probe = taps(torch.zeros(1, 3, 64, 64))
    return taps, [int(probe[layer].shape[1]) for layer in layers], fingerprint
