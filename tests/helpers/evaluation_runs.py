"""A synthetic scored run written straight to the run layout, and jobs.evaluate on it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

import pipeline.evaluation.metrics as metrics
from jobs.evaluate import main as evaluate_main
from pipeline.results import heatmaps
from pipeline.results import sink as sinks
from pipeline.results.layout import heatmap_key

MAP = 32  # the synthetic runs' scored resolution



def write_run(dataset: Path, out: Path, *, maps=True, threshold=0.5, scores=None, bad_mask=None) -> Path:
    """A scored run of dataset/test without a model: a defect's score is higher than a good one's,
    its map lights up the mask (resized to 32x32), plus a video of 10 frames and one error row."""
    rows, run = [], out / "run"
    images = sorted((dataset / "test").rglob("*.png"))
    for i, path in enumerate(images):
        rgb = np.array(Image.open(path).convert("RGB"))
        mask_path = dataset / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        mask = np.asarray(Image.open(mask_path)) > 127 if mask_path.exists() \
            else np.zeros(rgb.shape[:2], bool)
        amap = metrics.resize_nearest(mask, (MAP, MAP)).astype(np.float32) + 0.01 * i
        score = scores[i] if scores else float(amap.max()) + 0.1 * ("defect" in str(path))
        key = heatmap_key(str(path), None, None)
        heat = run / "heatmaps" / "u0" / f"{key}.png"
        heat.parent.mkdir(parents=True, exist_ok=True)
        heat.write_bytes(heatmaps.overlay_png(rgb, amap, 1.0))
        map_uri = None
        if maps:
            buf = io.BytesIO()
            np.save(buf, amap.astype(np.float16))
            (run / "heatmaps" / "u0" / f"{key}.npy").write_bytes(buf.getvalue())
            map_uri = str(run / "heatmaps" / "u0" / f"{key}.npy")
        rows.append({"run_id": "run", "unit_id": "u0", "source_uri": str(path), "width": rgb.shape[1],
                     "height": rgb.shape[0], "score": score, "is_anomaly": score > threshold, "threshold": threshold,
                     "heatmap_uri": str(heat), "status": "ok", "map_uri": map_uri})
    for f in range(10):
        rows.append({"run_id": "run", "unit_id": "v0", "source_uri": "/cam/cam1.mp4", "frame_index": f,
                     "timestamp_s": f / 10, "score": 1.0 if 4 <= f <= 6 else 0.1 * (f % 3), "status": "ok"})
    rows.append({"run_id": "run", "unit_id": "v0", "source_uri": "/x/broken.png", "status": "error", "error": "bad"})
    sinks.write_part(sinks_storage(), str(run / "scores" / "part-u0.parquet"), rows)
    (run / "videos.json").write_text(json.dumps([{"source_uri": "/cam/cam1.mp4", "segments": [
        {"start_frame": 4, "end_frame": 6}, {"start_frame": 9, "end_frame": 9}]}]))
    return run



def sinks_storage():
    from pipeline.config import StorageSettings
    from pipeline.io.storage import Storage

    return Storage(StorageSettings())



def evaluate(run: Path, *labels: str, extra=()) -> tuple[int, dict]:
    args = ["--output", str(run), "--no-tracking", *extra]
    if labels:
        args += ["--labels", ",".join(labels)]
    code = evaluate_main(args)
    return code, json.loads((run / "evaluation.json").read_text())
