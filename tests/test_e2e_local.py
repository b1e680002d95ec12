"""fit + score on a real local Ray runtime, local folders and a real MLflow (sqlite) store."""

import json
from pathlib import Path

import mlflow
import pyarrow.dataset as pads
import pytest

from pipeline.config import FitConfig, ScoreConfig
from pipeline.demo_data import make_archive
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.results.sink import ROW_SCHEMA
from pipeline.score import run_score
from tests.helpers.runs import small_patchcore


@pytest.fixture(scope="module")
def fitted(ray_runtime, dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    tracking = {"tracking_uri": f"sqlite:///{work}/mlflow.db"}
    fit = run_fit(FitConfig.model_validate({
        "normal": str(dataset / "train" / "good"), "bank": str(work / "bank"),
        "patchcore": small_patchcore(), "runtime": {"workers": 2}, "tracking": tracking}))
    return work, fit, tracking


def score_cfg(work: Path, archive: Path, tracking: dict, **extra) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": str(archive), "bank": str(work / "bank"), "output": str(work / "results"),
        "images_per_unit": 4, "runtime": {"workers": 2}, "tracking": tracking} | extra)


def read_rows(output: str) -> list[dict]:
    table = pads.dataset(f"{output}/scores", format="parquet").to_table()
    assert table.schema.equals(ROW_SCHEMA)
    return table.to_pylist()


def test_fit_publishes_a_versioned_bank_with_metadata(fitted):
    work, fit, tracking = fitted
    meta = json.loads((work / "bank" / "v0001" / "bank.json").read_text())
    assert json.loads((work / "bank" / "latest.json").read_text()) == {"version": "v0001"}
    assert meta["n_images"] == 11 and fit["n_calibration_images"] == 1  # 12 normal, 10 % held out
    # 64 px images, scored whole by default (crop_fraction 1): an 8x8 patch grid per image
    assert meta["n_patches"] == 11 * 64 and meta["n_bank"] == round(0.1 * 11 * 64 + 0.5)
    assert meta["crop_fraction"] == 1.0 and meta["grid"] == [8, 8]
    assert fit["inspected_fraction"] == fit["inspected_area_fraction"] == 1.0
    assert fit["random_weights"] == ["the resnet18 backbone (patchcore.weights=none)"]
    assert meta["backbone"] == "resnet18" and meta["layers"] == ["layer2", "layer3"]
    assert meta["fingerprint"].startswith("sha256:") and meta["threshold"] > 0
    run = mlflow.MlflowClient(tracking["tracking_uri"]).get_run(fit["mlflow_run_id"])
    assert run.data.params["bank.fingerprint"] == meta["fingerprint"]
    assert run.data.metrics["n_bank"] == meta["n_bank"]
    assert run.data.params["inspected_fraction"] == "1.0"
    assert run.data.tags["random_weights"] == "true" and "Random weights" in run.data.tags["mlflow.note.content"]


def test_score_accounts_for_every_input_and_resumes_without_duplicates(fitted, dataset):
    work, _, tracking = fitted
    archive = make_archive(dataset, work / "archive")
    summary = run_score(score_cfg(work, archive, tracking, run_name="nightly"))
    rows = read_rows(summary["output"])
    # 8 loose + 8 tar members + 30 video frames + 4 broken files
    assert len(rows) == summary["n_inputs"] == 50 and summary["n_errors"] == 4
    errors = {Path(r["source_uri"]).name: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"zero-bytes.png", "truncated.png", "not-an-image.jpg", "empty-video.mp4"}
    assert "empty file" in errors["zero-bytes.png"] and "truncated" in errors["truncated.png"]
    ok = [r for r in rows if r["status"] == "ok" and r["frame_index"] is None]
    assert all(Path(r["heatmap_uri"]).is_file() for r in ok)
    frames = sorted(r["frame_index"] for r in rows if r["status"] == "ok" and r["frame_index"] is not None)
    assert frames == list(range(30))
    expected_members = {f"{s}/{i:04d}.png" for s in ("good", "defect") for i in range(4)}
    assert {r["member"] for r in ok if r["member"]} == expected_members
    loose = {Path(r["source_uri"]).parent.name + "/" + Path(r["source_uri"]).name: r["score"]
             for r in ok if not r["member"]}
    tarred = {r["member"]: r["score"] for r in ok if r["member"]}
    assert loose == pytest.approx(tarred, rel=1e-4)  # same image, same score, whatever the container
    assert all(s > 0 for s in loose.values()) and len(loose) == 8

    run = mlflow.MlflowClient(tracking["tracking_uri"]).get_run(summary["mlflow_run_id"])
    assert run.data.metrics["inputs"] == 50 and run.data.metrics["errors"] == 4
    assert run.data.params["bank.version"] == "v0001"
    # which node scored what: one local node, in every row, the summary and MLflow
    (node, counts), = summary["nodes"].items()
    assert {r["node_id"] for r in rows} == {node}
    assert counts["rows"] == 50 and counts["units"] == summary["n_units"]
    assert run.data.metrics["n_nodes"] == 1 and run.data.metrics[f"node.{node[:8]}.rows"] == 50
    # the bank's random backbone and the part of each image inspected, in the summary and at the top of the run
    randomly = f"the resnet18 backbone of bank {work / 'bank' / 'v0001'} (patchcore.weights=none)"
    assert summary["random_weights"] == [randomly]
    assert run.data.tags["random_weights"] == "true" and randomly in run.data.tags["mlflow.note.content"]
    assert summary["inspected_fraction"] == summary["inspected_area_fraction"] == 1.0
    assert run.data.params["inspected_area_fraction"] == "1.0"

    again = run_score(score_cfg(work, archive, tracking, run_name="nightly"))
    assert again["n_units_skipped_as_complete"] == again["n_units"] and again["n_inputs"] == 50
    assert len(read_rows(summary["output"])) == 50

    # a unit that died half-way: its marker never came; its part holds garbage
    out = Path(summary["output"])
    victim = sorted((out / "_markers").glob("u*.json"))[0]
    victim.unlink()
    part = out / "scores" / f"part-{victim.stem}.parquet"
    part.write_bytes(b"partial write")
    third = run_score(score_cfg(work, archive, tracking, run_name="nightly"))
    assert third["n_units_skipped_as_complete"] == third["n_units"] - 1
    after = read_rows(summary["output"])
    assert len(after) == 50
    def keys(table):
        return sorted((r["source_uri"], r["member"] or "", r["frame_index"] or -1) for r in table)

    assert keys(after) == keys(rows)


def test_resume_refuses_a_different_input(fitted, dataset, tmp_path):
    from pipeline.errors import ConfigError

    work, _, tracking = fitted
    archive = make_archive(dataset, tmp_path / "a")
    run_score(score_cfg(work, archive, tracking, run_name="once", heatmaps="none"))
    with pytest.raises(ConfigError, match="run_name=once.*input"):
        run_score(score_cfg(work, dataset / "test", tracking, run_name="once"))


def test_fit_merges_shard_coresets_in_rounds_on_the_workers(ray_runtime, dataset, tmp_path):
    """A union of shard coresets larger than merge_max_vectors is merged in rounds, on the worker pool."""
    fit = run_fit(FitConfig.model_validate({
        "normal": str(dataset / "train" / "good"), "bank": str(tmp_path / "bank"),
        "patchcore": small_patchcore(merge_max_vectors=100, calibration_fraction=0), "runtime": {"workers": 2},
        "tracking": {"enabled": False}}))
    assert fit["n_feature_shards"] == 2 and fit["coreset_merge_rounds"] >= 2
    assert fit["n_bank"] == round(0.1 * 12 * 64 + 0.5)


def test_fit_with_the_official_patchsize_and_k_scores_as_it_calibrated(ray_runtime, dataset, tmp_path):
    """patchsize 5 and anomaly_scorer_num_nn 3 reach the workers, bank.json, and the scorer that loads it:
    the held-out image scores exactly the calibrated threshold (its max) when the bank is loaded again."""
    import numpy as np
    from PIL import Image

    from pipeline.config import StorageSettings
    from pipeline.detectors.patchcore import PatchCoreDetector
    from pipeline.detectors.patchcore.fit import split_calibration
    from pipeline.io.sources import list_inputs
    from pipeline.io.storage import Storage

    storage = Storage(StorageSettings())
    normal = str(dataset / "train" / "good")
    run_fit(FitConfig.model_validate({
        "normal": normal, "bank": str(tmp_path / "bank"), "runtime": {"workers": 2}, "tracking": {"enabled": False},
        "patchcore": small_patchcore(patchsize=5, anomaly_scorer_num_nn=3)}))
    meta = json.loads((tmp_path / "bank" / "v0001" / "bank.json").read_text())
    assert (meta["patchsize"], meta["anomaly_scorer_num_nn"], meta["patch_distance"]) == (5, 3, "squared")
    assert meta["bn_shift_input"] is None  # our fits keep the clean backbone
    detector = PatchCoreDetector.load(storage, str(tmp_path / "bank"))
    _, held = split_calibration(list_inputs(storage, normal), 0.1)
    image = detector.preprocess(np.array(Image.open(held[0].removeprefix("file://")).convert("RGB")))
    assert detector.score(image[None]).scores[0] == pytest.approx(meta["threshold"], rel=1e-5)
