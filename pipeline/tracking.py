"""MLflow: the only module that imports mlflow. Params, metrics, artifacts and lineage tags.

Every run records what ran (:func:`run_versions`): the releases of the packages that decide the scores,
this project's version and its git commit when known, as ``version.*`` and ``git_commit`` params.

The store is checked before any work (:func:`check_tracking`), and HTTP retries are bounded
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` default to 2 and 20 s here instead of MLflow's
7 and 120 s), so a store that goes away during a long run costs about a minute at the end,
not four; the job then reports it without touching the results already written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.config import TrackingSettings
from pipeline.errors import SetupError

MAX_PARAM_CHARS = 6000
# param name -> the distributions that provide it (the first one installed counts): faiss is faiss-cpu on
# CPU images and faiss-gpu-cu12 on GPU images
VERSIONED_PACKAGES = {
    "version.anomaly_pipeline": ("anomaly-pipeline",),
    "version.torch": ("torch",),
    "version.torchvision": ("torchvision",),
    "version.ray": ("ray",),
    "version.faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu"),
    "version.open_clip": ("open_clip_torch",),
    "version.transformers": ("transformers",),
    "version.numpy": ("numpy",),
}
# set by the image build (infra/Dockerfile: --build-arg GIT_COMMIT=...); a checkout is asked directly
GIT_COMMIT_ENV = "ANOMALY_PIPELINE_GIT_COMMIT"


def git_commit() -> str | None:
    """The commit this code came from: $ANOMALY_PIPELINE_GIT_COMMIT, else the git checkout it runs from
    (``-dirty`` appended when tracked files have uncommitted changes), else None."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changes else "")


def run_versions() -> dict[str, str]:
    """``version.<package>`` for every package of :data:`VERSIONED_PACKAGES` that is installed, and
    ``git_commit`` when known."""
    found: dict[str, str] = {}
    for param, distributions in VERSIONED_PACKAGES.items():
        for distribution in distributions:
            try:
                found[param] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    commit = git_commit()
    if commit:
        found["git_commit"] = commit
    return found


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


def random_weights_tags(notes: list[str]) -> dict[str, str]:
    """Tags saying whether a run's model used random weights: ``random_weights`` (``true``/``false``, to filter
    runs on) and, when it did, the run's description (``mlflow.note.content``, shown at the top of its page)."""
    if not notes:
        return {"random_weights": "false"}
    return {"random_weights": "true",
            "mlflow.note.content": "**Random weights: the scores of this run say nothing about real anomalies.**\n\n"
                                   + "\n".join(f"- {n}" for n in notes)}


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


HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _short_reason(exc: BaseException) -> str:
    """The gist of an MLflow client error: its OS error (``[Errno 111] Connection refused``) when it
    has one, else its first line cut at a word boundary."""
    text = " ".join(str(exc).split())
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found.group(0).strip()
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..." or type(exc).__name__


def check_tracking(settings: TrackingSettings) -> str | None:
    """Before any work: the MLflow store answers and the experiment is usable. Returns the store's
    URI (None when tracking is off); raises :class:`SetupError` with one line otherwise."""
    if not settings.enabled:
        return None
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    uri = mlflow.get_tracking_uri()
    try:
        with _environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}):
            mlflow.set_experiment(settings.experiment)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot track this run"
        reason = _short_reason(exc)
        raise SetupError(f"tracking.tracking_uri={uri}: MLflow store unreachable or unusable: {reason} "
                         f"(or run with --no-tracking)") from exc
    return uri


@contextmanager
def start_run(settings: TrackingSettings, run_name: str, job: str, resume_run_id: str | None = None
              ) -> Iterator[Run]:
    """An MLflow run in ``settings.experiment``, with :func:`run_versions` as params; ``resume_run_id``
    reopens an earlier one, where a version that changed since (params cannot change) becomes a
    ``resumed.<param>`` tag."""
    if not settings.enabled:
        yield Run(None)
        return
    import mlflow

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(settings.experiment)
    with mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name,
                          tags=None if resume_run_id else {"job": job}) as active:
        run = Run(mlflow)
        run.run_id = active.info.run_id
        run.tracking_uri = mlflow.get_tracking_uri()
        versions = run_versions()
        if resume_run_id:
            logged = mlflow.get_run(resume_run_id).data.params
            run.params({k: v for k, v in versions.items() if k not in logged})
            run.tags({f"resumed.{k}": v for k, v in versions.items() if k in logged and logged[k] != v})
        else:
            run.params(versions)
        yield run
