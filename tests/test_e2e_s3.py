"""fit + score through s3fs against a real S3 server (moto, HTTP on loopback), MLflow store on disk."""

import io

import mlflow
import pyarrow.parquet as pq
import pytest

from pipeline.config import FitConfig, ScoreConfig
from pipeline.demo_data import make_archive
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.score import run_score
from tests.helpers.runs import s3_buckets, small_patchcore


@pytest.fixture()
def s3(s3_endpoint):
    fs = s3_buckets(s3_endpoint, "normal", "archive", "banks", "results")
    return fs


def test_fit_and_score_on_s3(ray_runtime, dataset, s3, s3_endpoint, tmp_path):
    s3.put(str(dataset / "train" / "good") + "/", "normal/line-7/", recursive=True)
    archive = make_archive(dataset, tmp_path / "archive")
    s3.put(str(archive) + "/", "archive/2026-11-25/", recursive=True)
    storage = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    tracking = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}

    fit = run_fit(FitConfig.model_validate({
        "normal": "s3://normal/line-7", "bank": "s3://banks/line-7", "patchcore": small_patchcore(),
        "storage": storage, "runtime": {"workers": 2}, "tracking": tracking}))
    assert s3.exists(f"banks/line-7/{fit['version']}/index-0000.faiss")

    summary = run_score(ScoreConfig.model_validate({
        "input": "s3://archive/2026-11-25", "bank": "s3://banks/line-7", "output": "s3://results/line-7",
        "run_name": "night-1", "storage": storage, "runtime": {"workers": 2}, "tracking": tracking}))
    parts = s3.glob("results/line-7/night-1/scores/part-*.parquet")
    rows = [r for p in parts for r in pq.read_table(io.BytesIO(s3.cat(p))).to_pylist()]
    assert len(rows) == summary["n_inputs"] == 50
    assert sum(r["status"] == "error" for r in rows) == 4
    assert sorted(r["frame_index"] for r in rows if r["frame_index"] is not None) == list(range(30))
    heatmaps = [r["heatmap_uri"] for r in rows if r["status"] == "ok" and r["frame_index"] is None]
    assert all(h.startswith("s3://results/line-7/night-1/heatmaps/") and s3.exists(h) for h in heatmaps)
    assert s3.cat(heatmaps[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert s3.exists("results/line-7/night-1/summary.json")

    run = mlflow.MlflowClient(tracking["tracking_uri"]).get_run(summary["mlflow_run_id"])
    assert run.data.params["input"] == "s3://archive/2026-11-25"
    assert "storage.secret" not in run.data.params and run.data.metrics["ok"] == 46
    artifacts = {a.path for a in mlflow.MlflowClient(tracking["tracking_uri"]).list_artifacts(run.info.run_id)}
    assert {"summary.json", "bank.json"} <= artifacts
