"""Result rows as Parquet parts, completion markers, and heatmap overlays.

Output layout under ``{output}/{run_id}/``::

    run.json                    the run's manifest (inputs, bank, bucket count) for resume
    scores/part-{unit}.parquet  one part per work unit, every input of the unit, one row each
    _markers/{unit}.json        written after the part: the unit is complete (with its counts)
    heatmaps/{unit}/{key}.png   colour overlays, referenced by the rows' ``heatmap_uri``
    summary.json                counts and timings of the whole run
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.io.storage import Storage, StorageError, join

ROW_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("unit_id", pa.string()),
    ("detector", pa.string()),
    ("model_version", pa.string()),
    ("source_uri", pa.string()),
    ("member", pa.string()),
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


def heatmap_key(source_uri: str, member: str | None, frame_index: int | None) -> str:
    return hashlib.sha1(f"{source_uri}\0{member or ''}\0{frame_index}".encode()).hexdigest()[:20]


# A perceptually ordered dark-blue -> red -> yellow ramp (anchor colours, linearly interpolated).
_RAMP = np.array([[0, 0, 40], [40, 0, 140], [180, 20, 120], [240, 90, 30], [255, 230, 60]], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """``values`` in 0..1 to RGB uint8 with the ramp above."""
    pos = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def overlay_png(rgb: np.ndarray, amap: np.ndarray, scale: float, max_side: int = 1024) -> bytes:
    """Blend the anomaly map over the image. ``scale`` maps to the middle of the colour ramp,
    so with the calibrated threshold as scale, yellow means well above threshold."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if size != (h, w):
        img = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(torch.from_numpy(amap)[None, None], size=size, mode="bilinear", align_corners=False)
    colours = colorize(m[0, 0].numpy() / (2.0 * max(scale, 1e-12))).astype(np.float32)
    blended = 0.55 * img[0].permute(1, 2, 0).numpy() + 0.45 * colours
    out = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()
