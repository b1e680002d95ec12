"""InCTRL's settings (``inctrl:`` in YAML), its prompt texts and its checkpoint format; no torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.config.sections import Interpolation

CHECKPOINT_FORMAT = "inctrl/1"



class InCTRLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip_arch: str = Field("ViT-B-16-plus-240", min_length=1, description="open_clip architecture (frozen)")
    clip_weights: str = Field("none", min_length=1, description="see pipeline.features.clip.load_clip")
    seed: int = Field(0, description="CLIP init (weights='none'), head init and training batches")
    image_size: int = Field(240, ge=16, le=1024, description="must equal the ViT's input size")
    interpolation: Interpolation = Field("bicubic", description="resize filter (official: bicubic)")
    shots: int = Field(4, ge=1, le=64, description="k normal prompt images per query")
    patch_layers: list[int] = Field(default_factory=lambda: [7, 9, 11],
                                    description="1-based ViT blocks whose patch tokens give residual maps")
    adapter_reduction: int = Field(4, ge=1, description="bottleneck factor of the image-level adapter")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (official: 1e-3)")
    focal_gamma: float = Field(0.0, ge=0, description="0: binary cross-entropy; > 0: binary focal loss")
    text_scale: float = Field(100.0, gt=0, description="logit scale of the text prior")
    object_name: str = Field("object", min_length=1)
    normal_states: list[str] = Field(default_factory=lambda: list(NORMAL_STATES))
    anomalous_states: list[str] = Field(default_factory=lambda: list(ANOMALOUS_STATES))
    templates: list[str] = Field(default_factory=lambda: list(TEMPLATES))
    sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the output maps, in pixels")

    @field_validator("patch_layers")
    @classmethod
    def _layers(cls, layers: list[int]) -> list[int]:
        if not layers or min(layers) < 1 or len(set(layers)) != len(layers):
            raise ValueError("patch_layers: one or more distinct 1-based block numbers")
        return sorted(layers)

    @field_validator("normal_states", "anomalous_states", "templates")
    @classmethod
    def _one_slot(cls, texts: list[str]) -> list[str]:
        if not texts or any(t.count("{}") != 1 for t in texts):
            raise ValueError("each text needs exactly one '{}' slot, and the list must not be empty")
        return texts


NORMAL_STATES = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage"]



ANOMALOUS_STATES = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]



TEMPLATES = [
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
    "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of a {}.",
    "a dark photo of the {}.", "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of the {}.", "a photo of a {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of a {} for visual inspection.", "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.", "a photo of the {} for anomaly detection.",
]



# The official semantic-anomaly benchmark (CIFAR-10 one-vs-all): these class names get one sentence each instead
SEMANTIC_CLASSES = frozenset({"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
                              "animal"})
