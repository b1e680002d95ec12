"""Train a learned detector (the registry names each one's trainer and the data it trains on): run its trainer on
Ray, publish the checkpoint to ``model_out`` (path or ``s3://``), and log the loss curve and checkpoint to MLflow."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from pipeline.config.jobs import TrainConfig
from pipeline.detectors.checkpoints import checkpoint_version
from pipeline.detectors.registry import DETECTORS, load_attr
from pipeline.io.storage import Storage
from pipeline.runtime import init_ray
from pipeline.tracking import check_tracking, flatten, start_run

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
