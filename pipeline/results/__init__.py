"""What a run writes and how it is read back: the run folder's layout, the sink, the heatmap renderer, the rows."""

from pipeline.results.layout import RunLayout, heatmap_key
from pipeline.results.rows import read_rows
from pipeline.results.sink import ROW_SCHEMA, read_marker, write_map, write_marker, write_overlay, write_part

__all__ = ["ROW_SCHEMA", "RunLayout", "heatmap_key", "read_marker", "read_rows", "write_map", "write_marker",
           "write_overlay", "write_part"]
