"""Feature extractors: CNN backbones and their weights, PatchCore's patch embedding, CLIP, preprocessing."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "CLIP_MEAN": "pipeline.features.clip",
    "CLIP_STD": "pipeline.features.clip",
    "IMAGENET_MEAN": "pipeline.features.backbones",
    "IMAGENET_STD": "pipeline.features.backbones",
    "OPENAI_TORCHSCRIPT_EXTRAS": "pipeline.features.clip",
    "PAPER_TORCHVISION_WEIGHTS": "pipeline.features.backbones",
    "PatchEmbedder": "pipeline.features.patch_embedding",
    "Preprocess": "pipeline.features.preprocess",
    "TINY_CONFIGS": "pipeline.features.clip",
    "adaptive_pool_matrix": "pipeline.features.patch_embedding",
    "build_backbone": "pipeline.features.backbones",
    "build_classifier": "pipeline.features.backbones",
    "convert": "pipeline.features.openai_clip",
    "folded_kernels": "pipeline.features.patch_embedding",
    "gaussian_blur": "pipeline.features.preprocess",
    "is_torchvision": "pipeline.features.backbones",
    "load_clip": "pipeline.features.clip",
    "load_state_dict": "pipeline.features.backbones",
    "load_torchvision": "pipeline.features.backbones",
    "normalize": "pipeline.features.clip",
    "register_tiny_configs": "pipeline.features.clip",
    "shift_batchnorm_as_official_patchcore": "pipeline.features.backbones",
    "tokenizer": "pipeline.features.clip",
    "torchvision_weights": "pipeline.features.backbones",
    "upgrade_legacy_torchvision": "pipeline.features.backbones",
    "uses_quick_gelu": "pipeline.features.clip",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
