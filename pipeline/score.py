"""Score an archive with a detector: one Parquet part per work unit, heatmaps, a summary, MLflow.

Exactly-once output: a unit's heatmaps, maps and part are written whole (atomic writes, through a
bounded uploader off the scoring path), and only once all of them are stored, its marker. A re-run
with the same run name skips units whose marker matches the unit's inputs and rewrites any
other part, so there are never duplicates and never gaps. A run that completes is also compacted
into ``table/`` (a few large Parquet files, see :mod:`pipeline.results.table`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from pipeline.config import ScoreConfig
from pipeline.detectors.base import Detector, ModelRef
from pipeline.detectors.registry import DETECTORS, load_attr
from pipeline.errors import ConfigError, RunIncomplete, StorageError
from pipeline.evaluation.segments import summarize_videos
from pipeline.features.preprocess import describe_inspected
from pipeline.io.batches import Decoded, Failed, iter_batches
from pipeline.io.prefetch import prefetched, to_device
from pipeline.io.sources import (
    Listing,
    WorkUnit,
    iter_unit_items,
    list_inputs,
    plan_units,
    plan_video_units,
    printable_name,
)
from pipeline.io.storage import Storage
from pipeline.io.uploads import Uploader
from pipeline.progress import Progress
from pipeline.results import RunLayout, heatmap_key, heatmaps, read_rows, sink
from pipeline.results.table import table_files, write_table
from pipeline.runtime import (
    NodeCounts,
    WorkerPool,
    decode_threads,
    fitting_workers,
    here,
    init_ray,
    node_metrics,
    setup_worker_threads,
    start_error_line,
)
from pipeline.tracking import check_tracking, flatten, random_weights_tags, start_run

log = logging.getLogger(__name__)

COUNT_KEYS = ("n_rows", "n_ok", "n_errors", "n_skipped", "n_anomalous", "n_heatmaps", "latency_ms_sum")


def _row(run_id: str, unit: WorkUnit, detector: str, version: str, **values: Any) -> dict[str, Any]:
    """One result row; names that are not valid UTF-8 are written with their bytes escaped (lossless)."""
    row = {"run_id": run_id, "unit_id": unit.unit_id, "detector": detector, "model_version": version}
    for key in ("source_uri", "member"):
        if values.get(key) is not None:
            values[key] = printable_name(values[key])
    return row | values


def resolve_model(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """The detector's model, checked on the driver before any worker starts (see the registry)."""
    return load_attr(DETECTORS[cfg.detector].resolve)(storage, cfg)


def load_detector(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> Detector:
    return load_attr(DETECTORS[cfg.detector].load)(cfg, storage, model, device)


class ScoreWorker:
    """Ray actor: loads the detector once, then scores whole work units."""

    def __init__(self, cfg: ScoreConfig, run_id: str, model: ModelRef):
        self.cfg, self.run_id = cfg, run_id
        self.storage = Storage(cfg.storage)
        self.uploads = Uploader(self.storage)
        self.device = setup_worker_threads(cfg.runtime)
        self.threads = decode_threads(cfg.runtime)
        self.detector = load_detector(cfg, self.storage, model, self.device)
        self.threshold = cfg.threshold if cfg.threshold is not None else self.detector.threshold
        where = here()
        self.placement = {"node_id": where.node_id, "worker": where.worker}  # written into every row

    @property
    def layout(self) -> RunLayout:
        return RunLayout.of(self.cfg.output, self.run_id)

    def ready(self) -> str:
        return self.detector.version

    def score_unit(self, unit: WorkUnit) -> dict[str, Any]:
        try:
            rows = self._score_clip_unit(unit) if self.detector.context_frames else self._score_images(unit)
            return self._finish(unit, rows)
        except BaseException:
            self.uploads.abandon()  # the unit failed: its writes in flight must not count for the next unit
            raise

    def _score_images(self, unit: WorkUnit) -> list[dict[str, Any]]:
        cfg, det = self.cfg, self.detector
        rows: list[dict[str, Any]] = []
        batches = iter_batches(self.storage, unit, cfg.decode, det.preprocess, cfg.batch_size, self.threads)
        for batch in prefetched(batches):  # the next batch decodes while this one is scored
            rows += [self._error_row(unit, f) for f in batch.failed]
            if batch.tensor is None:
                continue
            start = time.perf_counter()
            result = det.score(to_device(batch.tensor, self.device))
            per_image_ms = (time.perf_counter() - start) * 1e3 / len(batch.items)
            maps = list(result.maps) if result.maps is not None else [None] * len(batch.items)
            rows += self._ok_rows(unit, batch.items, [float(s) for s in result.scores[:len(batch.items)]], maps,
                                  [item.decode_ms + per_image_ms for item in batch.items])
        return rows

    def _ok_rows(self, unit: WorkUnit, items: list[Decoded], scores: list[float], maps: list[np.ndarray | None],
                 latencies: list[float]) -> list[dict[str, Any]]:
        """Rows of scored inputs; their overlays are rendered as one batch on the worker's device, and they
        and the raw maps are handed to the uploader (stored before the unit's marker, see ``_finish``)."""
        cfg, det = self.cfg, self.detector
        policy = cfg.video.heatmaps if unit.video else cfg.heatmaps
        suffix = heatmaps.EXTENSIONS[cfg.overlay.format]
        rows, overlays = [], []
        for item, score, amap, latency in zip(items, scores, maps, latencies, strict=True):
            anomalous = None if self.threshold is None else score > self.threshold
            key = heatmap_key(printable_name(item.source_uri), item.member_index, item.frame_index)
            heatmap_uri = map_uri = None
            if amap is not None:
                amap = det.preprocess.uncrop(amap)  # in step with the whole input, not just the scored crop
                if policy == "all" or (policy == "anomalous" and anomalous):
                    heatmap_uri = self.layout.heatmap(unit.unit_id, key, suffix)
                    overlays.append((heatmap_uri, item.rgb, amap, self.threshold or float(amap.max())))
                if cfg.maps:  # the raw map at the scored resolution, for pixel metrics
                    map_uri = self.layout.heatmap(unit.unit_id, key, ".npy")
                    self.uploads.put(map_uri, sink.encode_map(amap))
            rows.append(_row(self.run_id, unit, det.name, det.version, source_uri=item.source_uri,
                             member=item.member, member_index=item.member_index, frame_index=item.frame_index,
                             timestamp_s=item.timestamp_s, width=item.rgb.shape[1], height=item.rgb.shape[0],
                             score=score, is_anomaly=anomalous, threshold=self.threshold, heatmap_uri=heatmap_uri,
                             status="ok", latency_ms=latency, map_uri=map_uri))
        for start in range(0, len(overlays), cfg.batch_size):
            chunk = overlays[start:start + cfg.batch_size]
            encoded = heatmaps.render_overlays([o[1] for o in chunk], [o[2] for o in chunk], [o[3] for o in chunk],
                                               cfg.overlay.format, cfg.overlay.quality, cfg.overlay.max_side,
                                               self.device)
            for (uri, *_), data in zip(chunk, encoded, strict=True):
                self.uploads.put(uri, data)
        return rows

    def _score_clip_unit(self, unit: WorkUnit) -> list[dict[str, Any]]:
        """Sequence detectors see the unit's frames as one clip, with the frames just before the unit as
        context; scores are normalised over the unit (a video, unless it was split)."""
        det, cfg = self.detector, self.cfg
        context = det.context_frames
        if unit.video is None:
            reason = f"detector {det.name} is a sequence model with these settings: it scores videos only"
            return [self._error_row(unit, Failed(s, m, reason, member_index=i))
                    for s, m, i in unit_input_keys(self.storage, self.cfg, unit)]
        lead = max(0, unit.frame_start - context * unit.frame_stride)
        span = WorkUnit(unit.unit_id, video=unit.video, frame_start=lead, frame_end=unit.frame_end,
                        frame_stride=unit.frame_stride)
        items, failed = [], []
        for batch in iter_batches(self.storage, span, cfg.decode, det.preprocess, cfg.batch_size, self.threads):
            failed += batch.failed
            if batch.tensor is not None:
                items += list(zip(batch.items, batch.tensor, strict=True))
        rows = [self._error_row(unit, f) for f in failed]
        if not items:
            return rows
        start = time.perf_counter()
        try:
            result = det.score_sequence(torch.stack([t for _, t in items]), unit.video) \
                if len(items) > context else None
        except ValueError as exc:
            return [self._error_row(unit, Failed(s, m, str(exc), member_index=i))
                    for s, m, i in unit_input_keys(self.storage, self.cfg, unit)]
        per_frame_ms = (time.perf_counter() - start) * 1e3 / len(items)
        scored: list[tuple[Decoded, float, np.ndarray | None]] = []
        for i, (item, _) in enumerate(items):
            if item.frame_index < unit.frame_start:
                continue  # context for the first predictions, scored by the previous unit
            if i < context:
                rows.append(_row(self.run_id, unit, det.name, det.version, source_uri=item.source_uri,
                                 frame_index=item.frame_index, timestamp_s=item.timestamp_s, status="unscored",
                                 error=f"{det.name} predicts a frame from the {context} before it"))
                continue
            scored.append((item, float(result.scores[i - context]), result.maps[i - context]))
        rows += self._ok_rows(unit, [s[0] for s in scored], [s[1] for s in scored], [s[2] for s in scored],
                              [s[0].decode_ms + per_frame_ms for s in scored])
        return rows

    def _error_row(self, unit: WorkUnit, failed: Failed) -> dict[str, Any]:
        """A row for an input that was not scored: ``status`` "error" (bad input) or "skipped"."""
        det = self.detector
        return _row(self.run_id, unit, det.name, det.version, source_uri=failed.source_uri, member=failed.member,
                    member_index=failed.member_index, frame_index=failed.frame_index, status=failed.status,
                    error=failed.error, threshold=self.threshold)

    def _finish(self, unit: WorkUnit, rows: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [row | self.placement for row in rows]
        counts = dict.fromkeys(COUNT_KEYS, 0)
        counts["n_rows"] = len(rows)
        counts["n_ok"] = sum(r["status"] == "ok" for r in rows)
        counts["n_errors"] = sum(r["status"] == "error" for r in rows)
        counts["n_skipped"] = sum(r["status"] == "skipped" for r in rows)
        counts["n_anomalous"] = sum(bool(r.get("is_anomaly")) for r in rows)
        counts["n_heatmaps"] = sum(bool(r.get("heatmap_uri")) for r in rows)
        counts["latency_ms_sum"] = sum(r.get("latency_ms") or 0.0 for r in rows)
        self.uploads.wait()  # every file the rows name is stored: then the part, then the marker
        sink.write_part(self.storage, self.layout.part(unit.unit_id), rows)
        sink.write_marker(self.storage, self.layout.marker(unit.unit_id), unit.fingerprint(), counts)
        return counts


def unit_input_keys(storage: Storage, cfg: ScoreConfig, unit: WorkUnit) -> list[tuple[str, str | None, int | None]]:
    """``(source_uri, member, member_index)`` of every input of ``unit``, without decoding any.
    A tar that cannot be read right now is represented by one key for the whole shard."""
    if unit.video:
        return [(unit.video, None, None)]
    if unit.files:
        return [(u, None, None) for u in unit.files]
    try:
        return [(i.source_uri, i.member, i.member_index) for i in iter_unit_items(storage, unit, cfg.decode)]
    except StorageError:
        return [(unit.tar, None, None)]


def _failed_unit_rows(storage: Storage, cfg: ScoreConfig, run_id: str, unit: WorkUnit, version: str,
                      reason: str) -> dict[str, Any] | None:
    """A unit whose worker failed for good: every input still gets a row, and no marker, so a re-run
    retries it. If storage itself is down the part cannot be written either; the unit then simply
    has no part (and still no marker), and the re-run fills it: None."""
    rows = [_row(run_id, unit, cfg.detector, version, source_uri=s, member=m, member_index=i, status="error",
                 error=f"unit failed: {reason}") for s, m, i in unit_input_keys(storage, cfg, unit)]
    counts = dict.fromkeys(COUNT_KEYS, 0) | {"n_rows": len(rows), "n_errors": len(rows)}
    try:
        sink.write_part(storage, RunLayout.of(cfg.output, run_id).part(unit.unit_id), rows)
    except StorageError as exc:
        log.warning("unit %s: could not write its error rows either (%s); a re-run retries it", unit.unit_id, exc)
        return None
    return counts


def _open_manifest(storage: Storage, cfg: ScoreConfig, run_id: str, model_uri: str) -> int | None:
    """Resume: the bucket count of an earlier attempt of this run; refuse a changed model or input."""
    uri = RunLayout.of(cfg.output, run_id).manifest
    if not storage.exists(uri):
        return None
    earlier = json.loads(storage.read_bytes(uri))
    input_uri = storage.canonical(cfg.input)  # the same folder from any working directory
    for key, now in (("model_uri", model_uri), ("input", input_uri), ("detector", cfg.detector)):
        if earlier.get(key) != now:
            raise ConfigError(f"run_name={run_id}: an earlier attempt used {key}={earlier.get(key)!r}, "
                              f"now {now!r}; pick a new --run-name")
    return int(earlier["n_buckets"])


def _read_json(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
    except (StorageError, ValueError):
        return None


def plan_run(storage: Storage, cfg: ScoreConfig, run_id: str, model_uri: str
             ) -> tuple[Listing, list[WorkUnit], dict[str, dict[str, Any]]]:
    """The driver's planning: list the input, cut it into units, record the run's manifest, and find
    the units an earlier attempt completed (their counts by unit id)."""
    listing = list_inputs(storage, cfg.input, exclude=(cfg.output,))
    if listing.left_out:
        log.info("input listing leaves out %d files under %d output or run/bank folder(s) of this product, e.g. %s: "
                 "results are never scored as inputs", listing.n_left_out, len(listing.left_out),
                 printable_name(listing.left_out[0]))
    if not (listing.images or listing.tars or listing.videos or listing.skipped):
        raise ConfigError(f"input={cfg.input}: no files found (nothing to score)")
    n_buckets = _open_manifest(storage, cfg, run_id, model_uri)
    units, n_buckets = plan_units(listing, cfg.images_per_unit, n_buckets)
    units += plan_video_units(storage, listing.videos, cfg.video)
    storage.write_bytes(RunLayout.of(cfg.output, run_id).manifest, json.dumps({
        "run_id": run_id, "input": storage.canonical(cfg.input), "model_uri": model_uri, "detector": cfg.detector,
        "n_buckets": n_buckets, "config": cfg.model_dump(exclude={"storage": {"key", "secret"}}),
    }, indent=2, default=str).encode())

    done = sink.completed_units(storage, RunLayout.of(cfg.output, run_id), {u.unit_id: u.fingerprint() for u in units})
    return listing, units, done


def _score_units(cfg: ScoreConfig, storage: Storage, run_id: str, model: ModelRef, todo: list[WorkUnit],
                 totals: dict[str, float], nodes: NodeCounts, local: bool
                 ) -> tuple[list[str], list[str], float, float]:
    """Run ``todo`` on the worker pool; add their counts to ``totals`` and ``nodes``. Returns the failed unit ids,
    those of them whose error rows could not be written either, start-up and scoring seconds."""
    t0 = time.perf_counter()
    size = fitting_workers(cfg.runtime, min(cfg.runtime.workers, len(todo)), local)
    pool = WorkerPool(ScoreWorker, (cfg, run_id, model), cfg.runtime, size=size)
    failed: list[str] = []
    without_rows: list[str] = []
    try:
        pool.wait_ready()
        startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        progress = Progress(f"score {run_id}", len(todo), "inputs")
        for done in pool.map("score_unit", todo):
            unit, counts, exc = done.unit, done.result, done.error
            if exc is not None:
                reason = start_error_line(exc) if not isinstance(exc, TimeoutError) else str(exc)
                log.warning("unit %s failed: %s", unit.unit_id, reason)
                failed.append(unit.unit_id)
                counts = _failed_unit_rows(storage, cfg, run_id, unit, model.version, reason)
                if counts is None:
                    without_rows.append(unit.unit_id)
                    counts = dict.fromkeys(COUNT_KEYS, 0)
            else:
                nodes.add(done.placement, done.started_at, done.seconds, counts["n_rows"])
            for key in COUNT_KEYS:
                totals[key] += counts[key]
            progress.update(counts["n_rows"], counts["n_errors"])
        progress.finish()
        return failed, without_rows, startup_s, time.perf_counter() - t1
    finally:
        pool.shutdown()


def run_score(cfg: ScoreConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    storage = Storage(cfg.storage)
    storage.check_reachable(cfg.input, "input")
    storage.check_writable_folder(cfg.output, "output")
    tracking_uri = check_tracking(cfg.tracking)
    model = _resolve_and_announce(storage, cfg)
    run_id = cfg.run_name or "score-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    layout = RunLayout.of(cfg.output, run_id)
    log.info("run %s: input %s, output %s", run_id, cfg.input, layout.root)

    listing, units, done = plan_run(storage, cfg, run_id, model.uri)
    todo = [u for u in units if u.unit_id not in done]
    log.info("%d work units: %d to score, %d complete from an earlier attempt", len(units), len(todo), len(done))

    listing_s = time.perf_counter() - t0
    totals = dict.fromkeys(COUNT_KEYS, 0)
    nodes = NodeCounts()
    failed_units: list[str] = []
    units_without_rows: list[str] = []
    scoring_s = startup_s = 0.0
    if todo:
        local = init_ray(cfg.runtime)
        failed_units, units_without_rows, startup_s, scoring_s = _score_units(cfg, storage, run_id, model, todo,
                                                                              totals, nodes, local)
    table_s = _publish_table(storage, layout, run_id) if not failed_units and (
        todo or table_files(storage, layout) is None) else 0.0
    scored_now = dict(totals)
    for counts in done.values():
        for key in COUNT_KEYS:
            totals[key] += counts[key]

    earlier = _read_json(storage, layout.summary)
    summary = {
        "run_id": run_id, "output": layout.root, "input": cfg.input, "input_uri": storage.canonical(cfg.input),
        "detector": cfg.detector,
        "model_uri": model.uri, "model_version": model.version,
        **{k.replace(".", "_"): v for k, v in model.params.items()},
        "random_weights": list(model.random_weights), **inspected(model),
        "threshold": cfg.threshold if cfg.threshold is not None else model.threshold,
        "n_units": len(units), "n_units_scored": len(todo), "n_units_skipped_as_complete": len(done),
        "failed_units": failed_units, "failed_units_without_rows": units_without_rows,
        "n_inputs": totals["n_rows"], "n_ok": totals["n_ok"], "n_errors": totals["n_errors"],
        "n_skipped": totals["n_skipped"], "n_anomalous": totals["n_anomalous"], "n_heatmaps": totals["n_heatmaps"],
        "images_per_s": scored_now["n_rows"] / scoring_s if scoring_s > 0 else 0.0,
        "table": layout.table if not failed_units else None,
        "seconds": {"listing": listing_s, "startup": startup_s, "scoring": scoring_s, "table": table_s,
                    "total": time.perf_counter() - t0},
        "attempts": (earlier or {}).get("attempts", 0) + 1,
        "nodes": nodes.as_dict(),  # this attempt's units, rows and seconds per Ray node
    }
    if not todo and earlier:  # nothing scored now: the figures of the attempt that did the work stand
        summary["images_per_s"], summary["seconds"] = earlier.get("images_per_s", 0.0), earlier.get("seconds", {})
    try:
        videos = _write_video_summary(storage, cfg, listing, summary)
        storage.write_bytes(layout.summary, json.dumps(summary, indent=2).encode())
    except StorageError as exc:
        raise RunIncomplete(f"run {run_id}: {len(failed_units)} of {len(units)} work units failed and the summary "
                            f"could not be written ({exc}); re-run with --run-name {run_id} to finish") from exc
    _track(cfg, storage, model, summary, videos, tracking_uri, scored_anything=bool(todo))
    return summary


def _resolve_and_announce(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """The run's model, with a warning when any part of it is random and a line on how much of each image it sees."""
    model = resolve_model(storage, cfg)
    if model.random_weights:
        log.warning("%s runs with randomly initialised weights, so its scores mean nothing about real anomalies: %s",
                    cfg.detector, "; ".join(model.random_weights))
    log.log(logging.INFO if model.inspected_fraction >= 1 else logging.WARNING, "%s",
            describe_inspected(model.inspected_fraction))
    return model


def _publish_table(storage: Storage, layout: RunLayout, run_id: str) -> float:
    """The completed run's rows as its queryable table; returns the seconds it took."""
    start = time.perf_counter()
    try:
        write_table(storage, layout)
    except StorageError as exc:
        raise RunIncomplete(f"run {run_id}: every unit is scored but its table could not be written ({exc}); "
                            f"re-run with --run-name {run_id} to write it") from exc
    return time.perf_counter() - start


def inspected(model: ModelRef) -> dict[str, float]:
    """The part of each image the model scores, as recorded in the summary and MLflow."""
    return {"inspected_fraction": model.inspected_fraction, "inspected_area_fraction": model.inspected_fraction ** 2}


def _write_video_summary(storage: Storage, cfg: ScoreConfig, listing: Listing, summary: dict[str, Any]
                         ) -> list[dict[str, Any]]:
    if not listing.videos:
        return []
    videos = summarize_videos(read_rows(storage, summary["output"]), summary["threshold"], cfg.video.smoothing_window)
    storage.write_bytes(RunLayout(summary["output"]).videos, json.dumps(videos, indent=2).encode())
    summary["n_videos"] = len(listing.videos)
    summary["n_anomalous_segments"] = sum(len(v["segments"]) for v in videos)
    return videos


def _track(cfg: ScoreConfig, storage: Storage, model: ModelRef, summary: dict[str, Any],
           videos: list[dict[str, Any]], tracking_uri: str | None, scored_anything: bool) -> None:
    """Log the run to MLflow once: a re-run that scored nothing new logs nothing; one that did
    reopens the first attempt's MLflow run. A failure here is reported, never undoes the results."""
    if tracking_uri is None:
        return
    record_uri = RunLayout(summary["output"]).tracking
    record = _read_json(storage, record_uri)
    if record and not scored_anything:
        summary["mlflow_run_id"] = record["mlflow_run_id"]
        log.info("MLflow run %s (%s) already holds this run; nothing new to log", record["mlflow_run_id"],
                 tracking_uri)
        return
    try:
        with start_run(cfg.tracking, summary["run_id"], "score", record and record["mlflow_run_id"]) as run:
            if not record:
                run.params(flatten(cfg.model_dump()) | model.params | inspected(model) | {"run_id": summary["run_id"]})
                run.tags({"model_uri": model.uri, "output": summary["output"]}
                         | random_weights_tags(list(model.random_weights)))
            run.metrics({"inputs": summary["n_inputs"], "ok": summary["n_ok"], "errors": summary["n_errors"],
                         "anomalous": summary["n_anomalous"], "images_per_s": summary["images_per_s"],
                         "failed_units": len(summary["failed_units"]), "wall_time_s": summary["seconds"]["total"],
                         "scoring_s": summary["seconds"]["scoring"], "startup_s": summary["seconds"]["startup"]}
                        | node_metrics(summary["nodes"]))
            run.json_artifact("summary.json", summary)
            if videos:
                run.json_artifact("videos.json", videos)
            run.file_artifact(model.metadata_name, model.metadata)
            summary["mlflow_run_id"] = run.run_id
        storage.write_bytes(record_uri, json.dumps({"mlflow_run_id": run.run_id, "tracking_uri": tracking_uri}
                                                   ).encode())
        log.info("MLflow run %s at %s", run.run_id, tracking_uri)
    except Exception as exc:  # noqa: BLE001 - tracking must never undo or redo the results
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        summary["tracking_error"] = reason
        log.error("MLflow logging failed (%s): %s; the results in %s stand; re-run with --run-name %s to log them",
                  tracking_uri, reason, summary["output"], summary["run_id"])
