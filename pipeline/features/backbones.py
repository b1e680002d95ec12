"""CNN backbones with named layer taps, and weights from a path, ``s3://``, torchvision or none.

``weights`` values:
- ``none``: seeded random initialisation (tests, demos, benchmarks; never a quality claim);
- ``torchvision``: the torchvision ImageNet weights (downloads where the network allows);
- anything else: a ``state_dict`` file (local path, ``file://`` or ``s3://``), loaded with
  ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

if TYPE_CHECKING:
    from pipeline.io.storage import Storage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Backbone weights could not be loaded; the message names the ``weights`` setting."""


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
    if weights == "torchvision":
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"patchcore.weights=torchvision: download of {name} weights failed ({exc})") from exc
        return model, f"torchvision:{name}:DEFAULT"
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


def build_backbone(name: str, layers: list[str], weights: str, seed: int, storage: Storage
                   ) -> tuple[nn.Module, list[int], str]:
    """A frozen module returning ``{layer: feature map}`` for ``layers`` (later layers are never
    run), the channel count of each tap, and the weights' fingerprint."""
    model, fingerprint = build_classifier(name, weights, seed, storage)
    taps = create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
    taps.eval().requires_grad_(False)
    with torch.inference_mode():
        probe = taps(torch.zeros(1, 3, 64, 64))
    return taps, [int(probe[layer].shape[1]) for layer in layers], fingerprint
