"""SAA+ (Cao et al., 2023): zero-shot, GroundingDINO boxes refined by SAM, with hybrid prompts; no training."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

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

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
