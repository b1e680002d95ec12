"""Video archives: PyAV decoding, frame-range units, broken videos, segments, frame AUC."""

import itertools
import json
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from jobs.evaluate import main as evaluate_main
from pipeline.config import DecodeSettings, FitConfig, ScoreConfig, StorageSettings, VideoSettings
from pipeline.demo_data import make_video
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.errors import VideoError
from pipeline.evaluation.segments import moving_average
from pipeline.io.batches import Decoded, Failed, _iter_decoded
from pipeline.io.sources import plan_video_units
from pipeline.io.storage import Storage
from pipeline.io.video import MIN_PLAUSIBLE_BYTES_PER_FRAME, frame_ranges, iter_frames, probe
from pipeline.results.rows import read_rows
from pipeline.score import run_score
from tests.helpers import TEST_DATA
from tests.helpers.runs import small_patchcore

STORAGE = Storage(StorageSettings())
TREE = TEST_DATA / "tree.avi"  # real Cinepak video (OpenCV sample data)


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
    with pytest.raises(VideoError, match=r"^empty file \(0 bytes\)$"):
        probe(STORAGE, str(tmp_path / "zero.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video " * 100)
    with pytest.raises(VideoError, match="not a decodable video"):
        probe(STORAGE, str(tmp_path / "junk.mp4"))


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


def write_avi(path: Path, n_frames: int, header_frames: int | None = None) -> Path:
    """A small MJPEG AVI; ``header_frames`` overwrites the frame counts its header declares
    (``dwTotalFrames`` in ``avih``, ``dwLength`` in the video ``strh``), as a lying muxer would."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 8 % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if header_frames is not None:
        data = bytearray(path.read_bytes())
        for tag, offset in ((b"avih", 16), (b"strh", 32)):
            at = data.index(tag) + 8 + offset
            assert struct.unpack_from("<I", data, at)[0] == n_frames
            struct.pack_into("<I", data, at, header_frames)
        path.write_bytes(bytes(data))
    return path


def run_units(units) -> tuple[list[Decoded], list[Failed]]:
    decoded, failed = [], []
    for unit in units:
        for item in _iter_decoded(STORAGE, unit, DecodeSettings()):
            (decoded if isinstance(item, Decoded) else failed).append(item)
    return decoded, failed


@pytest.mark.parametrize("header_frames, frames_per_unit, stride", [
    (10**9, 1500, 1), (10**9, 1000, 3), (200, 8, 1), (200, 9, 3)])
def test_a_lying_header_plans_few_units_and_gives_one_error_row(tmp_path, header_frames, frames_per_unit, stride):
    path = write_avi(tmp_path / "liar.avi", 30, header_frames)
    size = path.stat().st_size
    planned = probe(STORAGE, str(path)).n_frames
    assert planned == (30 if header_frames * MIN_PLAUSIBLE_BYTES_PER_FRAME > size else header_frames)
    units = plan_video_units(STORAGE, [str(path)], VideoSettings(frames_per_unit=frames_per_unit, frame_stride=stride))
    assert len(units) <= planned // frames_per_unit + 1
    assert all(u.frame_start % stride == 0 and (u.frame_end or 0) % stride == 0 for u in units)
    decoded, failed = run_units(units)
    assert [d.frame_index for d in decoded] == list(range(0, 30, stride))  # every real frame once, in order
    (error,) = failed
    assert error.frame_index == 30 and "header promises" in error.error and "truncated" in error.error
    keys = [(i.source_uri, i.member_index, i.frame_index) for i in decoded + failed]
    assert len(keys) == len(set(keys))
    holder = next(u for u in units if u.frame_start <= 29 and (u.frame_end is None or u.frame_end > 29))
    assert run_units([holder])[1] == failed  # the unit holding the real end reports it


def test_an_honest_avi_gives_no_error_and_splits_cleanly(tmp_path):
    path = write_avi(tmp_path / "honest.avi", 30)
    units = plan_video_units(STORAGE, [str(path)], VideoSettings(frames_per_unit=7))
    assert len(units) == 5
    decoded, failed = run_units(units)
    assert [d.frame_index for d in decoded] == list(range(30)) and not failed


def test_a_truncated_video_split_in_units_gives_one_error_at_its_real_end(tmp_path):
    clip = make_video(tmp_path / "clip.mkv", n_frames=60, size=64)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    units = plan_video_units(STORAGE, [str(cut)], VideoSettings(frames_per_unit=10))
    assert len(units) == 6
    decoded, failed = run_units(units)
    indices = [d.frame_index for d in decoded]
    assert indices == list(range(len(indices))) and 5 < len(indices) < 60
    (error,) = failed
    assert error.frame_index == indices[-1] + 1 and "truncated" in error.error


def test_a_video_that_cannot_be_opened_gives_one_error_without_frame_index(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    units = plan_video_units(STORAGE, [str(tmp_path / "zero.mp4")], VideoSettings())
    decoded, failed = run_units(units)
    assert len(units) == 1 and not decoded
    (error,) = failed
    assert error.frame_index is None and error.error == "empty file (0 bytes)"


def naive_moving_average(values: np.ndarray, window: int) -> np.ndarray:
    n = len(values)
    return np.array([values[max(0, i - window // 2): min(n, i + (window - 1) // 2 + 1)].mean() for i in range(n)])


def test_moving_average_keeps_the_length_and_shrinks_the_window_at_the_ends():
    rng = np.random.default_rng(0)
    for window in (1, 2, 3, 4, 5, 8, 9, 16):
        for n in sorted({0, 1, 2, max(0, window - 1), window, window + 1, 3 * window + 2}):
            values = rng.normal(size=n)
            smooth = moving_average(values, window)
            assert smooth.shape == (n,), (window, n)
            assert np.allclose(smooth, naive_moving_average(values, window)), (window, n)
    assert np.array_equal(moving_average(np.array([1.0, 3.0]), 9), [2.0, 2.0])


@pytest.mark.parametrize("fps", [5, 12, 25])
def test_splitting_a_video_never_changes_which_frames_are_scored(tmp_path, fps):
    """Any frames_per_unit x stride (or target fps): the split units' frames are the whole-video unit's, once each."""
    path = make_video(tmp_path / f"clip{fps}.mp4", n_frames=23, size=32, fps=fps)
    whole_info = probe(STORAGE, str(path))
    for per_unit in (1, 2, 3, 5, 7, 16, 40):
        for sampling in ({"frame_stride": 1}, {"frame_stride": 2}, {"frame_stride": 3}, {"frame_stride": 5},
                         {"fps": fps / 4}):
            case = (fps, per_unit, sampling)
            units = plan_video_units(STORAGE, [str(path)], VideoSettings(frames_per_unit=per_unit, **sampling))
            stride = units[0].frame_stride
            whole = plan_video_units(STORAGE, [str(path)], VideoSettings(frames_per_unit=10**6, **sampling))
            assert len(whole) == 1 and whole[0].frame_end is None, case
            reference, no_errors = run_units(whole)
            assert [d.frame_index for d in reference] == list(range(0, 23, stride)) and not no_errors, case
            decoded, failed = run_units(units)
            assert not failed, case
            assert [d.frame_index for d in decoded] == [d.frame_index for d in reference], case
            ranges = frame_ranges(whole_info, per_unit, stride)
            assert ranges[0][0] == 0 and ranges[-1][1] is None, case
            assert all(a[1] == b[0] and a[1] % stride == 0 for a, b in itertools.pairwise(ranges)), case


@pytest.mark.parametrize("target_fps, stride", [(None, 3), (25, 1), (50, 1), (12.5, 2), (5, 5), (6, 4)])
def test_a_target_fps_keeps_every_round_fps_over_target_th_frame(tmp_path, target_fps, stride):
    """``--fps F`` on a 25 fps video keeps one frame in round(25 / F), at least every frame; without it
    ``--frame-stride`` (3 here) applies."""
    path = make_video(tmp_path / "clip25.mp4", n_frames=20, size=32, fps=25)
    units = plan_video_units(STORAGE, [str(path)], VideoSettings(frame_stride=3, fps=target_fps))
    decoded, failed = run_units(units)
    assert not failed
    assert [d.frame_index for d in decoded] == list(range(0, 20, stride))


def test_frames_from_a_seek_carry_their_time_and_pixels(tmp_path):
    """Rows get ``timestamp_s`` from the frame's pts and heatmaps its pixels, for a unit that starts mid-video."""
    clip = make_video(tmp_path / "clip.mp4", n_frames=12, size=32, fps=10)
    got = list(iter_frames(STORAGE, str(clip), 4, None, 2))
    assert [f.index for f in got] == [4, 6, 8, 10]
    assert [f.timestamp_s for f in got] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert all(f.rgb.shape == (32, 32, 3) and f.rgb.dtype == np.uint8 for f in got)
    assert not np.array_equal(got[0].rgb, got[1].rgb)  # the texture drifts: distinct frames, not one repeated
