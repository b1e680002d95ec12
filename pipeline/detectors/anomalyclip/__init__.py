"""AnomalyCLIP (Zhou et al., ICLR 2024): zero-shot, object-agnostic learnable prompts over a frozen CLIP with DPAM."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "AnomalyCLIPDetector": "pipeline.detectors.anomalyclip.detector",
    "AnomalyCLIPPrompts": "pipeline.detectors.anomalyclip.detector",
    "AnomalyCLIPSettings": "pipeline.detectors.anomalyclip.settings",
    "CHECKPOINT_FORMAT": "pipeline.detectors.anomalyclip.settings",
    "RANDOM_FINGERPRINT_PREFIX": "pipeline.detectors.anomalyclip.settings",
    "RELEASED_CLIP": "pipeline.detectors.anomalyclip.importer",
    "anomalyclip_losses": "pipeline.detectors.anomalyclip.train",
    "build_prompts": "pipeline.detectors.anomalyclip.detector",
    "convert": "pipeline.detectors.anomalyclip.importer",
    "dice_loss": "pipeline.detectors.anomalyclip.train",
    "encode_image": "pipeline.detectors.anomalyclip.detector",
    "fixed_token_embeddings": "pipeline.detectors.anomalyclip.importer",
    "focal_loss": "pipeline.detectors.anomalyclip.train",
    "image_logits": "pipeline.detectors.anomalyclip.detector",
    "load_checkpoint": "pipeline.detectors.anomalyclip.detector",
    "load_for_score": "pipeline.detectors.anomalyclip.detector",
    "prompt_tensors": "pipeline.detectors.anomalyclip.importer",
    "read_prompt_learner": "pipeline.detectors.anomalyclip.importer",
    "run": "pipeline.detectors.anomalyclip.train",
    "save_checkpoint": "pipeline.detectors.anomalyclip.detector",
    "similarity_maps": "pipeline.detectors.anomalyclip.detector",
    "token_embedding_sha256": "pipeline.detectors.anomalyclip.detector",
    "train_anomalyclip": "pipeline.detectors.anomalyclip.train",
    "vv_attention": "pipeline.detectors.anomalyclip.detector",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
