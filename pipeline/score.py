"""Score an archive with a detector: one Parquet part per work unit, heatmaps, a summary, MLflow.

Exactly-once output: a unit's part is written whole (atomic write), then its marker. A re-run
with the same run name skips units whose marker matches the unit's inputs and rewrites any
other part, so there are never duplicates and never gaps.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from pipeline.config import ConfigError, ScoreConfig
from pipeline.detectors.patchcore import PatchCoreDetector
from pipeline.io import sinks
from pipeline.io.batches import iter_batches
from pipeline.io.sources import WorkUnit, iter_unit_items, list_inputs, plan_units
from pipeline.io.storage import Storage, StorageError, join
from pipeline.memory_bank.bank import load_metadata, resolve_bank_uri
from pipeline.runtime import WorkerPool, init_ray, setup_worker_threads
from pipeline.tracking import flatten, start_run

COUNT_KEYS = ("n_rows", "n_ok", "n_errors", "n_anomalous", "n_heatmaps", "latency_ms_sum")


def _row(run_id: str, unit: WorkUnit, detector: str, version: str, **values: Any) -> dict[str, Any]:
    row = {"run_id": run_id, "unit_id": unit.unit_id, "detector": detector, "model_version": version}
    return row | values


class ScoreWorker:
    """Ray actor: loads the detector once, then scores whole work units."""

    def __init__(self, cfg: ScoreConfig, run_id: str, bank_uri: str):
        self.cfg, self.run_id = cfg, run_id
        self.storage = Storage(cfg.storage)
        device = setup_worker_threads(cfg.runtime)
        self.detector = PatchCoreDetector.load(self.storage, bank_uri, device=device)
        self.threshold = cfg.threshold if cfg.threshold is not None else self.detector.threshold

    def ready(self) -> str:
        return self.detector.version

    def score_unit(self, unit: WorkUnit) -> dict[str, Any]:
        cfg, det = self.cfg, self.detector
        rows: list[dict[str, Any]] = []
        counts = dict.fromkeys(COUNT_KEYS, 0)
        for batch in iter_batches(self.storage, unit, cfg.decode, det.image_size, cfg.batch_size):
            for f in batch.failed:
                rows.append(_row(self.run_id, unit, det.name, det.version, source_uri=f.source_uri, member=f.member,
                                 status="error", error=f.error, threshold=self.threshold))
            if batch.tensor is None:
                continue
            start = time.perf_counter()
            result = det.score(batch.tensor)
            per_image_ms = (time.perf_counter() - start) * 1e3 / len(batch.items)
            for i, item in enumerate(batch.items):
                score = float(result.scores[i])
                anomalous = None if self.threshold is None else score > self.threshold
                heatmap_uri = None
                wanted = cfg.heatmaps == "all" or (cfg.heatmaps == "anomalous" and anomalous)
                if wanted and result.maps is not None:
                    heatmap_uri = join(cfg.output, self.run_id, "heatmaps", unit.unit_id,
                                       sinks.heatmap_key(item.source_uri, item.member, None) + ".png")
                    scale = self.threshold or float(result.maps[i].max())
                    self.storage.write_bytes(heatmap_uri, sinks.overlay_png(item.rgb, result.maps[i], scale))
                    counts["n_heatmaps"] += 1
                latency = item.decode_ms + per_image_ms
                rows.append(_row(self.run_id, unit, det.name, det.version, source_uri=item.source_uri,
                                 member=item.member, width=item.rgb.shape[1], height=item.rgb.shape[0],
                                 score=score, is_anomaly=anomalous, threshold=self.threshold,
                                 heatmap_uri=heatmap_uri, status="ok", latency_ms=latency))
                counts["n_anomalous"] += bool(anomalous)
                counts["latency_ms_sum"] += latency
        counts["n_rows"] = len(rows)
        counts["n_ok"] = sum(r["status"] == "ok" for r in rows)
        counts["n_errors"] = counts["n_rows"] - counts["n_ok"]
        sinks.write_part(self.storage, sinks.part_uri(cfg.output, self.run_id, unit.unit_id), rows)
        sinks.write_marker(self.storage, sinks.marker_uri(cfg.output, self.run_id, unit.unit_id),
                           unit.fingerprint(), counts)
        return counts


def _failed_unit_rows(storage: Storage, cfg: ScoreConfig, run_id: str, unit: WorkUnit, version: str,
                      reason: str) -> dict[str, Any]:
    """A unit whose worker kept dying: every input still gets a row (no marker, so a re-run retries)."""
    keys = [(u, None) for u in unit.files] or [(i.source_uri, i.member) for i in
                                               iter_unit_items(storage, unit, cfg.decode)]
    rows = [_row(run_id, unit, cfg.detector, version, source_uri=s, member=m, status="error",
                 error=f"worker failed: {reason}") for s, m in keys]
    sinks.write_part(storage, sinks.part_uri(cfg.output, run_id, unit.unit_id), rows)
    return dict.fromkeys(COUNT_KEYS, 0) | {"n_rows": len(rows), "n_errors": len(rows)}


def _open_manifest(storage: Storage, cfg: ScoreConfig, run_id: str, bank_uri: str) -> int | None:
    """Resume: the bucket count of an earlier attempt of this run; refuse a changed bank or input."""
    uri = join(cfg.output, run_id, "run.json")
    if not storage.exists(uri):
        return None
    earlier = json.loads(storage.read_bytes(uri))
    for key, now in (("bank_uri", bank_uri), ("input", cfg.input), ("detector", cfg.detector)):
        if earlier.get(key) != now:
            raise ConfigError(f"run_name={run_id}: an earlier attempt used {key}={earlier.get(key)!r}, "
                              f"now {now!r}; pick a new --run-name")
    return int(earlier["n_buckets"])


def run_score(cfg: ScoreConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    storage = Storage(cfg.storage)
    storage.check_reachable(cfg.input, "input")
    storage.check_reachable(cfg.output, "output")
    storage.check_reachable(cfg.bank, "bank")
    bank_uri = resolve_bank_uri(storage, cfg.bank, cfg.bank_version)
    meta = load_metadata(storage, bank_uri)
    run_id = cfg.run_name or "score-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    listing = list_inputs(storage, cfg.input)
    n_buckets = _open_manifest(storage, cfg, run_id, bank_uri)
    units, n_buckets = plan_units(listing, cfg.images_per_unit, n_buckets)
    storage.write_bytes(join(cfg.output, run_id, "run.json"), json.dumps({
        "run_id": run_id, "input": cfg.input, "bank_uri": bank_uri, "detector": cfg.detector,
        "n_buckets": n_buckets, "config": cfg.model_dump(exclude={"storage": {"key", "secret"}}),
    }, indent=2, default=str).encode())

    done: dict[str, dict[str, Any]] = {}
    for unit in units:
        marker = sinks.read_marker(storage, sinks.marker_uri(cfg.output, run_id, unit.unit_id))
        if marker and marker.get("fingerprint") == unit.fingerprint():
            done[unit.unit_id] = marker["counts"]
    todo = [u for u in units if u.unit_id not in done]

    listing_s = time.perf_counter() - t0
    totals = dict.fromkeys(COUNT_KEYS, 0)
    failed_units: list[str] = []
    scoring_s = startup_s = 0.0
    if todo:
        init_ray(cfg.runtime)
        pool = WorkerPool(ScoreWorker, (cfg, run_id, bank_uri), cfg.runtime, size=min(cfg.runtime.workers, len(todo)))
        for i in range(len(pool.actors)):
            pool.call(i, "ready")
        startup_s = time.perf_counter() - t0 - listing_s
        t1 = time.perf_counter()
        version = f"{meta.version}:{meta.fingerprint[:19]}"
        for unit, counts, exc in pool.map("score_unit", todo, f"score {run_id}"):
            if exc is not None:
                failed_units.append(unit.unit_id)
                counts = _failed_unit_rows(storage, cfg, run_id, unit, version, f"{type(exc).__name__}: {exc}"[:500])
            for key in COUNT_KEYS:
                totals[key] += counts[key]
        scoring_s = time.perf_counter() - t1
        pool.shutdown()
    scored_now = dict(totals)
    for counts in done.values():
        for key in COUNT_KEYS:
            totals[key] += counts[key]

    summary = {
        "run_id": run_id, "output": join(cfg.output, run_id), "input": cfg.input, "detector": cfg.detector,
        "bank_uri": bank_uri, "bank_version": meta.version, "bank_fingerprint": meta.fingerprint,
        "threshold": cfg.threshold if cfg.threshold is not None else meta.threshold,
        "n_units": len(units), "n_units_skipped_as_complete": len(done), "failed_units": failed_units,
        "n_inputs": totals["n_rows"], "n_ok": totals["n_ok"], "n_errors": totals["n_errors"],
        "n_anomalous": totals["n_anomalous"], "n_heatmaps": totals["n_heatmaps"],
        "n_skipped_files": len(listing.skipped),
        "images_per_s": scored_now["n_rows"] / scoring_s if scoring_s > 0 else 0.0,
        "seconds": {"listing": listing_s, "startup": startup_s, "scoring": scoring_s,
                    "total": time.perf_counter() - t0},
    }
    storage.write_bytes(join(cfg.output, run_id, "summary.json"), json.dumps(summary, indent=2).encode())
    try:
        bank_json = storage.read_bytes(join(bank_uri, "bank.json"))
    except StorageError:
        bank_json = b"{}"
    with start_run(cfg.tracking, run_id, "score") as run:
        run.params(flatten(cfg.model_dump()) | {"bank.version": meta.version, "bank.fingerprint": meta.fingerprint,
                                               "run_id": run_id})
        run.tags({"bank_uri": bank_uri, "output": summary["output"]})
        run.metrics({"inputs": summary["n_inputs"], "ok": summary["n_ok"], "errors": summary["n_errors"],
                     "anomalous": summary["n_anomalous"], "images_per_s": summary["images_per_s"],
                     "wall_time_s": summary["seconds"]["total"], "scoring_s": scoring_s, "startup_s": startup_s})
        run.json_artifact("summary.json", summary)
        run.file_artifact("bank.json", bank_json)
        summary["mlflow_run_id"] = run.run_id
    return summary
