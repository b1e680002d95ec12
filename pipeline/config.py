"""Typed, validated job configuration: YAML file first, command-line flags on top.

Every setting has one dotted name (``patchcore.coreset_ratio``); errors name it, so a user
knows which line of the YAML file or which flag to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the setting."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(_Strict):
    """How ``s3://`` URIs are reached. Credentials fall back to the usual AWS environment."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)


class RuntimeSettings(_Strict):
    ray_address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray runtime
    workers: int = Field(2, ge=1, le=4096)
    num_cpus_per_worker: float = Field(1.0, gt=0)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    max_restarts: int = Field(2, ge=0, le=100)
    placement_timeout_s: float = Field(
        300.0, gt=0, description="cluster: how long to wait for workers Ray cannot place yet; the job goes on with "
                                 "those that started, or fails naming the missing resources if none did")
    unit_timeout_s: float = Field(
        1800.0, gt=0, description="a work unit still running after this many seconds fails: error rows, no marker")


class TrackingSettings(_Strict):
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or MLflow's local default
    experiment: str = Field("anomaly-detection", min_length=1)
    enabled: bool = True


class DecodeSettings(_Strict):
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are refused (decompression bombs)")
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1)


class VideoSettings(_Strict):
    frame_stride: int = Field(1, ge=1, description="keep one frame in every N")
    fps: float | None = Field(None, gt=0, description="sample at about this rate instead of a stride")
    frames_per_unit: int = Field(1500, ge=1, description="a long video is split into units of this many frames")
    heatmaps: Literal["all", "anomalous", "none"] = "anomalous"
    smoothing_window: int = Field(9, ge=1, description="frames in the moving average for segments")


class PatchCoreSettings(_Strict):
    backbone: Literal["resnet18", "resnet50", "wide_resnet50_2"] = "resnet18"
    weights: str = Field("none", min_length=1, description="path, s3:// URI, 'torchvision', or 'none'")
    seed: int = 0
    layers: list[Literal["layer1", "layer2", "layer3"]] = ["layer2", "layer3"]
    image_size: int = Field(256, ge=32, le=2048)
    pretrain_embed_dim: int = Field(1024, ge=8)
    embed_dim: int = Field(384, ge=8)
    coreset_ratio: float = Field(0.1, gt=0, le=1)
    coreset_projection_dim: int = Field(128, ge=0, description="0 = greedy on the full features")
    local_oversample: float = Field(4.0, ge=1, description="round-1 budget per shard, as a multiple")
    num_neighbors: int = Field(9, ge=1)
    reweight: bool = False
    sigma: float = Field(4.0, ge=0)
    calibration_fraction: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, le=1024)
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="backbone arithmetic; bfloat16 is faster on CPUs with AVX512-BF16/AMX and on GPUs")
    images_per_shard: int = Field(512, ge=1)
    index_dtype: Literal["float32", "float16"] = Field("float32", description="float16 halves bank memory")
    shard_vectors: int = Field(1_000_000, ge=1, description="most vectors in one index shard file")

    @field_validator("layers")
    @classmethod
    def _layers_unique(cls, layers: list[str]) -> list[str]:
        if not layers or len(set(layers)) != len(layers):
            raise ValueError("give one or more distinct layers")
        return sorted(layers)


class JobConfig(_Strict):
    """The sections every job has: how video is sampled, decode limits, storage, Ray, MLflow."""

    video: VideoSettings = VideoSettings()
    decode: DecodeSettings = DecodeSettings()
    storage: StorageSettings = StorageSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    tracking: TrackingSettings = TrackingSettings()


class FitConfig(JobConfig):
    normal: str = Field(min_length=1)
    bank: str = Field(min_length=1)
    update_from: str | None = Field(None, description="bank version to extend with 'normal' ('latest' or vNNNN)")
    patchcore: PatchCoreSettings = PatchCoreSettings()


class ScoreConfig(JobConfig):
    input: str = Field(min_length=1)
    bank: str | None = Field(None, min_length=1, description="PatchCore memory bank root")
    bank_version: str | None = None
    model: str | None = Field(None, min_length=1, description="checkpoint from jobs.train (dmad, anomalyclip, inctrl)")
    clip_arch: str | None = Field(None, description="anomalyclip/inctrl: override the checkpoint's CLIP architecture")
    clip_weights: str | None = Field(None, description="anomalyclip/inctrl: CLIP weights (path, s3://, tag, none)")
    shots: int | None = Field(None, ge=1, le=64, description="inctrl: number of normal prompt images")
    prompts: str | None = Field(None, min_length=1, description="inctrl: normal images to draw prompts from")
    output: str = Field(min_length=1)
    detector: Literal["patchcore", "dmad", "anomalyclip", "inctrl"] = "patchcore"
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    threshold: float | None = Field(None, allow_inf_nan=False,
                                    description="decision threshold; default: the one calibrated at fit time")
    heatmaps: Literal["all", "anomalous", "none"] = "all"
    images_per_unit: int = Field(64, ge=1, le=100_000)
    batch_size: int = Field(8, ge=1, le=1024)

    @model_validator(mode="after")
    def _artifact_for_detector(self) -> ScoreConfig:
        if self.detector == "patchcore" and not self.bank:
            raise ValueError("detector patchcore needs bank (a memory bank from jobs.fit)")
        if self.detector != "patchcore" and not self.model:
            raise ValueError(f"detector {self.detector} needs model (a checkpoint from jobs.train)")
        if self.detector == "inctrl" and not self.prompts:
            raise ValueError("detector inctrl needs prompts (normal images to draw its few-shot prompts from)")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section in the config file")
    node[leaf] = value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {where}: {e['msg']}{got}")
    return "\n".join(lines)


def load_config(model: type[BaseModel], path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """Build ``model`` from an optional YAML file, then dotted ``overrides`` (flags) on top."""
    tree: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        source = f"{path} + flags"
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read file ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: the top level must be a mapping of settings")
        tree = loaded or {}
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
