"""Per-video results: the peak score and the anomalous segments after temporal smoothing."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average, as long as ``values``: index ``i`` averages ``values[i - window // 2]``
    to ``values[i + (window - 1) // 2]``, the window shrinking at the ends instead of padding with
    zeros (so a video with fewer frames than ``window`` gets the mean of what it has)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values.copy()
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    lo = np.maximum(index - window // 2, 0)
    hi = np.minimum(index + (window - 1) // 2 + 1, len(values))
    return (sums[hi] - sums[lo]) / (hi - lo)


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
