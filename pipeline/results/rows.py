"""Reading a run's rows back: every Parquet part under ``scores/``."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq

from pipeline.io.storage import Storage
from pipeline.results.layout import RunLayout

COLUMNS = ["source_uri", "frame_index", "timestamp_s", "score", "status"]


def read_rows(storage: Storage, run_uri: str, columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """The rows of every Parquet part of a run (only ``columns``)."""
    rows: list[dict[str, Any]] = []
    folder = RunLayout(run_uri).scores
    if not storage.exists(folder):
        return rows
    for uri in storage.list_files(folder):
        if uri.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=columns).to_pylist()
    return rows
