"""Every MLflow run records what ran: package releases, this project's version and its git commit."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import mlflow
import pytest

from pipeline.config import TrackingSettings
from pipeline.tracking import GIT_COMMIT_ENV, run_versions, start_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> TrackingSettings:
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return TrackingSettings(tracking_uri=f"sqlite:///{store}", experiment="versions")


def logged_params(settings: TrackingSettings, run_id: str) -> dict[str, str]:
    return mlflow.MlflowClient(settings.tracking_uri).get_run(run_id).data.params


def test_a_run_records_the_versions_that_ran(settings, monkeypatch):
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    with start_run(settings, "versions", "score") as run:
        pass
    params = logged_params(settings, run.run_id)
    for param, distribution in [("version.torch", "torch"), ("version.ray", "ray"), ("version.faiss", "faiss-cpu"),
                                ("version.open_clip", "open_clip_torch"), ("version.transformers", "transformers"),
                                ("version.torchvision", "torchvision"), ("version.numpy", "numpy")]:
        assert params[param] == metadata.version(distribution)
    assert params["version.anomaly_pipeline"] == metadata.version("anomaly-pipeline")
    if (REPO / ".git").exists():     # a checkout: the commit it is at, marked when files were edited since
        def git(*args):
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        edited = bool(git("status", "--porcelain", "--untracked-files=no"))
        assert params["git_commit"] == git("rev-parse", "HEAD") + ("-dirty" if edited else "")


def test_the_image_build_names_the_commit(monkeypatch):
    monkeypatch.setenv(GIT_COMMIT_ENV, "0123abc")
    assert run_versions()["git_commit"] == "0123abc"


def test_a_resumed_run_keeps_its_params_and_tags_a_changed_version(settings, monkeypatch):
    monkeypatch.setenv(GIT_COMMIT_ENV, "first")
    with start_run(settings, "versions", "score") as run:
        pass
    monkeypatch.setenv(GIT_COMMIT_ENV, "second")      # the resume runs on a newer image
    with start_run(settings, "versions", "score", resume_run_id=run.run_id):
        pass
    logged = mlflow.MlflowClient(settings.tracking_uri).get_run(run.run_id).data
    assert logged.params["git_commit"] == "first"
    assert logged.tags["resumed.git_commit"] == "second"
    assert not any(key.startswith("resumed.version.") for key in logged.tags)   # same packages both times
