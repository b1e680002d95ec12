"""The authors' released AnomalyCLIP prompts to an AnomalyCLIP checkpoint that ``jobs.score --model OUT`` loads.

A released file (``checkpoints/9_12_4_multiscale/epoch_15.pth`` and the VisA one) is ``torch.save`` of
``{"prompt_learner": state_dict}`` of the official ``AnomalyCLIP_PromptLearner``:

- ``ctx_pos`` / ``ctx_neg`` ``[1, 1, n_ctx, width]``: the learnt context of "[V] object." / "[W] damaged object.";
  they become our ``ctx`` ``[2, n_ctx, width]`` (normal, anomalous);
- ``compound_prompts_text.{i}`` ``[length, width]``, one per text layer 1..depth-1: our ``deep``;
- ``token_prefix_*`` / ``token_suffix_*``: the CLIP token embeddings of the fixed words, kept as a fingerprint
  (``clip_token_sha256``) that loading checks against the CLIP it is given, so prompts never silently run on
  other CLIP weights; ``tokenized_prompts_*`` are recomputed by our tokenizer;
- ``compound_prompt_projections.*`` (vision-side, never used by the official forward pass) are dropped.

The checkpoint gets the settings the prompts were trained with: OpenAI's ViT-L-14-336 (QuickGELU), 518 px, DPAM
from layer 6 (``DPAM_layer=20``), temperature 0.07, sigma 4, and ``feature_layers=[24]``: the released prompts were
trained with code whose four "feature layers" were all layer 24 (see :mod:`pipeline.detectors.anomalyclip`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.detectors.anomalyclip import CHECKPOINT_FORMAT, token_embedding_sha256
from pipeline.detectors.anomalyclip.settings import AnomalyCLIPSettings
from pipeline.detectors.checkpoints import pack
from pipeline.io.storage import Storage

RELEASED_SETTINGS: dict[str, Any] = {
    "clip_arch": "ViT-L-14-336", "clip_weights": "openai", "image_size": 518, "dpam_start": 6,
    "feature_layers": [24], "temperature": 0.07, "sigma": 4.0, "interpolation": "bicubic",
}
RELEASED_CLIP = "openai:ViT-L/14@336px"
_DEEP_KEY = re.compile(r"compound_prompts_text\.(\d+)$")
_TOKEN_BUFFERS = ("token_prefix_pos", "token_suffix_pos", "token_prefix_neg", "token_suffix_neg")


def convert(source: Path, out: str, storage: Storage) -> dict[str, Any]:
    """Write the checkpoint for the released file ``source`` to ``out``; returns what was applied."""
    learner = read_prompt_learner(Path(source).read_bytes())
    state, sizes = prompt_tensors(learner)
    settings = AnomalyCLIPSettings(**RELEASED_SETTINGS, **sizes)
    extra = {"clip_fingerprint": RELEASED_CLIP}
    notes = ["feature_layers=[24]: the released prompts were trained when all four map layers were layer 24",
             "CLIP: OpenAI ViT-L-14-336 with QuickGELU: --clip-weights openai (open_clip download) or a file "
             "written by python -m jobs.convert_openai_clip"]
    if all(name in learner for name in _TOKEN_BUFFERS):
        extra["clip_token_sha256"] = token_embedding_sha256(fixed_token_embeddings(learner))
    else:
        notes.append("no token_prefix/suffix buffers: the CLIP weights cannot be checked at load time")
    storage.write_bytes(out, pack(CHECKPOINT_FORMAT, settings.model_dump_json(), state, **extra))
    dropped = sorted(k for k in learner if k.startswith("compound_prompt_projections."))
    return {"format": "anomalyclip", "out": out, "settings": settings.model_dump(), "notes": notes,
            "clip_token_check": "clip_token_sha256" in extra, "dropped": dropped}


def read_prompt_learner(data: bytes) -> dict[str, Tensor]:
    """The official prompt learner's state_dict from a released file (plain tensors: ``weights_only=True``)."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"source: not a torch checkpoint of plain tensors ({exc})") from exc
    if not isinstance(payload, Mapping) or not isinstance(payload.get("prompt_learner"), Mapping):
        raise ValueError('source: not a released AnomalyCLIP checkpoint (expected {"prompt_learner": state_dict})')
    learner = dict(payload["prompt_learner"])
    missing = [k for k in ("ctx_pos", "ctx_neg") if k not in learner]
    if missing:
        raise ValueError(f"source: the prompt_learner state_dict lacks {missing}")
    return learner


def prompt_tensors(learner: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Our prompt tensors (``ctx``, ``deep``) and the sizes that go into the settings."""
    ctx_pos, ctx_neg = learner["ctx_pos"], learner["ctx_neg"]
    if ctx_pos.shape != ctx_neg.shape or ctx_pos.ndim != 4 or ctx_pos.shape[:2] != (1, 1):
        raise ValueError(f"source: ctx_pos {list(ctx_pos.shape)} / ctx_neg {list(ctx_neg.shape)}: expected "
                         "[1, 1, n_ctx, width] each (one class, one state template)")
    n_ctx, width = ctx_pos.shape[2:]
    deep_layers = sorted((int(m.group(1)), v) for k, v in learner.items() if (m := _DEEP_KEY.match(k)))
    if [i for i, _ in deep_layers] != list(range(len(deep_layers))):
        raise ValueError(f"source: compound_prompts_text indices {[i for i, _ in deep_layers]} are not 0..n-1")
    if not deep_layers:
        raise ValueError("source: no compound_prompts_text.*: not an AnomalyCLIP prompt learner")
    deep = torch.stack([v for _, v in deep_layers])
    if deep.ndim != 3 or deep.shape[2] != width:
        raise ValueError(f"source: compound_prompts_text {list(deep.shape[1:])}: expected [length, {width}]")
    state = {"ctx": torch.cat([ctx_pos[0], ctx_neg[0]]).float(), "deep": deep.float()}
    sizes = {"n_ctx": int(n_ctx), "deep_prompt_depth": len(deep_layers) + 1, "deep_prompt_length": int(deep.shape[1])}
    return state, sizes


def fixed_token_embeddings(learner: Mapping[str, Tensor]) -> Tensor:
    """The prompt learner's token buffers in the row order of ``AnomalyCLIPPrompts.fixed_token_embeddings``."""
    width = learner["ctx_pos"].shape[-1]
    return torch.cat([learner[name].reshape(-1, width) for name in _TOKEN_BUFFERS])
