"""SAA+ (Cao et al., 2023): zero-shot, GroundingDINO boxes refined by SAM, with hybrid prompts; no training.

Public names are re-exported here and imported on first use (PEP 562), so the registry and the command
lines can name a detector's settings without loading torch or the models."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "COPY_CHUNK": "pipeline.detectors.saa.models",
    "GenericPrompts": "pipeline.detectors.saa.prompts",
    "MANIFEST": "pipeline.detectors.saa.models",
    "PACKAGED": "pipeline.detectors.saa.prompts",
    "ProductPrompts": "pipeline.detectors.saa.prompts",
    "PromptSet": "pipeline.detectors.saa.prompts",
    "PromptsFile": "pipeline.detectors.saa.prompts",
    "SAADetector": "pipeline.detectors.saa.detector",
    "SAASettings": "pipeline.detectors.saa.settings",
    "SALIENCY_LAYERS": "pipeline.detectors.saa.detector",
    "SAM_CHUNK": "pipeline.detectors.saa.detector",
    "SETTING": "pipeline.detectors.saa.prompts",
    "TINY_VOCAB": "pipeline.detectors.saa.models",
    "WEIGHTS_HELP": "pipeline.detectors.saa.settings",
    "box_area_fraction": "pipeline.detectors.saa.stages",
    "caption_text": "pipeline.detectors.saa.detector",
    "check_product_locally": "pipeline.detectors.saa.prompts",
    "cxcywh_to_xyxy": "pipeline.detectors.saa.stages",
    "find_objects": "pipeline.detectors.saa.stages",
    "folder_fingerprint": "pipeline.detectors.saa.models",
    "fuse": "pipeline.detectors.saa.stages",
    "inside_fraction": "pipeline.detectors.saa.stages",
    "keep_inside": "pipeline.detectors.saa.stages",
    "keep_small": "pipeline.detectors.saa.stages",
    "load_for_score": "pipeline.detectors.saa.detector",
    "load_gdino": "pipeline.detectors.saa.models",
    "load_prompts": "pipeline.detectors.saa.prompts",
    "load_sam": "pipeline.detectors.saa.models",
    "locate_weights": "pipeline.detectors.saa.models",
    "multi_instance_saliency": "pipeline.detectors.saa.stages",
    "packaged_text": "pipeline.detectors.saa.prompts",
    "parse_prompts": "pipeline.detectors.saa.prompts",
    "read_prompts": "pipeline.detectors.saa.detector",
    "regularise_proposals": "pipeline.detectors.saa.stages",
    "rescore": "pipeline.detectors.saa.stages",
    "resize_map": "pipeline.detectors.saa.stages",
    "resolve_product": "pipeline.detectors.saa.prompts",
    "resolve_saa": "pipeline.detectors.saa.detector",
    "single_instance_saliency": "pipeline.detectors.saa.stages",
    "top_k": "pipeline.detectors.saa.stages",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
