"""Video archives: PyAV decoding, frame-range units, broken videos, segments, frame AUC."""

import json
from pathlib import Path

import pytest
from conftest import small_patchcore

from jobs.evaluate import main as evaluate_main
from pipeline.config import FitConfig, ScoreConfig, StorageSettings
from pipeline.demo_data import make_video
from pipeline.fit import run_fit
from pipeline.io.storage import Storage
from pipeline.io.video import VideoError, frame_ranges, iter_frames, probe
from pipeline.score import run_score
from pipeline.video_summary import read_rows

STORAGE = Storage(StorageSettings())
TREE = Path(__file__).resolve().parent / "data" / "tree.avi"  # real Cinepak video (OpenCV sample data)


def frames(path, start=0, end=None, stride=1) -> list[int]:
    return [f.index for f in iter_frames(STORAGE, str(path), start, end, stride)]


@pytest.mark.parametrize("stride", [1, 3])
def test_frame_range_units_decode_exactly_the_frames_of_the_whole_video(tmp_path, stride):
    clip = make_video(tmp_path / "clip.mp4", n_frames=40, size=64)
    for path in (clip, TREE):
        info = probe(STORAGE, str(path))
        ranges = frame_ranges(info, 15, stride)
        assert len(ranges) > 1 and ranges[-1][1] is None
        split = [i for start, end in ranges for i in frames(path, start, end, stride)]
        assert split == frames(path, 0, None, stride)
    assert frames(clip, stride=stride) == list(range(0, 40, stride))
    assert len(frames(TREE)) == 68  # a real file with dropped frames: indices follow timestamps


def test_broken_videos_raise_with_a_reason_after_keeping_decoded_frames(tmp_path):
    clip = make_video(tmp_path / "clip.mkv", n_frames=60, size=64)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    kept = []
    with pytest.raises(VideoError, match="truncated"):
        for frame in iter_frames(STORAGE, str(cut), 0, None, 1):
            kept.append(frame.index)
    assert kept and kept == list(range(len(kept)))
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="not a decodable video"):
        probe(STORAGE, str(tmp_path / "zero.mp4"))


def test_video_archive_scored_end_to_end_with_segments_and_frame_auc(ray_runtime, tmp_path, capsys):
    normal = make_video(tmp_path / "normal" / "line.mp4", n_frames=40, size=64, seed=1)
    archive = tmp_path / "archive"
    make_video(archive / "cam1.mp4", n_frames=50, size=64, anomalous=range(20, 32), seed=2)
    good = make_video(tmp_path / "x.mkv", n_frames=30, size=64, seed=3)
    (archive / "cam2-cut.mkv").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (archive / "cam3-empty.mp4").write_bytes(b"")
    common = {"runtime": {"workers": 2}, "tracking": {"enabled": False}}
    fit = run_fit(FitConfig.model_validate({"normal": str(normal.parent), "bank": str(tmp_path / "bank"),
                                            "patchcore": small_patchcore(calibration_fraction=0)} | common))
    assert fit["n_train_images"] == 40
    summary = run_score(ScoreConfig.model_validate({
        "input": str(archive), "bank": str(tmp_path / "bank"), "output": str(tmp_path / "out"), "run_name": "r",
        "threshold": 0.0, "video": {"frames_per_unit": 16, "smoothing_window": 3}} | common))
    rows = read_rows(STORAGE, summary["output"], columns=None)
    cam1 = sorted((r for r in rows if r["source_uri"].endswith("cam1.mp4")), key=lambda r: r["frame_index"])
    assert [r["frame_index"] for r in cam1] == list(range(50))
    assert cam1[10]["timestamp_s"] == pytest.approx(1.0)
    errors = {Path(r["source_uri"]).name: r for r in rows if r["status"] == "error"}
    assert set(errors) == {"cam2-cut.mkv", "cam3-empty.mp4"}
    assert "truncated" in errors["cam2-cut.mkv"]["error"]
    cut_frames = [r for r in rows if r["source_uri"].endswith("cam2-cut.mkv") and r["status"] == "ok"]
    assert len(cut_frames) > 5  # frames decoded before the break are kept

    # threshold = the highest normal-frame score: the defect frames stand out as one segment
    normal_peak = max(r["score"] for r in cam1 if not 20 <= r["frame_index"] < 32)
    assert min(r["score"] for r in cam1 if 20 <= r["frame_index"] < 32) > normal_peak
    again = run_score(ScoreConfig.model_validate({
        "input": str(archive), "bank": str(tmp_path / "bank"), "output": str(tmp_path / "out"), "run_name": "r2",
        "threshold": normal_peak, "video": {"frames_per_unit": 16, "smoothing_window": 1}} | common))
    videos = {Path(v["source_uri"]).name: v for v in
              json.loads((tmp_path / "out" / "r2" / "videos.json").read_text())}
    (segment,) = videos["cam1.mp4"]["segments"]
    assert (segment["start_frame"], segment["end_frame"]) == (20, 31)
    heatmapped = [r["frame_index"] for r in read_rows(STORAGE, again["output"], columns=None)
                  if r["source_uri"].endswith("cam1.mp4") and r["heatmap_uri"]]
    assert sorted(heatmapped) == list(range(20, 32))  # heatmaps for anomalous frames only

    labels = tmp_path / "labels.csv"
    labels.write_text("source,frame_index,label\n" + "".join(
        f"cam1.mp4,{i},{int(20 <= i < 32)}\n" for i in range(50)))
    assert evaluate_main(["--output", again["output"], "--labels", str(labels), "--no-tracking"]) == 0
    result = json.loads((tmp_path / "out" / "r2" / "evaluation.json").read_text())
    assert result["frame_auc"] == 1.0 and result["n_frames"] == 50 and result["n_positive"] == 12
