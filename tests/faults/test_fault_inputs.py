"""Hostile inputs: a FIFO, a video whose header lies, 1-frame and strided short videos, duplicate tar
member names, float TIFFs with NaN/inf. Each run ends with one row per input and no duplicate keys."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import ScoreConfig, StorageSettings, VideoSettings
from pipeline.demo_data import make_video
from pipeline.io.sources import plan_video_units
from pipeline.io.storage import Storage
from pipeline.score import run_score
from tests.helpers.faults import assert_all_units_marked, assert_complete, lying_avi

FEW_UNITS = 16  # most work units a 20-frame video whose header claims 10^9 frames may be planned into
UNIT_TIMEOUT_S = 60.0  # a unit that blocks (a FIFO read, a runaway decode) fails instead of hanging the suite


def score(fault_data, folder: Path, output: Path, **extra) -> dict:
    return run_score(ScoreConfig.model_validate({
        "input": str(folder), "bank": str(fault_data.bank), "output": str(output), "run_name": "r",
        "runtime": {"workers": 1, "unit_timeout_s": UNIT_TIMEOUT_S}, "tracking": {"enabled": False}} | extra))


def by_name(rows: list[dict]) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for row in rows:
        named.setdefault(Path(row["source_uri"]).name, []).append(row)
    return named


def test_fifo_in_the_input_gets_an_error_row_and_never_blocks(fault_data, tmp_path, record_property):
    folder = tmp_path / "in"
    folder.mkdir()
    for src in sorted(fault_data.images.iterdir())[:4]:
        shutil.copyfile(src, folder / src.name)
    fifo = folder / "stuck.png"
    os.mkfifo(fifo)
    try:
        summary = score(fault_data, folder, tmp_path / "out", images_per_unit=2)
    finally:
        with contextlib.suppress(OSError):  # if anything still waits on the FIFO, give it an end-of-file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    rows = assert_complete(summary["output"], 5)
    named = by_name(rows)
    (fifo_row,) = named["stuck.png"]
    assert fifo_row["status"] == "error" and "not a regular file" in fifo_row["error"], fifo_row
    assert all(r["status"] == "ok" for name, rs in named.items() if name != "stuck.png" for r in rs)
    assert_all_units_marked(summary["output"], summary)
    record_property("outcome", f"{len(rows)} rows / 5 inputs, FIFO: error {fifo_row['error']!r}, 4 ok")


def test_video_whose_header_claims_a_billion_frames(fault_data, tmp_path, record_property):
    video = lying_avi(tmp_path / "in" / "liar.avi", n_frames=20)
    # Few units, never as many as the header's claim needs (checked before scoring: 10^9 /
    # frames_per_unit units would never finish); here also no more than the file's bytes allow.
    bound = min(FEW_UNITS, math.ceil(video.stat().st_size / VideoSettings().frames_per_unit))
    planned = plan_video_units(Storage(StorageSettings()), [str(video)], VideoSettings())
    assert len(planned) <= bound, f"{len(planned)} work units planned for a 20-frame video whose header claims 10^9"
    summary = score(fault_data, video.parent, tmp_path / "out",
                    runtime={"workers": 2, "unit_timeout_s": UNIT_TIMEOUT_S})
    assert summary["n_units"] == len(planned) and summary["failed_units"] == []
    rows = assert_complete(summary["output"], summary["n_inputs"])
    ok = sorted(r["frame_index"] for r in rows if r["status"] == "ok")
    errors = [r for r in rows if r["status"] != "ok"]
    assert ok == list(range(20)), "each real frame scored exactly once"
    assert len(errors) <= 1, errors
    assert len(rows) == 20 + len(errors)
    record_property("outcome", f"{summary['n_units']} units (file {video.stat().st_size} bytes), {len(rows)} rows: "
                               f"frames 0-19 once each + {len(errors)} error row(s) "
                               f"{[e['error'] for e in errors]}, 0 duplicates")


def test_lying_header_on_a_video_of_real_size_plans_few_units(tmp_path, record_property):
    """The same 20 frames and the same lie in a 4 MB file (real videos are megabytes to gigabytes):
    the plan must not grow with the file's size. Planning only: scoring thousands of units would take
    minutes."""
    video = lying_avi(tmp_path / "liar-4mb.avi", n_frames=20, pad_bytes=4 * 2**20)
    planned = plan_video_units(Storage(StorageSettings()), [str(video)], VideoSettings())
    record_property("outcome", f"{len(planned)} units planned for 20 real frames in {video.stat().st_size} bytes")
    assert len(planned) <= FEW_UNITS, (f"{len(planned)} work units planned for a 20-frame, "
                                       f"{video.stat().st_size}-byte video whose header claims 10^9 frames")


def test_one_frame_video_and_short_strided_video(fault_data, tmp_path, record_property):
    folder = tmp_path / "in"
    make_video(folder / "one-frame.mp4", n_frames=1, size=64)
    make_video(folder / "thirty.mp4", n_frames=30, size=64)
    summary = score(fault_data, folder, tmp_path / "out", video={"frame_stride": 4, "smoothing_window": 9})
    rows = assert_complete(summary["output"], 1 + 8)
    named = by_name(rows)
    assert [r["frame_index"] for r in named["one-frame.mp4"]] == [0]
    assert sorted(r["frame_index"] for r in named["thirty.mp4"]) == list(range(0, 30, 4))
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    videos = json.loads((Path(summary["output"]) / "videos.json").read_text())
    assert sorted(Path(v["source_uri"]).name for v in videos) == ["one-frame.mp4", "thirty.mp4"]
    assert {Path(v["source_uri"]).name: v["n_frames_scored"] for v in videos} == {"one-frame.mp4": 1, "thirty.mp4": 8}
    assert_all_units_marked(summary["output"], summary)
    record_property("outcome", f"{len(rows)} rows / 9 sampled frames (1 + 8), all ok, videos.json with 2 videos")


def test_tar_with_two_members_of_the_same_name(fault_data, tmp_path, record_property):
    folder = tmp_path / "in"
    folder.mkdir()
    first, second = sorted(fault_data.images.iterdir())[:2]
    with tarfile.open(folder / "dup.tar", "w") as tar:
        tar.add(first, arcname="a.png")
        tar.add(second, arcname="a.png")
    summary = score(fault_data, folder, tmp_path / "out", heatmaps="all")
    rows = assert_complete(summary["output"], 2)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert {r["member"] for r in rows} == {"a.png"}
    assert sorted(r["member_index"] for r in rows) == [0, 1]
    heatmaps = {r["heatmap_uri"] for r in rows}
    assert len(heatmaps) == 2 and None not in heatmaps
    assert all(Path(h).is_file() for h in heatmaps)
    assert rows[0]["score"] != rows[1]["score"]  # two different images, each scored
    record_property("outcome", "2 rows / 2 members, member_index 0 and 1, 2 distinct heatmap files")


def test_float_tiff_with_nan_and_inf_pixels(fault_data, tmp_path, record_property):
    folder = tmp_path / "in"
    folder.mkdir()
    clean = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    assert Image.fromarray(clean).mode == "F"
    Image.fromarray(clean).save(folder / "clean.tiff")
    broken = clean.copy()
    broken[5, 7], broken[20, 30], broken[40, 2] = np.nan, np.inf, -np.inf
    Image.fromarray(broken).save(folder / "nonfinite.tiff")
    summary = score(fault_data, folder, tmp_path / "out")
    rows = assert_complete(summary["output"], 2)
    named = by_name(rows)
    (bad,) = named["nonfinite.tiff"]
    (good,) = named["clean.tiff"]
    assert bad["status"] == "error" and "non-finite" in (bad["error"] or ""), bad
    assert good["status"] == "ok", good
    record_property("outcome", f"2 rows / 2 inputs: clean.tiff ok, nonfinite.tiff error {bad['error']!r}")
