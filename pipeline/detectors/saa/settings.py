"""SAA+'s section of the score configuration (``saa:`` in YAML). No torch here: the command line validates it,
and the product name against the prompt sets, before any heavy import."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

WEIGHTS_HELP = ("a local folder (from_pretrained), an s3:// prefix (copied to weights_cache and checksummed), a "
                "Hugging Face hub name (downloads where the network allows), or 'none' (seeded random weights of "
                "{arch})")


class SAASettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gdino_weights: str | None = Field(
        None, min_length=1, description="GroundingDINO weights: " + WEIGHTS_HELP.format(arch="gdino_arch"))
    sam_weights: str | None = Field(
        None, min_length=1, description="SAM weights: " + WEIGHTS_HELP.format(arch="sam_arch"))
    gdino_arch: Literal["tiny-test", "swin-t"] = Field(
        "tiny-test", description="GroundingDINO size that gdino_weights 'none' builds: the tiny test configuration "
                                 "or Swin-T (grounding-dino-tiny)")
    sam_arch: Literal["tiny-test", "vit-b", "vit-l", "vit-h"] = Field(
        "tiny-test", description="SAM size that sam_weights 'none' builds: the tiny test configuration or ViT-B/L/H")
    prompts_config: str | None = Field(
        None, min_length=1, description="YAML file of per-product hybrid prompt sets (path or s3://); unset: the "
                                        "packaged sets (generic, MVTec AD and VisA categories)")
    product: str | None = Field(
        None, min_length=1, description="product line whose prompt set applies (a key of the prompts file's "
                                        "products); unset: the generic set")
    seed: int = Field(0, description="random init of the models whose weights are 'none'")
    image_size: int | None = Field(
        None, ge=32, le=2048, description="working resolution (square, pixels) of masks and maps; unset: SAM's "
                                          "input size (1024 for the real models)")
    gdino_size: int = Field(800, ge=32, le=2048,
                            description="GroundingDINO sees the image at min(gdino_size, image_size) pixels")
    box_threshold: float = Field(0.1, ge=0, lt=1, description="region proposals below this GroundingDINO "
                                                              "confidence are dropped")
    max_candidates: int = Field(100, ge=1, le=10_000, description="most object boxes and region proposals per "
                                                                   "image that SAM refines (the most confident)")
    min_inside: float = Field(0.5, ge=0, le=1, description="location prompt: least fraction of a candidate box "
                                                           "that must lie on the object's mask")
    saliency_backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = Field(
        "wide_resnet50_2", description="CNN whose features give the self-similarity saliency map")
    saliency_weights: str = Field(
        "none", min_length=1, description="saliency backbone weights: path, s3:// URI, 'torchvision', or 'none'")
    saliency_size: int = Field(256, ge=32, le=1024, description="image size the saliency features are taken at")
    saliency_neighbors: int = Field(400, ge=1, description="single instance: each position's saliency is its mean "
                                                           "distance to this many nearest other positions")
    saliency_gain: float = Field(3.0, ge=0, description="a mask's confidence is multiplied by "
                                                        "exp(saliency_gain x its mean saliency)")
    sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the anomaly map, in working pixels")
    weights_cache: str = Field("~/.cache/anomaly-pipeline/weights", min_length=1,
                               description="local folder that s3:// weights are copied to (reused when complete)")

    @field_validator("product")
    @classmethod
    def _known_product(cls, product: str | None, info: ValidationInfo) -> str | None:
        """Products of a local or the packaged prompts file are checked here, before any work; an s3:// file
        is checked on the driver before the workers start."""
        from pipeline.detectors.saa.prompts import check_product_locally

        check_product_locally(info.data.get("prompts_config"), product)
        return product
