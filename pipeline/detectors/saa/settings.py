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
        None, ge=32, le=2048, description="working resolution: the image's longer side for SAM (letterboxed, as "
                                          "SAM pads) and the side of the square map it returns; unset: SAM's input "
                                          "size (1024 for the real models, as officially)")
    gdino_size: int = Field(800, ge=32, le=2048, description="GroundingDINO sees the image with its shorter side "
                                                            "at this size (official: 800)")
    gdino_max_size: int = Field(1333, ge=32, le=4096, description="... unless its longer side would exceed this "
                                                                  "(official: 1333)")
    box_threshold: float = Field(0.1, ge=0, lt=1, description="region proposals whose best token (special tokens "
                                                              "included) is at most this are dropped (official 0.1)")
    text_threshold: float = Field(0.1, ge=0, lt=1, description="a proposal's phrase is its caption tokens above "
                                                               "this; a phrase holding the object's word is the "
                                                               "object, not a defect (official 0.1)")
    max_candidates: int | None = Field(
        None, ge=1, le=10_000, description="our addition, off by default: refine at most this many region "
                                           "proposals per image with SAM (the most confident); unset: every one, "
                                           "as officially")
    min_inside: float = Field(0.0, ge=0, le=1, description="our addition, off by default (0): the paper's "
                                                           "location prompt, the least fraction of a candidate box "
                                                           "that must lie on the object's masks (e.g. 0.5); it "
                                                           "drops defects beside the object, such as missing parts")
    saliency_backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = Field(
        "wide_resnet50_2", description="CNN whose features (layers 1-3) give the self-similarity saliency map")
    saliency_weights: str = Field(
        "none", min_length=1, description="saliency backbone weights: path, s3:// URI, 'torchvision[:ENUM]', or "
                                          "'none' (random: warned, and named in model_version). The official code "
                                          "loads timm's pretrained wide_resnet50_2; give that state_dict to match")
    saliency_size: int = Field(256, ge=32, le=2048, description="single instance: the image is squashed to this "
                                                                "square for the saliency features (official 256)")
    multi_saliency_size: int = Field(1024, ge=32, le=2048, description="several instances: the same, official "
                                                                       "1024")
    saliency_neighbors: int = Field(400, ge=1, description="single instance: each position's saliency is its mean "
                                                           "distance to this many other positions (official 400)")
    saliency_rule: Literal["farthest", "nearest"] = Field(
        "farthest", description="which saliency_neighbors: the farthest (official) or the nearest (the paper's "
                                "wording: a region with no close match anywhere stands out)")
    saliency_gain: float = Field(3.0, ge=0, description="a mask's confidence is multiplied by "
                                                        "exp(saliency_gain x its mean saliency) (official 3)")
    fusion: Literal["official", "mean"] = Field(
        "official", description="official: a pixel's score is the sum of the covering masks' confidences over 1 + "
                                "their count; mean: their mean (one mask keeps its full confidence)")
    channel_order: Literal["official", "rgb"] = Field(
        "official", description="official: SAM and the saliency network get the image's channels in BGR order, as "
                                "the official code (reading images with OpenCV) gives them; rgb: every model gets "
                                "RGB, the order its weights were trained on")
    sigma: float = Field(0.0, ge=0, description="our addition, off by default (0): Gaussian smoothing of the "
                                                "anomaly map, in working pixels")
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
