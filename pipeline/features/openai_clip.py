"""OpenAI's TorchScript CLIP files (``ViT-L-14-336px.pt`` and its siblings) to a plain state_dict, once.

OpenAI released CLIP as TorchScript archives; reading one runs ``torch.jit.load``. This conversion does that once,
on a file the user chose, and writes ``{"state_dict": ..., "quick_gelu": True, "source_sha256": ...}`` with
``torch.save``; scoring then loads it with ``torch.load(weights_only=True)`` (``--clip-weights FILE``) and
:func:`pipeline.features.clip.load_clip` builds the model with QuickGELU, as OpenAI's CLIP needs. Tensors keep
their stored dtype (float16 in OpenAI's files); the model copies them into float32.

    python -m jobs.convert_openai_clip --source ViT-L-14-336px.pt --out ./models/ViT-L-14-336px.state_dict.pt
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from pipeline.features.clip import OPENAI_TORCHSCRIPT_EXTRAS
from pipeline.io.storage import Storage

_CLIP_KEYS = ("visual.conv1.weight", "token_embedding.weight", "text_projection")
# Buffers that are no weights: OpenAI's model settings, and the causal text mask that a TorchScript export of an
# open_clip model stores (open_clip keeps it out of its own state_dict and rebuilds it).
_NOT_WEIGHTS = (*OPENAI_TORCHSCRIPT_EXTRAS, "attn_mask")


def convert(source: Path, out: str, storage: Storage) -> dict[str, Any]:
    """Write the plain state_dict of the TorchScript CLIP file ``source`` to ``out``; returns what was written."""
    data = Path(source).read_bytes()
    try:
        with warnings.catch_warnings():  # TorchScript's deprecation: the reason to convert once, said above
            warnings.simplefilter("ignore", FutureWarning)
            archive = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).splitlines()[0].split(". ")[0]
        raise ValueError(f"source={source}: not a TorchScript archive ({reason})") from exc
    state = {k: v.detach().clone() for k, v in archive.state_dict().items() if k not in _NOT_WEIGHTS}
    missing = [k for k in _CLIP_KEYS if k not in state]
    if missing:
        raise ValueError(f"source={source}: not an OpenAI CLIP model (no {missing})")
    sha256 = hashlib.sha256(data).hexdigest()
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "quick_gelu": True, "source_sha256": sha256}, buffer)
    storage.write_bytes(out, buffer.getvalue())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    return {"out": out, "tensors": len(state), "dtypes": dtypes, "quick_gelu": True, "source_sha256": sha256}
