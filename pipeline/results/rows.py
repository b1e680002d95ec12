"""Reading a run's rows back: the compacted table of a completed run, else every Parquet part under ``scores/``."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import StorageError
from pipeline.io.storage import Storage
from pipeline.results.layout import RunLayout
from pipeline.results.table import PART_MAX_BYTES, table_files

COLUMNS = ["source_uri", "frame_index", "timestamp_s", "score", "status"]


def read_rows(storage: Storage, run_uri: str, columns: list[str] | None = COLUMNS) -> list[dict[str, Any]]:
    """The rows of a run (only ``columns``; None: all): from its table when the table is whole, else from
    every Parquet part (read concurrently)."""
    layout = RunLayout(run_uri)
    uris = table_files(storage, layout)
    if uris is None:
        if not storage.exists(layout.scores):
            return []
        uris = [u for u in storage.list_files(layout.scores) if u.endswith(".parquet")]
    rows: list[dict[str, Any]] = []
    for data in storage.read_many(uris, PART_MAX_BYTES):
        if isinstance(data, StorageError):
            raise data
        rows += pq.read_table(io.BytesIO(data), columns=columns).to_pylist()
    return rows
