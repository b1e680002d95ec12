"""InCTRL (Zhu and Pang, CVPR 2024): few-shot, CLIP in-context residuals between a query and a few normal prompts."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "ANOMALOUS_STATES": "pipeline.detectors.inctrl.settings",
    "CHECKPOINT_FORMAT": "pipeline.detectors.inctrl.settings",
    "ClipFeatures": "pipeline.detectors.inctrl.detector",
    "HEADS": "pipeline.detectors.inctrl.importer",
    "HEAD_LAYERS": "pipeline.detectors.inctrl.importer",
    "InCTRLDetector": "pipeline.detectors.inctrl.detector",
    "InCTRLHeads": "pipeline.detectors.inctrl.detector",
    "InCTRLOutput": "pipeline.detectors.inctrl.detector",
    "InCTRLSettings": "pipeline.detectors.inctrl.settings",
    "NORMAL_STATES": "pipeline.detectors.inctrl.settings",
    "OFFICIAL_PATCH_LAYERS": "pipeline.detectors.inctrl.importer",
    "PromptSet": "pipeline.detectors.inctrl.detector",
    "SEMANTIC_CLASSES": "pipeline.detectors.inctrl.settings",
    "TEMPLATES": "pipeline.detectors.inctrl.settings",
    "TEXT_KEYS": "pipeline.detectors.inctrl.importer",
    "VISION_KEYS": "pipeline.detectors.inctrl.importer",
    "binary_loss": "pipeline.detectors.inctrl.train",
    "build_heads": "pipeline.detectors.inctrl.detector",
    "check_clip": "pipeline.detectors.inctrl.detector",
    "choose_prompts": "pipeline.detectors.inctrl.detector",
    "clip_signature": "pipeline.detectors.inctrl.importer",
    "config_signature": "pipeline.detectors.inctrl.importer",
    "convert": "pipeline.detectors.inctrl.importer",
    "encode_images": "pipeline.detectors.inctrl.detector",
    "group_prompts": "pipeline.detectors.inctrl.detector",
    "heads_state_dict": "pipeline.detectors.inctrl.importer",
    "inctrl_forward": "pipeline.detectors.inctrl.detector",
    "is_prompt_file": "pipeline.detectors.inctrl.detector",
    "load_checkpoint": "pipeline.detectors.inctrl.detector",
    "load_clip_part": "pipeline.detectors.inctrl.importer",
    "load_for_score": "pipeline.detectors.inctrl.detector",
    "match_clip_arch": "pipeline.detectors.inctrl.importer",
    "patch_residuals": "pipeline.detectors.inctrl.detector",
    "prompt_images": "pipeline.detectors.inctrl.detector",
    "prompt_texts": "pipeline.detectors.inctrl.detector",
    "read_prompt_file": "pipeline.detectors.inctrl.detector",
    "read_state": "pipeline.detectors.inctrl.importer",
    "run": "pipeline.detectors.inctrl.train",
    "sample_prompt_indices": "pipeline.detectors.inctrl.train",
    "save_checkpoint": "pipeline.detectors.inctrl.detector",
    "score_head": "pipeline.detectors.inctrl.detector",
    "text_features": "pipeline.detectors.inctrl.detector",
    "train_inctrl": "pipeline.detectors.inctrl.train",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
