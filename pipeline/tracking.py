"""MLflow: the only module that imports mlflow. Params, metrics, artifacts and lineage tags."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pipeline.config import TrackingSettings

MAX_PARAM_CHARS = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``; secrets (``storage.key``/``secret``) are dropped."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if name in ("storage.key", "storage.secret"):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Run:
    """An open MLflow run (or a no-op when tracking is disabled)."""

    def __init__(self, mlflow_module: Any | None):
        self._mlflow = mlflow_module
        self.run_id: str | None = None
        self.tracking_uri: str | None = None

    def params(self, params: Mapping[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params({k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()})

    def metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def tags(self, tags: Mapping[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def json_artifact(self, name: str, payload: Any) -> None:
        if self._mlflow:
            self._mlflow.log_text(json.dumps(payload, indent=2, default=str), name)

    def file_artifact(self, name: str, data: bytes, folder: str | None = None) -> None:
        if self._mlflow:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, name)
                with open(path, "wb") as fh:
                    fh.write(data)
                self._mlflow.log_artifact(path, artifact_path=folder)


@contextmanager
def start_run(settings: TrackingSettings, run_name: str, job: str) -> Iterator[Run]:
    if not settings.enabled:
        yield Run(None)
        return
    import mlflow

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        mlflow.set_experiment(settings.experiment)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(
            f"tracking.tracking_uri={mlflow.get_tracking_uri()}: MLflow store unusable: {exc}"
        ) from exc
    with mlflow.start_run(run_name=run_name, tags={"job": job}) as active:
        run = Run(mlflow)
        run.run_id = active.info.run_id
        run.tracking_uri = mlflow.get_tracking_uri()
        yield run
