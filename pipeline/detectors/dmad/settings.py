"""DMAD's settings (``dmad:`` in YAML) for both variants, the official loss weights, and its checkpoint format."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator

from pipeline.config.sections import Interpolation

Layout = Literal["ped2", "avenue", "shanghai"]



OFFICIAL_ALPHA = {"ped2": {"deformation": 0.2, "reconstruction": 0.4, "gradient": 0.6},
                  "avenue": {"deformation": 0.2, "reconstruction": 0.4, "gradient": 0.6},
                  "shanghai": {"deformation": 0.2, "reconstruction": 0.4, "foreground": 0.6}}


Component = Literal["deformation", "reconstruction", "gradient", "foreground"]


CHECKPOINT_FORMAT = "dmad/3"  # 2: the ported official video network; 3: the ported official image network



class DMADSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: Literal["video", "image"] = "video"
    image_size: int = Field(256, ge=32, le=1024,
                            description="square input size: a multiple of 256 (video, as official), 32 (image)")
    interpolation: Interpolation = Field("bilinear", description="resize filter (as the official code resizes)")
    layout: Layout = Field("ped2", description="video: which official model file the network follows")
    colour: Literal["bgr", "gray"] = Field("bgr", description="video: BGR (official ped2) or grey (avenue, shanghai)")
    in_frames: int = Field(4, ge=1, le=16, description="video: past frames the next frame is predicted from")
    skip_channels: int = Field(32, ge=1, le=512, description="video: width of the detached skip connections")
    offset_channels: int = Field(64, ge=1, le=512, description="width of the offset network")
    scenes: int = Field(1, ge=1, le=1000, description="video: backgrounds, one per scene (shanghai)")
    codebook_size: int = Field(200, ge=2, le=65536, description="codebook entries (official 200 for images)")
    code_dim: int = Field(256, ge=2, le=4096, description="video: codebook vectors, the encoder's last width "
                                                          "(image: the codebook holds layer3 vectors)")
    beta: float = Field(0.25, ge=0, description="video: VQ commitment weight (image: 0.25, as official)")
    max_offset_coarse: float = Field(2.0, gt=0, description="video: largest coarse offset, in input pixels")
    max_offset_fine: float = Field(3.0, gt=0, description="video: largest fine offset, in input pixels")
    alpha: dict[Component, NonNegativeFloat] | None = Field(
        None, description="video: weights of the per-video normalised frame score components (default: official)")
    window: int = Field(11, ge=1, description="video: frames in the trimmed moving average of frame scores (odd)")
    window_keep: int = Field(5, ge=1, description="video: frames of each window, closest to its mean, averaged")
    deform_weight: float = Field(0.05, ge=0, description="image: score = max(map) + deform_weight * "
                                                          "max(inverse-offset map); official 0.2 for screw, "
                                                          "carpet, metal_nut, else 0.05")
    sigma: float = Field(4.0, ge=0, description="image: Gaussian smoothing of the maps, in pixels")
    backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = Field(
        "wide_resnet50_2", description="image: the frozen encoder (official: wide_resnet50_2)")
    weights: str = Field("none", min_length=1, description="image backbone: path, s3:// URI, 'none', or "
                                                           "'torchvision[:ENUM]' (official: torchvision:IMAGENET1K_V1)")
    seed: int = Field(0, description="image backbone initialisation when weights='none'")
    lr: float = Field(2e-4, gt=0)

    @field_validator("window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError("give an odd window, so the average is centred on the frame")
        return window

    @field_validator("alpha")
    @classmethod
    def _some_weight(cls, alpha: dict[str, float] | None) -> dict[str, float] | None:
        if alpha is not None and sum(alpha.values()) <= 0:
            raise ValueError("give at least one positive component weight")
        return alpha

    @model_validator(mode="after")
    def _size_fits_the_network(self) -> DMADSettings:
        stride = 256 if self.variant == "video" else 32
        if self.image_size % stride:
            raise ValueError(f"image_size must be a multiple of {stride} for variant={self.variant}")
        if self.variant == "video":
            if self.code_dim % 8:
                raise ValueError("code_dim must be a multiple of 8 for variant=video (the encoder widths)")
            if self.window_keep > self.window:
                raise ValueError("window_keep must not exceed window")
            if self.scenes > 1 and self.layout != "shanghai":
                raise ValueError("scenes > 1 needs layout=shanghai (one background per scene)")
            unknown = set(self.score_weights) - set(OFFICIAL_ALPHA[self.layout])
            if unknown:
                raise ValueError(f"alpha: layout={self.layout} has no component {sorted(unknown)}; "
                                 f"use {sorted(OFFICIAL_ALPHA[self.layout])}")
        return self

    @property
    def score_weights(self) -> dict[str, float]:
        """The frame score's component weights: ``alpha``, or the official ones for the layout."""
        return dict(self.alpha) if self.alpha is not None else dict(OFFICIAL_ALPHA[self.layout])


def random_weights(settings: dict[str, Any], cfg: Any) -> tuple[str, ...]:
    """The image variant's frozen encoder, when its checkpoint was trained on a random one (``weights`` none);
    the video variant trains all its weights."""
    if settings.get("variant") == "image" and settings.get("weights") == "none":
        return (f"DMAD's frozen {settings.get('backbone')} image encoder (dmad.weights=none)",)
    return ()
