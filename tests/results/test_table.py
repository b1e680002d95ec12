"""A completed run's table: the parts compacted into a few large Parquet files, read back whole, rewritten by a
re-run, and readable by a query engine (pyarrow.dataset) as a folder."""

from __future__ import annotations

import pyarrow.dataset as ds

from pipeline.config import StorageSettings
from pipeline.io.storage import Storage
from pipeline.results import RunLayout, read_rows, write_part
from pipeline.results.table import table_files, write_table

STORAGE = Storage(StorageSettings())


def write_parts(layout: RunLayout, n_units: int, rows_per_unit: int) -> list[dict]:
    rows = []
    for u in range(n_units):
        unit = [{"run_id": "r", "unit_id": f"u{u:05d}", "source_uri": f"/in/{u}-{i}.png", "status": "ok",
                 "score": float(u * rows_per_unit + i), "heatmap_uri": f"/out/r/heatmaps/{u}/{i}.jpg" * 3}
                for i in range(rows_per_unit)]
        write_part(STORAGE, layout.part(f"u{u:05d}"), unit)
        rows += unit
    return rows


def test_table_holds_every_row_in_few_files_and_read_rows_uses_it(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    rows = write_parts(layout, n_units=40, rows_per_unit=64)
    assert table_files(STORAGE, layout) is None  # no table yet: rows come from the parts
    before = read_rows(STORAGE, layout.root, columns=["source_uri", "score"])
    names = write_table(STORAGE, layout, target_bytes=64 * 1024)
    assert 1 < len(names) < 40, names  # fewer, larger files than parts, cut by size
    assert table_files(STORAGE, layout) == [layout.table_file(n) for n in names]
    after = read_rows(STORAGE, layout.root, columns=["source_uri", "score"])
    assert after == before and len(after) == len(rows)
    for part in (tmp_path / "r" / "scores").iterdir():  # read_rows now reads the table, not the parts
        part.write_bytes(b"not parquet")
    assert read_rows(STORAGE, layout.root, columns=["source_uri", "score"]) == before
    table = ds.dataset(str(tmp_path / "r" / "table"), format="parquet").to_table()  # _SUCCESS is ignored
    assert table.num_rows == len(rows) and sorted(table["score"].to_pylist()) == [r["score"] for r in rows]


def test_a_small_run_is_one_file_and_a_rerun_rewrites_the_table(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    write_parts(layout, n_units=40, rows_per_unit=64)
    write_table(STORAGE, layout, target_bytes=64 * 1024)
    write_parts(layout, n_units=3, rows_per_unit=2)  # the parts of units 0-2 now hold 2 rows each
    assert write_table(STORAGE, layout) == ["part-00000.parquet"]  # default ~128 MiB: one file
    files = sorted(p.name for p in (tmp_path / "r" / "table").iterdir())
    assert files == ["_SUCCESS", "part-00000.parquet"]  # the earlier, larger table's extra files are gone
    rows = read_rows(STORAGE, layout.root, columns=["unit_id"])
    assert len(rows) == 3 * 2 + 37 * 64


def test_an_interrupted_rewrite_leaves_no_table_to_trust(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    write_parts(layout, n_units=2, rows_per_unit=3)
    write_table(STORAGE, layout)
    STORAGE.remove(layout.table_success)  # as write_table does first; then the run stopped
    write_parts(layout, n_units=1, rows_per_unit=1)
    assert table_files(STORAGE, layout) is None
    assert len(read_rows(STORAGE, layout.root)) == 1 + 3  # from the parts, as they are now
