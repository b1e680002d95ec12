"""Per-video results: the peak score and the anomalous segments after temporal smoothing."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.io.storage import Storage, join

COLUMNS = ["source_uri", "frame_index", "timestamp_s", "score", "status"]


def read_rows(storage: Storage, run_uri: str, columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """The rows of every Parquet part of a run (only ``columns``)."""
    rows: list[dict[str, Any]] = []
    folder = join(run_uri, "scores")
    if not storage.exists(folder):
        return rows
    for uri in storage.list_files(folder):
        if uri.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns).to_pylist()
    return rows


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends instead of padding with zeros."""
    if window <= 1 or len(values) == 0:
        return values.astype(np.float64)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return sums / counts


def summarize_videos(rows: list[dict[str, Any]], threshold: float | None, window: int) -> list[dict[str, Any]]:
    frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["frame_index"] is not None and row["status"] == "ok":
            frames[row["source_uri"]].append(row)
    summaries = []
    for uri, items in sorted(frames.items()):
        items.sort(key=lambda r: r["frame_index"])
        scores = np.array([r["score"] for r in items], dtype=np.float64)
        smooth = moving_average(scores, window)
        peak = int(np.argmax(scores))
        segments = []
        if threshold is not None:
            above = smooth > threshold
            edges = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(int), [0]])))
            for start, end in zip(edges[::2], edges[1::2], strict=True):
                segments.append({
                    "start_frame": items[start]["frame_index"], "end_frame": items[end - 1]["frame_index"],
                    "start_s": items[start]["timestamp_s"], "end_s": items[end - 1]["timestamp_s"],
                    "peak_score": float(scores[start:end].max()),
                })
        summaries.append({"source_uri": uri, "n_frames_scored": len(items), "max_score": float(scores[peak]),
                          "max_frame": items[peak]["frame_index"], "max_timestamp_s": items[peak]["timestamp_s"],
                          "segments": segments})
    return summaries
