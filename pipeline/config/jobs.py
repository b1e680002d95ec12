"""The configuration of each job: fit, score, train, evaluate and import. Score and train get one section per
detector that has settings, from the registry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from pipeline.config.sections import JobConfig, OverlaySettings, StorageSettings, StrictModel, TrackingSettings
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.detectors.registry import (
    DETECTOR_NAMES,
    DETECTORS,
    IMPORTABLE_NAMES,
    TRAINABLE_NAMES,
    load_attr,
    missing_needs,
    score_sections,
)


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
    overlay: OverlaySettings = OverlaySettings()
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


OVERRIDES = ("clip_arch", "clip_weights")  # top-level settings applied to the trained detector's section



def _trained_on(data: str) -> str:
    return "/".join(n for n in TRAINABLE_NAMES if DETECTORS[n].trainer.data == data)


def _overridden(setting: str) -> str:
    """The trained detectors' sections that have ``setting``, as ``name.setting`` joined by " / "."""
    return " / ".join(f"{n}.{setting}" for n in TRAINABLE_NAMES
                      if setting in load_attr(DETECTORS[n].trainer.settings).model_fields)


class _TrainSettings(JobConfig):
    detector: Literal[TRAINABLE_NAMES] = TRAINABLE_NAMES[0]  # type: ignore[valid-type]  # the registry's names
    normal: str | None = Field(None, min_length=1, description=f"{_trained_on('normal')}: normal images or videos")
    aux: str | None = Field(None, min_length=1, description=f"{_trained_on('aux')}: MVTec-style labelled folders")
    clip_arch: str | None = Field(None, description=f"overrides {_overridden('clip_arch')}")
    clip_weights: str | None = Field(None, description=f"overrides {_overridden('clip_weights')}")
    model_out: str = Field(min_length=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=2, le=1024, description="per worker; batch norm needs at least 2")
    seed: int = 0

    @model_validator(mode="after")
    def _data_for_detector(self) -> _TrainSettings:
        data = DETECTORS[self.detector].trainer.data
        if not getattr(self, data):
            raise ValueError(f"detector {self.detector} trains on its {data} data: set {data}")
        return self

    def detector_settings(self) -> BaseModel:
        """The trained detector's section, with the top-level :data:`OVERRIDES` that it has and that are set."""
        section = getattr(self, self.detector)
        update = {k: getattr(self, k) for k in OVERRIDES if getattr(self, k) and k in type(section).model_fields}
        return type(section).model_validate(section.model_dump() | update)



def _sections() -> dict[str, Any]:
    fields = {}
    for name in TRAINABLE_NAMES:
        settings = load_attr(DETECTORS[name].trainer.settings)
        fields[name] = (settings, Field(default_factory=settings, description=f"detector {name}'s settings"))
    return fields



TrainConfig = create_model("TrainConfig", __base__=_TrainSettings, __module__=__name__, **_sections())
