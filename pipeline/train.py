"""Train a learned detector (see the registry): DMAD on normal data, AnomalyCLIP / InCTRL on auxiliary labelled
data. The trainers themselves live in their detectors' packages (``pipeline.detectors.<name>.train``); this
module holds the shared configuration and publishes the checkpoint to ``model_out`` (path or ``s3://``) and the loss
curve and checkpoint to MLflow.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from pipeline.config import JobConfig
from pipeline.detectors.checkpoints import checkpoint_version
from pipeline.detectors.registry import DETECTORS, TRAINABLE_NAMES, load_attr
from pipeline.io.storage import Storage
from pipeline.runtime import init_ray
from pipeline.tracking import check_tracking, flatten, start_run

OVERRIDES = ("clip_arch", "clip_weights")  # top-level settings applied to the trained detector's section


class _TrainSettings(JobConfig):
    detector: Literal[TRAINABLE_NAMES] = "dmad"  # type: ignore[valid-type]  # the registry's trainable names
    normal: str | None = Field(None, min_length=1, description="dmad: normal images or videos")
    aux: str | None = Field(None, min_length=1, description="anomalyclip/inctrl: MVTec-style labelled folders")
    clip_arch: str | None = Field(None, description="overrides anomalyclip.clip_arch / inctrl.clip_arch")
    clip_weights: str | None = Field(None, description="overrides anomalyclip.clip_weights / inctrl.clip_weights")
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
TrainConfig.__doc__ = "``jobs.train``: the shared settings and a section for each trainable detector."


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    storage = Storage(cfg.storage)
    trainer = DETECTORS[cfg.detector].trainer
    storage.check_reachable(getattr(cfg, trainer.data), trainer.data)
    storage.check_reachable(cfg.model_out, "model_out")
    check_tracking(cfg.tracking)
    load_attr(trainer.check)(cfg, storage)
    local = init_ray(cfg.runtime)
    result = load_attr(trainer.run)(cfg, local)
    checkpoint, curve, n_samples = result["checkpoint"], result["curve"], result["n_samples"]
    startup_s, train_s = result["startup_s"], result["train_s"]
    storage.write_bytes(cfg.model_out, checkpoint)
    summary = {
        "model_out": cfg.model_out, "detector": cfg.detector, "version": checkpoint_version(checkpoint),
        "variant": getattr(getattr(cfg, cfg.detector), "variant", None),
        "steps": cfg.steps, "workers": len(n_samples), "samples_per_worker": n_samples,
        "loss_first": curve[0]["total"], "loss_last": curve[-1]["total"],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": {"startup": startup_s, "train": train_s, "total": time.perf_counter() - t0},
    }
    with start_run(cfg.tracking, f"train-{cfg.detector}", "train") as run:
        run.params(flatten(cfg.model_dump()) | {"model.version": summary["version"]})
        run.tags({"model_out": cfg.model_out, "detector": cfg.detector})
        for step, parts in enumerate(curve):
            run.metrics({f"loss_{k}": v for k, v in parts.items()}, step=step)
        run.metrics({"train_s": train_s})
        run.file_artifact(f"{cfg.detector}.pt", checkpoint, folder="model")
        run.json_artifact("train_summary.json", summary)
        summary["mlflow_run_id"] = run.run_id
    return summary
