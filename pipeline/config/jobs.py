"""The configuration of each job: fit, score, evaluate and import (train's is in :mod:`pipeline.train`, built from
the registry's trainable detectors)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model, model_validator

from pipeline.config.sections import JobConfig, StorageSettings, StrictModel, TrackingSettings
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.detectors.registry import DETECTOR_NAMES, DETECTORS, IMPORTABLE_NAMES, missing_needs, score_sections


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


class EvaluateConfig(StrictModel):
    """``jobs.evaluate``: a scored run, its per-frame labels, and how storage and MLflow are reached."""

    output: str = Field(min_length=1, description="the scored run's folder: OUTPUT/RUN_NAME from jobs.score")
    labels: str | None = Field(
        None, min_length=1,
        description="ground truth, comma-separated if several: an MVTec AD/VisA-style folder (test/<defect>, "
                    "ground_truth/<defect>/*_mask.png), a CSV source,label or source,frame_index,label, or a "
                    "CSV/Parquet of per-row labels (source_uri,label); unset: a report without metrics")
    top_k: int = Field(24, ge=0, le=500, description="most anomalous inputs shown in the report's gallery")
    max_fpr: float = Field(0.3, gt=0, le=1, description="AUPRO integrates the PRO curve up to this false positive rate")
    replace: bool = Field(False, description="without labels: replace an earlier evaluation made with labels "
                                             "(refused otherwise, so its metrics are not lost)")
    storage: StorageSettings = StorageSettings()
    tracking: TrackingSettings = TrackingSettings()


class ImportConfig(StrictModel):
    """``jobs.import_checkpoint``: an authors' released checkpoint to this product's artifact."""

    format: Literal[IMPORTABLE_NAMES] = Field(  # type: ignore[valid-type]  # the registry's importable names
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
    def _pickle_only_where_released(self) -> ImportConfig:
        if self.trust_pickle and not DETECTORS[self.format].importer.runs_pickle:
            pickled = ", ".join(n for n in IMPORTABLE_NAMES if DETECTORS[n].importer.runs_pickle)
            raise ValueError(f"trust_pickle applies to format {pickled} only; {self.format} is read without pickle "
                             f"code")
        return self
