"""What a run writes and how it is read back: the run folder's layout, the sink, the heatmap renderer, the rows."""

from pipeline.results.layout import RunLayout, heatmap_key
from pipeline.results.rows import read_rows
from pipeline.results.sink import (
    ROW_SCHEMA,
    completed_units,
    encode_map,
    write_marker,
    write_part,
)

__all__ = ["ROW_SCHEMA", "RunLayout", "completed_units", "encode_map", "heatmap_key", "read_rows",
           "write_marker", "write_part"]
