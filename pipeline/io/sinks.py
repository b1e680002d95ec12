"""Result rows as Parquet parts, completion markers, and heatmap overlays.

Output layout under ``{output}/{run_id}/``::

    run.json                    the run's manifest (inputs, bank, bucket count) for resume
    scores/part-{unit}.parquet  one part per work unit, every input of the unit, one row each
    _markers/{unit}.json        written after the part: the unit is complete (with its counts)
    heatmaps/{unit}/{key}.png   colour overlays, referenced by the rows' ``heatmap_uri``
    heatmaps/{unit}/{key}.npy   raw maps (float16, ``--maps``), referenced by ``map_uri``
    summary.json                counts and timings of the whole run
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.storage import Storage, StorageError, join

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


def part_uri(output: str, run_id: str, unit_id: str) -> str:
    return join(output, run_id, "scores", f"part-{unit_id}.parquet")


def marker_uri(output: str, run_id: str, unit_id: str) -> str:
    return join(output, run_id, "_markers", f"{unit_id}.json")


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


def heatmap_key(source_uri: str, member_index: int | None, frame_index: int | None) -> str:
    """A file name unique per row key (never derived from a member's own name)."""
    return hashlib.sha1(f"{source_uri}\0{member_index}\0{frame_index}".encode()).hexdigest()[:20]
