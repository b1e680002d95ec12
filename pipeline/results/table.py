"""A completed run's rows as a table to query: a few large Parquet files under ``{run}/table/``.

The per-unit parts under ``scores/`` are what resume needs (one small file per unit, written whole
or not at all); a query engine (DuckDB, Spark, Athena, ``pyarrow.dataset``) pays a request and a
footer per file, so a finished run is also compacted here: parts are read in order (concurrently,
a bounded window at a time) and cut into files of about ``TARGET_FILE_BYTES`` each, by row count
(estimated from the parts' own bytes per row), then ``_SUCCESS`` names the files: a reader trusts
the table only while ``_SUCCESS`` is there, and reads exactly the files it names. A re-run that
completes the run writes the table again (``_SUCCESS`` removed first, stale files removed last).
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StorageError
from pipeline.io.storage import Storage
from pipeline.results.layout import RunLayout
from pipeline.results.sink import ROW_SCHEMA

TARGET_FILE_BYTES = 128 * 2**20
ROW_GROUP_ROWS = 131_072
PART_MAX_BYTES = 2**31  # a unit's part is far smaller; this only bounds a corrupt one


def table_files(storage: Storage, layout: RunLayout) -> list[str] | None:
    """The files of the run's table, or None if there is no whole table (no ``_SUCCESS``)."""
    try:
        if not storage.exists(layout.table_success):
            return None
        return [layout.table_file(name) for name in json.loads(storage.read_bytes(layout.table_success))["files"]]
    except (StorageError, ValueError, KeyError):
        return None


def _parts(storage: Storage, layout: RunLayout) -> Iterator[tuple[pa.Table, int]]:
    """Each part as a table, and its size in bytes, in unit order."""
    uris = [u for u in storage.list_files(layout.scores) if u.endswith(".parquet")]
    for data in storage.read_many(uris, PART_MAX_BYTES):
        if isinstance(data, StorageError):
            raise data
        yield pq.read_table(io.BytesIO(data)).cast(ROW_SCHEMA), len(data)


def write_table(storage: Storage, layout: RunLayout, target_bytes: int = TARGET_FILE_BYTES) -> list[str]:
    """Compact every part of a completed run into ``{run}/table/``; returns the file names written.
    Memory: one file's Parquet bytes and one row group (``ROW_GROUP_ROWS``) of rows at a time."""
    if storage.exists(layout.table_success):
        storage.remove(layout.table_success)  # from here until the end, readers fall back to the parts
    names: list[str] = []
    state: dict = {"writer": None, "buffer": None, "rows": 0}
    group: list[pa.Table] = []
    rows_per_file = 0

    def write_group() -> None:
        if group:
            if state["writer"] is None:
                state["buffer"] = io.BytesIO()
                state["writer"] = pq.ParquetWriter(state["buffer"], ROW_SCHEMA, compression="zstd")
            state["writer"].write_table(pa.concat_tables(group))
            state["rows"] += sum(t.num_rows for t in group)
            group.clear()

    def close_file() -> None:
        write_group()
        state["writer"].close()
        name = f"part-{len(names):05d}.parquet"
        storage.write_bytes(layout.table_file(name), state["buffer"].getvalue())
        names.append(name)
        state.update(writer=None, buffer=None, rows=0)

    for table, size in _parts(storage, layout):
        if not rows_per_file:
            rows_per_file = max(1, target_bytes * max(1, table.num_rows) // max(1, size))
        group.append(table)
        if sum(t.num_rows for t in group) >= min(ROW_GROUP_ROWS, rows_per_file):
            write_group()
        if state["rows"] >= rows_per_file:
            close_file()
    if group or state["writer"] is not None or not names:
        group.append(ROW_SCHEMA.empty_table())
        close_file()
    for stale in storage.list_files(layout.table):
        if posixpath.basename(stale) not in names:
            storage.remove(stale)
    storage.write_bytes(layout.table_success, json.dumps({"files": names}).encode())
    return names
