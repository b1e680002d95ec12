"""Frame-level evaluation of a scored run against per-frame labels.

Labels are CSV: ``frame_index,label`` for a run with one video, or ``source,frame_index,label``
where ``source`` matches the end of a row's ``source_uri`` (a file name is enough).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from pipeline.metrics import roc_auc


def parse_labels(text: str) -> dict[tuple[str | None, int], int]:
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or [])
    if not {"frame_index", "label"} <= fields:
        raise ValueError(f"labels: need columns frame_index,label (and optionally source); got {sorted(fields)}")
    labels = {}
    for line, row in enumerate(reader, start=2):
        try:
            labels[(row.get("source") or None, int(row["frame_index"]))] = int(row["label"])
        except ValueError as exc:
            raise ValueError(f"labels line {line}: {exc}") from exc
    return labels


def frame_auc(rows: list[dict[str, Any]], labels: dict[tuple[str | None, int], int]) -> dict[str, Any]:
    scored = [r for r in rows if r["status"] == "ok" and r["frame_index"] is not None]
    videos = sorted({r["source_uri"] for r in scored})
    sources = {s for s, _ in labels}
    if sources == {None} and len(videos) != 1:
        raise ValueError(f"labels have no source column but the run has {len(videos)} videos")
    y, s = [], []
    for r in scored:
        if sources == {None}:
            key = (None, r["frame_index"])
        else:
            match = [src for src in sources if src and r["source_uri"].endswith(src)]
            key = (match[0], r["frame_index"]) if match else None
        if key in labels:
            y.append(labels[key])
            s.append(r["score"])
    if not y:
        raise ValueError("no scored frame matches a labelled frame")
    return {"frame_auc": roc_auc(np.array(y), np.array(s)), "n_frames": len(y), "n_positive": int(sum(y)),
            "n_videos": len(videos)}
