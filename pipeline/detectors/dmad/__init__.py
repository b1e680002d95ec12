"""DMAD (Liu et al., CVPR 2023): reconstruction through a VQ codebook with a pyramid deformation module;
video and image variants.

Public names are re-exported here and imported on first use (PEP 562), so the registry and the command
lines can name a detector's settings without loading torch or the models."""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ALLOWED": "pipeline.detectors.dmad.unpickle",
    "BACKGROUND_LR_SCALE": "pipeline.detectors.dmad.video_model",
    "CENTRE_WEIGHTS_11": "pipeline.detectors.dmad.video_model",
    "CHECKPOINT_FORMAT": "pipeline.detectors.dmad.settings",
    "COARSE_SCALE": "pipeline.detectors.dmad.image_model",
    "CODEBOOK_BETA": "pipeline.detectors.dmad.image_model",
    "COORD_CELLS": "pipeline.detectors.dmad.video_model",
    "Codebook": "pipeline.detectors.dmad.video_model",
    "Component": "pipeline.detectors.dmad.settings",
    "CoordConv": "pipeline.detectors.dmad.image_model",
    "DMADDetector": "pipeline.detectors.dmad.detector",
    "DMADSettings": "pipeline.detectors.dmad.settings",
    "DMADTrainWorker": "pipeline.detectors.dmad.train",
    "Decoder": "pipeline.detectors.dmad.image_model",
    "Deformation": "pipeline.detectors.dmad.image_model",
    "Encoder": "pipeline.detectors.dmad.video_model",
    "FINE_SCALE": "pipeline.detectors.dmad.image_model",
    "FOREGROUND_MIN_AREA": "pipeline.detectors.dmad.video_model",
    "FOREGROUND_THRESHOLD": "pipeline.detectors.dmad.video_model",
    "FORMAT_2_IMAGE_SETTINGS": "pipeline.detectors.dmad.detector",
    "GEOMETRIC_CLASSES": "pipeline.detectors.dmad.importer",
    "IMAGE_PARTS": "pipeline.detectors.dmad.importer",
    "ImageDMAD": "pipeline.detectors.dmad.image_model",
    "ImageForward": "pipeline.detectors.dmad.image_model",
    "ImageScores": "pipeline.detectors.dmad.image_model",
    "LAYERS": "pipeline.detectors.dmad.image_model",
    "Layout": "pipeline.detectors.dmad.settings",
    "LayoutSpec": "pipeline.detectors.dmad.video_model",
    "OCBE": "pipeline.detectors.dmad.image_model",
    "OFFICIAL_ALPHA": "pipeline.detectors.dmad.settings",
    "OFFICIAL_MODULE": "pipeline.detectors.dmad.unpickle",
    "OffsetNet": "pipeline.detectors.dmad.image_model",
    "RELEASED_IMAGE_NAME": "pipeline.detectors.dmad.importer",
    "ResidualBlock": "pipeline.detectors.dmad.image_model",
    "SKIPS": "pipeline.detectors.dmad.importer",
    "UNUSED_IMAGE_WEIGHTS": "pipeline.detectors.dmad.importer",
    "Unpickler": "pipeline.detectors.dmad.unpickle",
    "UpBottleneck": "pipeline.detectors.dmad.image_model",
    "VIDEO_FORMAT_2": "pipeline.detectors.dmad.detector",
    "VectorQuantizer": "pipeline.detectors.dmad.image_model",
    "VideoDMAD": "pipeline.detectors.dmad.video_model",
    "VideoOutput": "pipeline.detectors.dmad.video_model",
    "WIDE_RESNET50_CHANNELS": "pipeline.detectors.dmad.importer",
    "anomaly_map": "pipeline.detectors.dmad.image_model",
    "background_from": "pipeline.detectors.dmad.video_model",
    "box_max": "pipeline.detectors.dmad.video_model",
    "build_model": "pipeline.detectors.dmad.detector",
    "clip_windows": "pipeline.detectors.dmad.detector",
    "conv3x3": "pipeline.detectors.dmad.image_model",
    "convert": "pipeline.detectors.dmad.importer",
    "convert_image": "pipeline.detectors.dmad.importer",
    "coord_channels": "pipeline.detectors.dmad.video_model",
    "coordinate_channels": "pipeline.detectors.dmad.image_model",
    "double_conv": "pipeline.detectors.dmad.video_model",
    "foreground_error": "pipeline.detectors.dmad.video_model",
    "frame_components": "pipeline.detectors.dmad.video_model",
    "frame_scores": "pipeline.detectors.dmad.video_model",
    "gradient_difference": "pipeline.detectors.dmad.video_model",
    "head": "pipeline.detectors.dmad.video_model",
    "identity_grid": "pipeline.detectors.dmad.image_model",
    "image_losses": "pipeline.detectors.dmad.detector",
    "image_scores": "pipeline.detectors.dmad.detector",
    "infer_layout": "pipeline.detectors.dmad.importer",
    "length": "pipeline.detectors.dmad.image_model",
    "load_checkpoint": "pipeline.detectors.dmad.detector",
    "load_for_score": "pipeline.detectors.dmad.detector",
    "losses": "pipeline.detectors.dmad.image_model",
    "main": "pipeline.detectors.dmad.unpickle",
    "make_optimizer": "pipeline.detectors.dmad.train",
    "normalise": "pipeline.detectors.dmad.detector",
    "official_image_state_to_ours": "pipeline.detectors.dmad.importer",
    "official_settings": "pipeline.detectors.dmad.importer",
    "official_state_to_ours": "pipeline.detectors.dmad.importer",
    "offset_head": "pipeline.detectors.dmad.image_model",
    "offset_length": "pipeline.detectors.dmad.video_model",
    "read_image_release": "pipeline.detectors.dmad.importer",
    "reconstruction_loss": "pipeline.detectors.dmad.image_model",
    "run": "pipeline.detectors.dmad.train",
    "sample": "pipeline.detectors.dmad.image_model",
    "save_checkpoint": "pipeline.detectors.dmad.detector",
    "scene_of": "pipeline.detectors.dmad.video_model",
    "score_images": "pipeline.detectors.dmad.image_model",
    "smoothness": "pipeline.detectors.dmad.image_model",
    "split_windows": "pipeline.detectors.dmad.detector",
    "to_model_space": "pipeline.detectors.dmad.video_model",
    "train_dmad": "pipeline.detectors.dmad.train",
    "train_step": "pipeline.detectors.dmad.train",
    "trimmed_average": "pipeline.detectors.dmad.video_model",
    "unpickle_in_subprocess": "pipeline.detectors.dmad.importer",
    "up_block": "pipeline.detectors.dmad.video_model",
    "video_background": "pipeline.detectors.dmad.detector",
    "video_frame_scores": "pipeline.detectors.dmad.detector",
    "video_losses": "pipeline.detectors.dmad.detector",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
