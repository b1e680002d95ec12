"""What a scoring worker writes for a work unit: heatmap overlays and raw maps, the Parquet part of its rows, and
the completion marker, in that order (names from :mod:`pipeline.results.layout`). The worker stores overlays
and maps through an :class:`~pipeline.io.uploads.Uploader` (off the scoring path) and writes the part, then the
marker, only once that has stored them all."""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StorageError, TransientStorageError
from pipeline.io.storage import Storage
from pipeline.results.layout import RunLayout

MARKER_MAX_BYTES = 1 << 20

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
    ("node_id", pa.string()),  # the Ray node that scored the row (null: its unit failed for good)
    ("worker", pa.string()),  # that worker: "<host>:<pid>", ":gpu<ids>" when it held GPUs
])


def write_part(storage: Storage, uri: str, rows: list[dict[str, Any]]) -> None:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue())


def write_marker(storage: Storage, uri: str, fingerprint: str, counts: dict[str, Any]) -> None:
    storage.write_bytes(uri, json.dumps({"fingerprint": fingerprint, "counts": counts}).encode())


def completed_units(storage: Storage, layout: RunLayout, fingerprints: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The counts of every unit of ``fingerprints`` (unit id -> fingerprint) whose marker holds that
    fingerprint: one listing of ``_markers/``, then the listed markers read concurrently. A marker that
    cannot be read or parsed counts as absent (the unit is scored again)."""
    try:
        listed = {posixpath.basename(uri) for uri in storage.list_files(layout.markers)}
    except TransientStorageError:
        raise
    except StorageError:  # no _markers/ yet
        return {}
    units = [unit_id for unit_id in fingerprints if f"{unit_id}.json" in listed]
    done = {}
    for unit_id, data in zip(units, storage.read_many([layout.marker(u) for u in units], MARKER_MAX_BYTES),
                             strict=True):
        try:
            marker = json.loads(data) if isinstance(data, bytes) else None
        except ValueError:
            marker = None
        if isinstance(marker, dict) and marker.get("fingerprint") == fingerprints[unit_id]:
            done[unit_id] = marker["counts"]
    return done


def encode_map(amap: np.ndarray) -> bytes:
    """The raw map as float16 ``.npy`` (no pickle), for pixel metrics."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(amap, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()
