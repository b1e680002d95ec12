"""The settings sections every job shares: storage, Ray, MLflow, decoding and video sampling; no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Interpolation = Literal["bilinear", "bicubic"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(StrictModel):
    """How ``s3://`` URIs are reached. Credentials fall back to the usual AWS environment."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for s3:// URIs (MinIO, Ceph, ...); unset: AWS S3")
    key: str | None = Field(None, description="S3 access key id; unset: the AWS environment or credentials file")
    secret: str | None = Field(None, description="S3 secret access key; unset: the AWS environment or credentials file")
    region: str | None = Field(None, description="S3 region; unset: the AWS default")
    connect_timeout_s: float = Field(5.0, gt=0, description="seconds to wait for a storage connection")
    max_attempts: int = Field(3, ge=1, le=20, description="tries of one storage request before it fails")
    max_concurrency: int = Field(
        64, ge=1, le=1024, description="storage requests one worker keeps in flight, for reads and again for "
                                       "writes (a GPU node scoring ~2,000 img/s from a store 25 ms away needs ~50)")
    max_inflight_mb: int = Field(
        256, ge=1, description="MiB one worker holds in reads in flight or not yet decoded, and again in writes "
                               "not yet stored; no new request starts beyond it")


class OverlaySettings(StrictModel):
    """How heatmap overlays are written (which inputs get one: ``heatmaps``, ``video.heatmaps``)."""

    format: Literal["jpeg", "png", "webp"] = Field(
        "jpeg", description="image format of the overlays: jpeg (small, opens anywhere; encoded on the GPU when "
                            "the worker has one), png (lossless, ~10x larger), webp")
    quality: int = Field(80, ge=1, le=100, description="jpeg/webp quality")
    max_side: int = Field(1024, ge=16, le=8192, description="overlays of larger images are shrunk to this long side")


class RuntimeSettings(StrictModel):
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://HOST:10001'); unset: RAY_ADDRESS if set, "
                          "else a local Ray runtime")
    workers: int = Field(2, ge=1, le=4096, description="Ray workers (actors), each loading the model once")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    num_gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for each worker (a fraction shares a GPU); 0: run on CPU")
    max_restarts: int = Field(
        2, ge=0, le=100, description="times a work unit is retried after its worker dies on a node that stays up, "
                                     "before the unit fails (a worker lost with its node costs the unit nothing)")
    placement_timeout_s: float = Field(
        300.0, gt=0, description="cluster: how long to wait for Ray to place a worker when none is placed; the job "
                                 "then fails naming the missing resources. Once one runs, the rest join as the "
                                 "cluster grows")
    unit_timeout_s: float = Field(
        1800.0, gt=0, description="a work unit still running after this many seconds fails: error rows, no marker")


class TrackingSettings(StrictModel):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server or store; unset: MLFLOW_TRACKING_URI or MLflow's local default")
    experiment: str = Field("anomaly-detection", min_length=1, description="MLflow experiment the run is logged to")
    enabled: bool = Field(True, description="log parameters, metrics and artifacts to MLflow")


class DecodeSettings(StrictModel):
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are refused (decompression bombs)")
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1, description="larger input files are refused unread")
    max_decoded_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="decoded RGB bytes (width x height x 3) one worker keeps in its batches; "
                                             "batches close early to stay under it (one larger image still makes a "
                                             "batch of its own)")


class VideoSettings(StrictModel):
    frame_stride: int = Field(1, ge=1, description="keep one frame in every N")
    fps: float | None = Field(None, gt=0, description="sample at about this rate instead of a stride")
    frames_per_unit: int = Field(1500, ge=1, description="a long video is split into units of this many frames")
    heatmaps: Literal["all", "anomalous", "none"] = Field("anomalous", description="video frames that get a heatmap")
    smoothing_window: int = Field(9, ge=1, description="frames in the moving average for segments")


class JobConfig(StrictModel):
    """The sections every job has: how video is sampled, decode limits, storage, Ray, MLflow."""

    video: VideoSettings = VideoSettings()
    decode: DecodeSettings = DecodeSettings()
    storage: StorageSettings = StorageSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    tracking: TrackingSettings = TrackingSettings()
