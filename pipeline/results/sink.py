"""What a scoring worker writes for a work unit: heatmap overlays and raw maps, the Parquet part of its rows, and
the completion marker, in that order (names from :mod:`pipeline.results.layout`)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StorageError
from pipeline.io.storage import Storage
from pipeline.results.heatmaps import overlay_png

ROW_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("unit_id", pa.string()),
    ("detector", pa.string()),
    ("model_version", pa.string()),
    ("source_uri", pa.string()),
    ("member", pa.string()),
    ("member_index", pa.int32()),  # position in its tar (two members may share a name)
    ("frame_index", pa.int64()),
    ("timestamp_s", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("score", pa.float32()),
    ("is_anomaly", pa.bool_()),
    ("threshold", pa.float32()),
    ("heatmap_uri", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("latency_ms", pa.float32()),
    ("map_uri", pa.string()),  # raw anomaly map, float16 .npy at the scored resolution (jobs.score --maps)
])


def write_part(storage: Storage, uri: str, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue())


def write_marker(storage: Storage, uri: str, fingerprint: str, counts: dict[str, Any]) -> None:
    storage.write_bytes(uri, json.dumps({"fingerprint": fingerprint, "counts": counts}).encode())


def read_marker(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except (StorageError, ValueError):
        return None


def write_overlay(storage: Storage, uri: str, rgb: np.ndarray, amap: np.ndarray, scale: float) -> None:
    """The colour overlay of ``amap`` on the decoded image, as PNG (see :mod:`pipeline.results.heatmaps`)."""
    storage.write_bytes(uri, overlay_png(rgb, amap, scale))


def write_map(storage: Storage, uri: str, amap: np.ndarray) -> None:
    """The raw map as float16 ``.npy`` (no pickle), for pixel metrics."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(amap, dtype=np.float16), allow_pickle=False)
    storage.write_bytes(uri, buffer.getvalue())
