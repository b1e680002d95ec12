"""AnomalyCLIP's settings (``anomalyclip:`` in YAML), its checkpoint format and the random-weights marker; no torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

from pipeline.config.sections import Interpolation

CHECKPOINT_FORMAT = "anomalyclip/1"



RANDOM_FINGERPRINT_PREFIX = "random:"



class AnomalyCLIPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clip_arch: str = "ViT-L-14-336"
    clip_weights: str = "none"
    seed: int = 111
    image_size: int = Field(518, ge=16, le=1024, description="square input size: a multiple of the patch size")
    interpolation: Interpolation = Field("bicubic", description="resize filter (official: bicubic)")
    n_ctx: int = Field(12, ge=1, le=64, description="learnable context tokens per prompt")
    deep_prompt_depth: int = Field(9, ge=1, description="text layers with learnable tokens (layer 1 = input ctx)")
    deep_prompt_length: int = Field(4, ge=1, description="context positions replaced in deeper text layers")
    dpam_start: int = Field(6, ge=1, description="first vision layer (1-based) with the DPAM path; > depth: off")
    feature_layers: list[int] = Field([6, 12, 18, 24], min_length=1, description="1-based vision layers for maps")
    sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the anomaly map, in input pixels")
    temperature: PositiveFloat = 0.07
    lr: PositiveFloat = 1e-3
    focal_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)

    @field_validator("feature_layers")
    @classmethod
    def _positive_layers(cls, layers: list[int]) -> list[int]:
        if min(layers) < 1 or len(set(layers)) != len(layers):
            raise ValueError("feature_layers: distinct 1-based layer numbers")
        return sorted(layers)

    @model_validator(mode="after")
    def _deep_prompts_fit(self) -> AnomalyCLIPSettings:
        if self.deep_prompt_length > self.n_ctx:
            raise ValueError("deep_prompt_length must not exceed n_ctx: deep tokens replace context positions")
        return self
