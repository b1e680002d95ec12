"""Typed, validated job configuration: YAML file first, command-line flags on top.

Every setting has one dotted name (``patchcore.coreset_ratio``); errors name it, so a user
knows which line of the YAML file or which flag to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from pipeline.detectors.registry import DETECTOR_NAMES, missing_needs, score_sections

Interpolation = Literal["bilinear", "bicubic"]


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the setting."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(_Strict):
    """How ``s3://`` URIs are reached. Credentials fall back to the usual AWS environment."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for s3:// URIs (MinIO, Ceph, ...); unset: AWS S3")
    key: str | None = Field(None, description="S3 access key id; unset: the AWS environment or credentials file")
    secret: str | None = Field(None, description="S3 secret access key; unset: the AWS environment or credentials file")
    region: str | None = Field(None, description="S3 region; unset: the AWS default")
    connect_timeout_s: float = Field(5.0, gt=0, description="seconds to wait for a storage connection")
    max_attempts: int = Field(3, ge=1, le=20, description="tries of one storage request before it fails")


class RuntimeSettings(_Strict):
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://HOST:10001'); unset: RAY_ADDRESS if set, "
                          "else a local Ray runtime")
    workers: int = Field(2, ge=1, le=4096, description="Ray workers (actors), each loading the model once")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    num_gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for each worker (a fraction shares a GPU); 0: run on CPU")
    max_restarts: int = Field(
        2, ge=0, le=100, description="times Ray restarts a worker that dies and retries its work unit, "
                                     "before the unit fails")
    placement_timeout_s: float = Field(
        300.0, gt=0, description="cluster: how long to wait for workers Ray cannot place yet; the job goes on with "
                                 "those that started, or fails naming the missing resources if none did")
    unit_timeout_s: float = Field(
        1800.0, gt=0, description="a work unit still running after this many seconds fails: error rows, no marker")


class TrackingSettings(_Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server or store; unset: MLFLOW_TRACKING_URI or MLflow's local default")
    experiment: str = Field("anomaly-detection", min_length=1, description="MLflow experiment the run is logged to")
    enabled: bool = Field(True, description="log parameters, metrics and artifacts to MLflow")


class DecodeSettings(_Strict):
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are refused (decompression bombs)")
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1, description="larger input files are refused unread")
    max_decoded_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="decoded RGB bytes (width x height x 3) one worker keeps in its batches; "
                                             "batches close early to stay under it (one larger image still makes a "
                                             "batch of its own)")


class VideoSettings(_Strict):
    frame_stride: int = Field(1, ge=1, description="keep one frame in every N")
    fps: float | None = Field(None, gt=0, description="sample at about this rate instead of a stride")
    frames_per_unit: int = Field(1500, ge=1, description="a long video is split into units of this many frames")
    heatmaps: Literal["all", "anomalous", "none"] = Field("anomalous", description="video frames that get a heatmap")
    smoothing_window: int = Field(9, ge=1, description="frames in the moving average for segments")


class PatchCoreSettings(_Strict):
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
        0.875, ge=0.125, le=1, description="then the centred crop of this fraction of image_size is scored (official "
                                          "PatchCore: resize 256, crop 224 = 0.875); 1: no crop")
    interpolation: Interpolation = Field("bilinear", description="resize filter (antialiased, as PIL)")
    pretrain_embed_dim: int = Field(1024, ge=8, description="each layer's patch features are pooled to this size")
    embed_dim: int = Field(384, ge=8, description="length of one patch vector in the memory bank")
    patchsize: int = Field(
        3, ge=1, le=9, description="side of the feature-map neighbourhood aggregated into one patch vector (odd; "
                                   "the official code's patchsize, 3 or 5)")
    coreset_ratio: float = Field(
        0.1, gt=0, le=1, description="fraction of the patch vectors kept in the memory bank (greedy coreset)")
    coreset_projection_dim: int = Field(128, ge=0, description="0 = greedy on the full features")
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


class JobConfig(_Strict):
    """The sections every job has: how video is sampled, decode limits, storage, Ray, MLflow."""

    video: VideoSettings = VideoSettings()
    decode: DecodeSettings = DecodeSettings()
    storage: StorageSettings = StorageSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    tracking: TrackingSettings = TrackingSettings()


class FitConfig(JobConfig):
    normal: str = Field(min_length=1, description="normal (defect-free) images or videos: folder, file or s3:// URI")
    bank: str = Field(min_length=1, description="memory bank root; each fit writes a new version vNNNN under it")
    update_from: str | None = Field(None, description="bank version to extend with 'normal' ('latest' or vNNNN)")
    patchcore: PatchCoreSettings = PatchCoreSettings()


class _ScoreSettings(JobConfig):
    """``jobs.score``'s settings shared by every detector; :data:`ScoreConfig` adds each detector's own section."""

    input: str = Field(min_length=1, description="images, videos or tar archives to score: folder, file or s3:// URI")
    bank: str | None = Field(None, min_length=1,
                             description="PatchCore memory bank root, from jobs.fit; needed by detector patchcore")
    bank_version: str | None = Field(None, description="bank version to score with (vNNNN); unset: the latest")
    model: str | None = Field(None, min_length=1,
                              description="checkpoint from jobs.train; needed by detectors dmad, anomalyclip, inctrl")
    clip_arch: str | None = Field(None, description="anomalyclip/inctrl: override the checkpoint's CLIP architecture")
    clip_weights: str | None = Field(None, description="anomalyclip/inctrl: CLIP weights (path, s3://, tag, none)")
    shots: int | None = Field(None, ge=1, le=64, description="inctrl: number of normal prompt images")
    prompts: str | None = Field(None, min_length=1,
                                description="inctrl (needed): normal images to draw prompts from, or an "
                                            "authors' few-shot file {class}.pt")
    output: str = Field(min_length=1, description="results go to OUTPUT/RUN_NAME: scores, heatmaps, summary")
    detector: Literal[DETECTOR_NAMES] = Field(  # type: ignore[valid-type]  # the registry's names
        "patchcore", description="model that scores: a PatchCore bank, a checkpoint from jobs.train, or SAA+ "
                                "(zero-shot GroundingDINO + SAM, settings under saa)")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="the run's folder under output; re-use a name to resume or retry that run; "
                    "unset: score-UTCTIME")
    threshold: float | None = Field(None, allow_inf_nan=False,
                                    description="decision threshold; default: the one calibrated at fit time")
    heatmaps: Literal["all", "anomalous", "none"] = Field(
        "all", description="images that get a heatmap (video frames: video.heatmaps)")
    maps: bool = Field(
        False, description="also store each raw anomaly map at the scored resolution as a float16 .npy beside its "
                           "heatmap (column map_uri), for pixel metrics in jobs.evaluate")
    images_per_unit: int = Field(64, ge=1, le=100_000,
                                 description="images per work unit, the piece that is retried or resumed")
    batch_size: int = Field(8, ge=1, le=1024, description="images per model forward pass")
    knn_engine: Literal["auto", "torch", "faiss"] = Field(
        "auto", description="patchcore nearest-neighbour search: torch (on the worker's device, features never "
                            "leave it) or faiss; auto = torch on a GPU, faiss on CPU")
    knn_precision: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="patchcore torch search: precision of its first pass (an exact float32 re-rank of the "
                          "best candidates follows); unset = bfloat16 on a GPU, float32 on CPU")

    @model_validator(mode="after")
    def _artifact_for_detector(self) -> _ScoreSettings:
        problem = missing_needs(self.detector, self)
        if problem:
            raise ValueError(problem)
        return self


ScoreConfig = create_model(
    "ScoreConfig", __base__=_ScoreSettings, __module__=__name__,
    **{name: (section, Field(default_factory=section, description=f"detector {name}'s settings"))
       for name, section in score_sections().items()})
ScoreConfig.__doc__ = "``jobs.score``: the shared settings, and a section of its own for each detector that has one."


class EvaluateConfig(_Strict):
    """``jobs.evaluate``: a scored run, its per-frame labels, and how storage and MLflow are reached."""

    output: str = Field(min_length=1, description="the scored run's folder: OUTPUT/RUN_NAME from jobs.score")
    labels: str | None = Field(
        None, min_length=1,
        description="ground truth, comma-separated if several: an MVTec AD/VisA-style folder (test/<defect>, "
                    "ground_truth/<defect>/*_mask.png), a CSV source,label or source,frame_index,label, or a "
                    "CSV/Parquet of per-row labels (source_uri,label); unset: a report without metrics")
    top_k: int = Field(24, ge=0, le=500, description="most anomalous inputs shown in the report's gallery")
    max_fpr: float = Field(0.3, gt=0, le=1, description="AUPRO integrates the PRO curve up to this false positive rate")
    storage: StorageSettings = StorageSettings()
    tracking: TrackingSettings = TrackingSettings()


class ImportConfig(_Strict):
    """``jobs.import_checkpoint``: an authors' released checkpoint to this product's artifact."""

    format: Literal["patchcore", "anomalyclip", "inctrl", "dmad"] = Field(
        description="the release the source comes from: patchcore (a class folder with patchcore_params.pkl and "
                    "nnscorer_search_index.faiss), anomalyclip (prompt learner .pth), inctrl (checkpoint.pyth), "
                    "dmad (image-variant state_dicts, or pickled video models: those need trust_pickle)")
    source: str = Field(min_length=1, description="the released file or folder: path or s3:// URI")
    out: str = Field(min_length=1, description="where our artifact goes: a bank root (patchcore; a new version "
                                               "vNNNN) or a checkpoint file for jobs.score --model")
    trust_pickle: bool = Field(
        False, description="dmad only: the video releases pickle whole model objects; unpickling runs their code, "
                           "so it is done (in a separate process) only if you trust the file")
    storage: StorageSettings = StorageSettings()
    tracking: TrackingSettings = TrackingSettings()

    @model_validator(mode="after")
    def _pickle_only_for_dmad(self) -> ImportConfig:
        if self.trust_pickle and self.format != "dmad":
            raise ValueError(f"trust_pickle applies to format dmad only; {self.format} is read without pickle code")
        return self


SECRETS = ("storage.key", "storage.secret")
MAX_QUOTED = 200  # characters of one input value an error message quotes
MAX_PROBLEMS = 20  # problems listed in one error message


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: nested aliases expand exponentially ("billion laughs")."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                              "accepted in config files; write the values out")
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values out, so :class:`_NoAliasLoader` reads the output back."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _clip(text: str, limit: int = MAX_QUOTED) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section in the config file")
    node[leaf] = value


def _problem(error: Any, flags: Mapping[str, str]) -> str:
    """One line: the YAML key, its flag if it has one, what is wrong, and the (clipped) value given."""
    key = ".".join(str(p) for p in error["loc"])
    if key in flags:
        key = f"{key} ({flags[key]})"
    where = f"{_clip(key)}: " if key else ""  # no key: a check across settings
    if error["type"] == "missing":
        message = "required"
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    given = error.get("input")
    got = f" (got {_clip(repr(given))})" if "input" in error and not isinstance(given, dict) else ""
    return f"{where}{_clip(message)}{got}"


def _format_errors(err: ValidationError, source: str, flags: Mapping[str, str]) -> str:
    """``invalid configuration (SOURCE): problem`` or, for several, the header and one line per problem."""
    problems = [_problem(e, flags) for e in err.errors()[:MAX_PROBLEMS]]
    if err.error_count() > MAX_PROBLEMS:
        problems.append(f"... and {err.error_count() - MAX_PROBLEMS} more")
    if len(problems) == 1:
        return f"invalid configuration ({source}): {problems[0]}"
    return "\n".join([f"invalid configuration ({source}):", *(f"  {p}" for p in problems)])


def parse_yaml(text: str, source: str) -> Any:
    """Safe YAML without anchors and aliases; errors are ConfigErrors that start with ``source``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source} {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({_clip(str(exc), 500)})") from exc


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read file ({exc.strerror or exc})") from exc
    loaded = parse_yaml(text, f"--config {path}")
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of settings")
    return loaded or {}


def load_config(model: type[BaseModel], path: str | Path | None, overrides: dict[str, Any],
                flags: Mapping[str, str] | None = None) -> Any:
    """Build ``model`` from an optional YAML file, then dotted ``overrides`` (flags) on top.

    ``flags`` maps a dotted key to its command-line flag, so an error names both.
    """
    tree = _read_yaml(path) if path is not None else {}
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        source = "flags" if path is None else f"{path} + flags"
        raise ConfigError(_format_errors(exc, source, flags or {})) from exc


def dump_config(cfg: BaseModel) -> str:
    """``cfg`` as YAML that ``--config`` accepts, with the :data:`SECRETS` that are set shown as ``'***'``."""
    tree = cfg.model_dump(mode="json")
    for key in SECRETS:
        section, leaf = key.split(".")
        if tree.get(section, {}).get(leaf) is not None:
            tree[section][leaf] = "***"
    return yaml.dump(tree, Dumper=_NoAliasDumper, sort_keys=False)
