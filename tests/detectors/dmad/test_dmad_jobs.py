"""DMAD through the jobs: data-parallel training on Ray workers, a checkpoint, then scoring videos."""

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipeline.config import ScoreConfig, StorageSettings, TrainConfig
from pipeline.demo_data import make_video
from pipeline.detectors.dmad import DMADDetector
from pipeline.io.storage import Storage
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from pipeline.train import run_train
from tests.helpers.runs import free_port  # noqa: F401 - keeps conftest's environment set-up

TINY = {"variant": "video", "image_size": 256, "in_frames": 2, "code_dim": 16, "skip_channels": 2,
        "offset_channels": 8, "codebook_size": 16, "window": 3, "window_keep": 2}


def test_train_on_two_workers_then_score_a_video(ray_runtime, tmp_path):
    normal = tmp_path / "normal"
    for seed in (1, 2):
        make_video(normal / f"cam{seed}.mp4", n_frames=24, size=48, seed=seed)
    tracking = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    model = tmp_path / "models" / "dmad-video.pt"
    summary = run_train(TrainConfig.model_validate({
        "normal": str(normal), "model_out": str(model), "steps": 12, "batch_size": 4, "dmad": TINY,
        "runtime": {"workers": 2}, "tracking": tracking}))
    assert model.is_file() and summary["version"].startswith("sha256:")
    assert summary["samples_per_worker"] == [22, 22]  # one video each, 24 frames - 2 context
    assert summary["loss_last"] < summary["loss_first"]
    client = mlflow.MlflowClient(tracking["tracking_uri"])
    history = client.get_metric_history(summary["mlflow_run_id"], "loss_total")
    assert len(history) == 12
    assert {"model/dmad.pt", "train_summary.json"} <= {a.path for a in client.list_artifacts(
        summary["mlflow_run_id"])} | {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "model")}

    archive = tmp_path / "archive"
    make_video(archive / "line.mp4", n_frames=30, size=48, anomalous=range(18, 24), seed=3)
    (archive / "still.png").write_bytes(b"")
    scored = run_score(ScoreConfig.model_validate({
        "input": str(archive), "detector": "dmad", "model": str(model), "output": str(tmp_path / "out"),
        "run_name": "dmad", "video": {"frames_per_unit": 10}, "runtime": {"workers": 2},
        "tracking": {"enabled": False}}))
    rows = read_rows(Storage(StorageSettings()), scored["output"], columns=None)
    frames = sorted((r for r in rows if r["source_uri"].endswith("line.mp4")), key=lambda r: r["frame_index"])
    assert [r["frame_index"] for r in frames] == list(range(30))
    assert [r["status"] for r in frames[:2]] == ["unscored", "unscored"]
    assert all(r["status"] == "ok" and np.isfinite(r["score"]) for r in frames[2:])
    assert all(r["model_version"] == summary["version"] for r in frames)
    image_row = next(r for r in rows if r["source_uri"].endswith("still.png"))
    assert image_row["status"] == "error"
    run = json.loads((tmp_path / "out" / "dmad" / "summary.json").read_text())
    assert run["model_version"] == summary["version"] and run["n_inputs"] == 31
    assert Path(scored["output"]).name == "dmad"


def test_image_variant_trains_and_scores_images(ray_runtime, dataset, tmp_path):
    model = tmp_path / "dmad-image.pt"
    run_train(TrainConfig.model_validate({
        "normal": str(dataset / "train" / "good"), "model_out": str(model), "steps": 3, "batch_size": 2,
        "dmad": {"variant": "image", "image_size": 64, "backbone": "resnet18", "offset_channels": 4,
                 "codebook_size": 16},
        "runtime": {"workers": 2}, "tracking": {"enabled": False}}))
    scored = run_score(ScoreConfig.model_validate({
        "input": str(dataset / "test"), "detector": "dmad", "model": str(model), "output": str(tmp_path / "out"),
        "run_name": "img", "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    rows = read_rows(Storage(StorageSettings()), scored["output"], columns=None)
    assert len(rows) == 8 and all(r["status"] == "ok" and np.isfinite(r["score"]) for r in rows)
    assert all(r["heatmap_uri"] for r in rows)
    assert scored["random_weights"] == ["DMAD's frozen resnet18 image encoder (dmad.weights=none)"]


def test_shanghai_layout_trains_one_background_per_scene_and_scores_by_file_name(ray_runtime, tmp_path):
    normal = tmp_path / "normal"
    make_video(normal / "01_001.mp4", n_frames=6, size=48, seed=1)
    make_video(normal / "02_001.mp4", n_frames=6, size=48, seed=2)
    model = tmp_path / "shanghai.pt"
    run_train(TrainConfig.model_validate({
        "normal": str(normal), "model_out": str(model), "steps": 2, "batch_size": 2,
        "dmad": {**TINY, "layout": "shanghai", "colour": "gray", "scenes": 2}, "runtime": {"workers": 2},
        "tracking": {"enabled": False}}))
    det = DMADDetector.load(Storage(StorageSettings()), str(model))
    backgrounds = det.model.background.detach()
    assert not torch.allclose(backgrounds[0], backgrounds[1], atol=1e-3)  # each scene started from its own frames

    archive = tmp_path / "archive"
    make_video(archive / "02_0007.mp4", n_frames=6, size=48, seed=2)
    make_video(archive / "lobby.mp4", n_frames=6, size=48, seed=3)
    scored = run_score(ScoreConfig.model_validate({
        "input": str(archive), "detector": "dmad", "model": str(model), "output": str(tmp_path / "out"),
        "run_name": "sh", "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    rows = read_rows(Storage(StorageSettings()), scored["output"], columns=None)
    scene_rows = [r for r in rows if r["source_uri"].endswith("02_0007.mp4")]
    assert [r["status"] for r in sorted(scene_rows, key=lambda r: r["frame_index"])] == ["unscored"] * 2 + ["ok"] * 4
    lobby = [r for r in rows if r["source_uri"].endswith("lobby.mp4")]
    assert len(lobby) == 1 and lobby[0]["status"] == "error" and "scene" in lobby[0]["error"]


class _RayStarted(Exception):
    pass


def _stop_at_ray(*_: object) -> None:
    raise _RayStarted


def test_image_variant_on_a_random_encoder_warns_before_training(dataset, tmp_path, caplog, monkeypatch):
    """Issue 21: DMAD trained on a random frozen encoder without a word, where PatchCore and the CLIP detectors warn.
    The warning comes from the driver's check, before Ray starts; the video variant (all weights learned) has none."""
    import pipeline.train

    monkeypatch.setattr(pipeline.train, "init_ray", _stop_at_ray)
    caplog.set_level(logging.WARNING)
    warnings = {}
    for variant in ("image", "video"):
        caplog.clear()
        with pytest.raises(_RayStarted):
            run_train(TrainConfig.model_validate({
                "detector": "dmad", "normal": str(dataset / "train" / "good"), "model_out": str(tmp_path / "m.pt"),
                "dmad": {"variant": variant}, "tracking": {"enabled": False}}))
        warnings[variant] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (line,) = warnings["image"]
    assert line.startswith("dmad.weights=none: the image variant's frozen wide_resnet50_2 encoder is randomly "
                           "initialised"), line
    assert warnings["video"] == []
