"""PatchCore's settings (``patchcore:`` in YAML): the features, the coreset, the bank and its scoring; no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.sections import Interpolation, StrictModel


class PatchCoreSettings(StrictModel):
    backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = Field(
        "resnet18", description="CNN whose intermediate features describe the patches")
    weights: str = Field(
        "none", min_length=1,
        description="backbone weights: path, s3:// URI, 'torchvision:ENUM' (torchvision:IMAGENET1K_V1, "
                    "torchvision:IMAGENET1K_V2, torchvision:DEFAULT; plain 'torchvision' = IMAGENET1K_V1, as the "
                    "paper), or 'none' for random init")
    seed: int = Field(0, description="random init (weights 'none'), projection and coreset sampling")
    layers: list[Literal["layer1", "layer2", "layer3"]] = Field(
        ["layer2", "layer3"], description="backbone stages whose features are combined")
    image_size: int = Field(256, ge=32, le=2048, description="images are resized to this square size, in pixels")
    crop_fraction: float = Field(
        1.0, ge=0.125, le=1, description="the centred part of each side of the resized image that is scored; 1 "
                                        "(default): the whole image; 0.875: the paper's and official PatchCore's "
                                        "setting (resize 256, crop 224), which never inspects the outer 6 % of "
                                        "every edge")
    interpolation: Interpolation = Field("bilinear", description="resize filter (antialiased, as PIL)")
    pretrain_embed_dim: int = Field(1024, ge=8, description="each layer's patch features are pooled to this size")
    embed_dim: int = Field(384, ge=8, description="length of one patch vector in the memory bank")
    patchsize: int = Field(
        3, ge=1, le=9, description="side of the feature-map neighbourhood aggregated into one patch vector (odd; "
                                   "the official code's patchsize, 3 or 5)")
    coreset_ratio: float = Field(
        0.1, gt=0, le=1, description="fraction of the patch vectors kept in the memory bank (greedy coreset)")
    coreset_projection_dim: int = Field(128, ge=0, description="0 = greedy on the full features")
    coreset_mode: Literal["exact", "official"] = Field(
        "exact", description="how the greedy coreset starts and how many vectors it keeps: exact = a seeded "
                             "Gaussian projection, a seeded first point, ceil(N x ratio) (plain farthest-first, "
                             "its 2-approximation bound holds); official = the official ApproximateGreedyCoreset"
                             "Sampler: an nn.Linear projection, the argmax of the mean distance to 10 random "
                             "candidates first, int(N x ratio)")
    bn_shift: Literal["none", "official"] = Field(
        "none", description="none = the clean backbone; official = the official code's BatchNorm shift (one "
                            "all-ones image through the backbone in train mode before use), to reproduce the "
                            "published numbers' exact backbone; the bank records it and is scored with it")
    local_oversample: float = Field(4.0, ge=1, description="round-1 budget per shard, as a multiple")
    coreset_engine: Literal["auto", "torch", "numpy"] = Field(
        "auto", description="greedy k-center: torch (on the worker's device) or the pruned numpy loop; "
                            "auto = torch on a GPU, numpy on CPU")
    coreset_dtype: Literal["float32", "float16"] = Field(
        "float32", description="torch greedy k-center: how the projected features are stored (float16 halves "
                               "memory traffic; the selection can then differ by rounding)")
    merge_max_vectors: int = Field(
        2_000_000, ge=2, description="most vectors one coreset merge step reduces; a larger union of shard "
                                     "coresets is merged in rounds (a merge tree)")
    anomaly_scorer_num_nn: int = Field(
        1, ge=1, le=64, description="a patch's score is the mean squared L2 distance to its this many nearest bank "
                                    "vectors (the official code's anomaly_scorer_num_nn)")
    num_neighbors: int = Field(9, ge=1, description="reweight (Eq. 7): bank neighbours of the nearest patch whose "
                                                     "density damps the image score")
    reweight: bool = Field(False, description="reweight image scores by the density around the nearest patch "
                                              "(paper Eq. 7; not in the official code)")
    sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the anomaly map, in pixels")
    calibration_fraction: float = Field(
        0.1, ge=0, lt=1, description="fraction of the normal images held out to calibrate the decision threshold; "
                                     "0: no threshold")
    batch_size: int = Field(8, ge=1, le=1024, description="images per backbone forward pass")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="backbone arithmetic; bfloat16 is faster on CPUs with AVX512-BF16/AMX and on GPUs")
    images_per_shard: int = Field(512, ge=1, description="normal images per fit work unit, or shard")
    index_dtype: Literal["float32", "float16"] = Field("float32", description="float16 halves bank memory")
    shard_vectors: int = Field(1_000_000, ge=1, description="most vectors in one index shard file")

    @field_validator("patchsize")
    @classmethod
    def _patchsize_odd(cls, patchsize: int) -> int:
        if patchsize % 2 == 0:
            raise ValueError("must be odd (the neighbourhood is centred on its patch)")
        return patchsize

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, layers: list[str]) -> list[str]:
        if not layers or len(set(layers)) != len(layers):
            raise ValueError("give one or more distinct layers")
        return sorted(layers)
