"""The authors' released InCTRL checkpoint (``checkpoint.pyth``) to this product's InCTRL checkpoint.

The official training loop saves ``torch.save(model.state_dict(), path)`` of its ``InCTRL`` module (its
``save_checkpoint`` helper wraps the same dict as ``{"model_state": ...}``; both are read): the whole open_clip CLIP
(``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
``text_projection``; no ``logit_scale``), the image adapter ``adapter.fc.{0,2}.weight``, the image residual head
``diff_head_ref.*`` and the holistic head ``diff_head.*`` (``projection1..3`` and ``bn1..3``).

The CLIP part is written as a plain state_dict next to the output (``OUT.clip.pt``), which the converted checkpoint
names as its ``clip_weights``; the CLIP architecture is the registered open_clip config whose shapes the tensors
have (the authors' is ViT-B-16-plus-240 with GELU). The heads map onto :class:`~pipeline.detectors.inctrl.InCTRLHeads`
with two changes that leave every score unchanged: the image head's first weight is negated (the official residual
is prompts minus query, ours query minus prompts) and the heads' ``bn1`` (built, never used) is dropped.
"""

from __future__ import annotations

import hashlib
import io
import math
import pathlib
import re
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from pipeline.detectors.inctrl import build_heads, save_checkpoint
from pipeline.detectors.inctrl.settings import InCTRLSettings
from pipeline.features.clip import register_tiny_configs
from pipeline.io.storage import Storage

HEAD_LAYERS = {"projection1": 0, "bn2": 2, "projection2": 3, "bn3": 5, "projection3": 6}  # official -> Sequential
HEADS = {"diff_head_ref": "image_head", "diff_head": "holistic_head"}
OFFICIAL_PATCH_LAYERS = [7, 9, 11]
VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def read_state(source: pathlib.Path) -> dict[str, Tensor]:
    if not source.is_file():
        raise ValueError(f"source={source}: expected the released InCTRL checkpoint file (checkpoint.pyth)")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"source={source}: not a checkpoint of plain tensors ({exc})") from exc
    state = loaded.get("model_state", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"source={source}: expected a state_dict (or {{'model_state': state_dict}})")
    missing = [k for k in ("visual.proj", "adapter.fc.0.weight", "diff_head.projection1.weight",
                           "diff_head_ref.projection1.weight", "token_embedding.weight") if k not in state]
    if missing:
        raise ValueError(f"source={source}: not an InCTRL checkpoint (missing {', '.join(missing)})")
    return state


def _blocks(state: dict[str, Tensor], prefix: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def clip_signature(state: dict[str, Tensor]) -> tuple:
    """What the CLIP tensors' shapes fix about the architecture (not the head counts)."""
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    vocab, text_width = state["token_embedding.weight"].shape
    vision_mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    text_mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
    return (state["visual.proj"].shape[1], grid * patch, _blocks(state, "visual.transformer.resblocks."), width,
            patch, vision_mlp, state["positional_embedding"].shape[0], vocab, text_width,
            _blocks(state, "transformer.resblocks."), text_mlp)


def config_signature(cfg: dict[str, Any]) -> tuple | None:
    """The same for a plain open_clip ViT config (GELU, no extras); ``None`` for any other kind."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if set(cfg) - {"embed_dim", "vision_cfg", "text_cfg"} or set(vision) - VISION_KEYS or set(text) - TEXT_KEYS \
            or not isinstance(vision.get("image_size"), int) or not isinstance(vision.get("layers"), int):
        return None
    return (cfg["embed_dim"], vision["image_size"], vision["layers"], vision["width"], vision["patch_size"],
            float(vision.get("mlp_ratio", 4.0)), text.get("context_length", 77), text.get("vocab_size", 49408),
            text["width"], text["layers"], float(text.get("mlp_ratio", 4.0)))


def match_clip_arch(state: dict[str, Tensor]) -> str:
    register_tiny_configs()
    wanted = clip_signature(state)
    names = [n for n in open_clip.list_models() if config_signature(open_clip.get_model_config(n) or {}) == wanted]
    if len(names) != 1:
        raise ValueError(f"source: CLIP shapes {wanted} match {names or 'no'} open_clip architecture(s); "
                         "expected exactly one (the authors used ViT-B-16-plus-240)")
    return names[0]


def load_clip_part(state: dict[str, Tensor], arch: str) -> nn.Module:
    """``arch`` with the checkpoint's CLIP tensors, strictly loaded (``logit_scale``, which InCTRL neither has nor
    uses, keeps open_clip's initial value)."""
    model = open_clip.create_model(arch, pretrained=None)
    own = model.state_dict()
    clip = {k: state[k] for k in own if k in state}
    clip["logit_scale"] = own["logit_scale"]
    model.load_state_dict(clip, strict=True)
    return model.eval()


def heads_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    heads = {f"adapter.{i}.weight": state[f"adapter.fc.{i}.weight"] for i in (0, 2)}
    for official, ours in HEADS.items():
        for key, value in state.items():
            layer, _, field = key.removeprefix(official + ".").partition(".")
            if key.startswith(official + ".") and layer in HEAD_LAYERS:
                heads[f"{ours}.{HEAD_LAYERS[layer]}.{field}"] = value
    heads["image_head.0.weight"] = -heads["image_head.0.weight"]  # residual: query - prompts, not prompts - query
    return heads


def convert(source: pathlib.Path, out: str, storage: Storage) -> dict[str, Any]:
    """Write our InCTRL checkpoint at ``out`` and its CLIP at ``out + '.clip.pt'``; return what was applied."""
    state = read_state(source)
    arch = match_clip_arch(state)
    clip_model = load_clip_part(state, arch)
    buffer = io.BytesIO()
    torch.save(clip_model.state_dict(), buffer)
    clip_bytes = buffer.getvalue()
    clip_uri = storage.canonical(out) + ".clip.pt"
    fingerprint = "sha256:" + hashlib.sha256(clip_bytes).hexdigest()
    embed_dim = clip_model.visual.output_dim
    settings = InCTRLSettings(clip_arch=arch, clip_weights=clip_uri, image_size=clip_model.visual.image_size[0],
                              patch_layers=OFFICIAL_PATCH_LAYERS,
                              adapter_reduction=embed_dim // state["adapter.fc.0.weight"].shape[0])
    with torch.random.fork_rng(devices=[]):  # initial head weights are overwritten: leave the caller's RNG alone
        heads = build_heads(settings, clip_model)
    try:
        heads.load_state_dict(heads_state_dict(state), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"source={source}: heads do not fit InCTRL on {arch} ({exc})") from exc
    storage.write_bytes(clip_uri, clip_bytes)
    storage.write_bytes(out, save_checkpoint(heads.eval(), settings, fingerprint))
    return {
        "clip_arch": arch, "clip_weights": clip_uri, "clip_fingerprint": fingerprint,
        "settings": settings.model_dump(),
        "notes": [
            "image head: first weight negated (official residual is prompts minus query); unused bn1 dropped",
            "prompts: pass the authors' few-shot file {class}.pt as --prompts; its name is the class the text "
            "prompts name, as in the official test (image folders use object_name, 'object')",
            "inputs: the official preprocessing is a bicubic resize to 240 px and a 240 px centre crop",
        ],
    }
