"""Fit a PatchCore memory bank from a folder (or prefix, or tar shards) of normal images.

Distributed coreset (two-round composable coreset): every worker embeds one shard of the
normal set and reduces it with greedy k-center to a local budget; the driver holds only the
union of the local coresets and reduces it again to the final size ``k``. Greedy k-center is a
2-approximation of the optimal k-center radius (Gonzalez 1985), and running it on the union of
per-shard greedy coresets is a 4-approximation of the optimum for the whole set (the
composable-coreset bound for k-center of Indyk, Mahabadi, Mahdian and Mirrokni, PODS 2014;
also Malkomes et al., NeurIPS 2015). Giving each shard a budget above k/S (``local_oversample``)
keeps the measured radius close to single-machine greedy.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config import FitConfig
from pipeline.detectors.patchcore import PatchCoreDetector, build_embedder, preprocess_of
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.errors import ConfigError, RunIncomplete, SetupError
from pipeline.features.preprocess import describe_inspected
from pipeline.io.batches import iter_batches
from pipeline.io.prefetch import prefetched, to_device
from pipeline.io.sources import Listing, WorkUnit, list_inputs, plan_units, plan_video_units, stable_hash
from pipeline.io.storage import Storage, join
from pipeline.memory_bank import index as bank_index
from pipeline.memory_bank.bank import (
    BankMetadata,
    LineageEntry,
    fingerprint,
    listing_fingerprint,
    load_index,
    load_metadata,
    publish_bank,
    resolve_bank_uri,
)
from pipeline.memory_bank.coreset import CoresetMode, coreset_size, make_projection
from pipeline.memory_bank.index import ShardedIndex
from pipeline.memory_bank.knn import build_knn
from pipeline.memory_bank.merge import merge_tree, reduce_rows, select_coreset
from pipeline.progress import Progress
from pipeline.runtime import (
    NodeCounts,
    WorkerPool,
    decode_threads,
    fitting_workers,
    init_ray,
    node_metrics,
    setup_worker_threads,
    start_error_line,
)
from pipeline.tracking import check_tracking, flatten, random_weights_tags, start_run

log = logging.getLogger(__name__)

MAX_LOGGED_INDEX_BYTES = 256 * 1024 * 1024
RELIABLE_CALIBRATION_IMAGES = 20  # below this many held-out images the calibrated threshold is a rough guess


def local_budget(n: int, ratio: float, n_shards: int, oversample: float, mode: CoresetMode = "exact") -> int:
    """Round-1 budget of a shard with ``n`` patches: its share of k, times ``min(S, oversample)`` (one shard:
    exactly the coreset size of ``mode``)."""
    return coreset_size(n, ratio * min(float(n_shards), oversample), mode)


def bn_shift_input(settings: PatchCoreSettings) -> tuple[int, int] | None:
    """``(H, W)`` of the official BatchNorm-shift probe (the model's input: the crop), or None for the clean
    backbone (``patchcore.bn_shift``)."""
    side = preprocess_of(settings).input_size
    return (side, side) if settings.bn_shift == "official" else None


class FitWorker:
    """Ray actor: embeds shards of normal images and reduces each to a local coreset."""

    def __init__(self, cfg: FitConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        self.device = setup_worker_threads(cfg.runtime)
        self.threads = decode_threads(cfg.runtime)
        pc = cfg.patchcore
        self.embedder, self.weights_fingerprint = build_embedder(pc, self.storage, self.device, bn_shift_input(pc))
        self.projection = make_projection(pc.embed_dim, pc.coreset_projection_dim, pc.seed, pc.coreset_mode)

    def ready(self) -> str:
        return self.weights_fingerprint

    def extract_and_reduce(self, unit: WorkUnit, n_shards: int) -> dict[str, Any]:
        pc = self.cfg.patchcore
        start = time.perf_counter()
        chunks, errors, n_images, grid = [], [], 0, None
        batches = iter_batches(self.storage, unit, self.cfg.decode, preprocess_of(pc), pc.batch_size, self.threads)
        for batch in prefetched(batches):  # the next batch decodes while this one is embedded
            errors += [(f.source_uri, f.member, f.error) for f in batch.failed if f.status == "error"]
            if batch.tensor is None:
                continue
            feats, grid = self.embedder(to_device(batch.tensor, self.device))
            chunks.append(feats.reshape(-1, feats.shape[-1]))  # stays on the device
            n_images += len(batch.items)
        features_s = time.perf_counter() - start
        if not chunks:
            return {"features": None, "n_images": 0, "n_patches": 0, "errors": errors, "grid": None,
                    "features_s": features_s, "coreset_s": 0.0}
        features = torch.cat(chunks)
        del chunks
        start = time.perf_counter()
        budget = local_budget(len(features), pc.coreset_ratio, n_shards, pc.local_oversample, pc.coreset_mode)
        keep = select_coreset(features, budget, self.projection, pc.seed, pc.coreset_engine, pc.coreset_dtype,
                              pc.coreset_mode)
        return {"features": features[keep].float().cpu().numpy(), "n_images": n_images,
                "n_patches": len(features), "errors": errors, "grid": grid, "features_s": features_s,
                "coreset_s": time.perf_counter() - start}

    def reduce(self, _index: int, vectors: np.ndarray, budget: int) -> np.ndarray:
        """One merge step on this worker's device: the ``budget`` rows of ``vectors`` a coreset keeps."""
        pc = self.cfg.patchcore
        return reduce_rows(vectors, budget, pc.embed_dim, pc.coreset_projection_dim, pc.seed, pc.coreset_engine,
                           pc.coreset_dtype, pc.coreset_mode)

    def calibration_scores(self, units: list[WorkUnit], vectors: np.ndarray, meta: BankMetadata) -> list[float]:
        index = ShardedIndex([bank_index.build_index(vectors, meta.patchcore.index_dtype)])
        detector = PatchCoreDetector(self.embedder, build_knn(index, "auto", self.device), meta, self.device)
        scores: list[float] = []
        for unit in units:
            for batch in iter_batches(self.storage, unit, self.cfg.decode, preprocess_of(meta.patchcore),
                                      self.cfg.patchcore.batch_size, self.threads):
                if batch.tensor is not None:
                    scores += detector.score(batch.tensor).scores.tolist()
        return scores


def _merge_runner(cfg: FitConfig, pool: WorkerPool):
    """How merge steps run: on the fit workers (which hold the GPUs, if any) when they have GPUs or
    a round has several chunks to reduce in parallel; a single CPU step runs here on the driver."""
    pc = cfg.patchcore
    args = (pc.embed_dim, pc.coreset_projection_dim, pc.seed, pc.coreset_engine, pc.coreset_dtype, pc.coreset_mode)

    def run(jobs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        if cfg.runtime.num_gpus_per_worker == 0 and len(jobs) == 1:
            return [reduce_rows(x, budget, *args) for x, budget in jobs]
        out: list[np.ndarray | None] = [None] * len(jobs)
        for done in pool.map("reduce", list(range(len(jobs))), extra=lambda i: jobs[i]):
            if done.error is not None:
                raise RunIncomplete(f"coreset merge step failed ({start_error_line(done.error)}); no bank was "
                                    f"published")
            out[done.unit] = done.result
        return out

    return run


def split_calibration(listing: Listing, fraction: float) -> tuple[Listing, list[str]]:
    """Hold out a deterministic ``fraction`` of loose images (at least one) to calibrate the threshold."""
    if fraction <= 0 or len(listing.images) < 2:
        return listing, []
    ordered = sorted(listing.images, key=stable_hash)
    n_cal = max(1, round(fraction * len(ordered)))
    held = set(ordered[:n_cal])
    train = [u for u in listing.images if u not in held]
    return Listing(train, listing.tars, listing.skipped, listing.videos), sorted(held)


FEATURE_SETTINGS = ("backbone", "weights", "seed", "layers", "image_size", "crop_fraction", "interpolation",
                    "pretrain_embed_dim", "embed_dim", "patchsize", "precision", "coreset_ratio",
                    "coreset_projection_dim", "coreset_mode")


def _parent(storage: Storage, cfg: FitConfig) -> tuple[FitConfig, BankMetadata | None, np.ndarray | None]:
    """For an update: the parent bank, its vectors, and ``cfg`` with the parent's feature settings."""
    if cfg.update_from is None:
        return cfg, None, None
    uri = resolve_bank_uri(storage, cfg.bank, cfg.update_from)
    parent = load_metadata(storage, uri)
    if parent.bn_shift_input is not None:
        raise ConfigError(f"update_from={parent.version}: that bank was imported from the official code or fitted "
                          f"with bn_shift official, whose features come from a backbone with shifted BatchNorm "
                          f"statistics; updates fit on the clean backbone, so its vectors cannot be extended: fit a "
                          f"new bank instead")
    vectors = load_index(storage, uri, parent).all_vectors()
    inherited = {k: getattr(parent.patchcore, k) for k in FEATURE_SETTINGS}
    cfg = cfg.model_copy(update={"patchcore": cfg.patchcore.model_copy(update=inherited)})
    return cfg, parent, vectors


def _check_weights(storage: Storage, backbone: str, weights: str) -> None:
    """Weights that cannot be named, read or loaded fail here, on the driver, before any worker starts."""
    from pipeline.errors import WeightsError
    from pipeline.features.backbones import is_torchvision, load_state_dict, torchvision_weights

    if weights == "none":
        log.warning("patchcore.weights=none: the backbone is randomly initialised, so this bank's scores mean "
                    "nothing about real anomalies (fine for tests and demos; give a weights file for real use)")
        return
    try:
        if is_torchvision(weights):
            torchvision_weights(backbone, weights)
        else:
            load_state_dict(storage, weights)
    except WeightsError as exc:
        raise SetupError(str(exc)) from exc


def run_fit(cfg: FitConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    storage = Storage(cfg.storage)
    storage.check_reachable(cfg.normal, "normal")
    storage.check_writable_folder(cfg.bank, "bank")  # a file there would fail the publish, after the whole fit
    tracking_uri = check_tracking(cfg.tracking)
    cfg, parent, parent_vectors = _parent(storage, cfg)
    pc = cfg.patchcore
    _check_weights(storage, pc.backbone, pc.weights)
    fraction = preprocess_of(pc).inspected_fraction
    log.log(logging.INFO if fraction >= 1 else logging.WARNING, "patchcore.crop_fraction=%s: %s", pc.crop_fraction,
            describe_inspected(fraction))
    listing = list_inputs(storage, cfg.normal, exclude=(cfg.bank,))
    if not listing.images and not listing.tars and not listing.videos:
        raise ConfigError(f"normal={cfg.normal}: no images, .tar shards or videos found")
    train, calibration = split_calibration(listing, pc.calibration_fraction)
    n_buckets = max(math.ceil(len(train.images) / pc.images_per_shard), min(cfg.runtime.workers, len(train.images)))
    units, _ = plan_units(train, pc.images_per_shard, n_buckets=max(1, n_buckets))
    units = [u for u in units if u.files or u.tar] + plan_video_units(storage, listing.videos, cfg.video)
    n_shards = len(units)

    local = init_ray(cfg.runtime)
    pool = WorkerPool(FitWorker, (cfg,), cfg.runtime, size=fitting_workers(cfg.runtime, min(cfg.runtime.workers,
                                                                                             n_shards), local))
    try:
        return _fit_on_pool(cfg, storage, pool, listing, units, calibration, parent, parent_vectors, tracking_uri, t0)
    finally:
        pool.shutdown()


@dataclass
class Round1:
    """What the shards' workers sent back: their local coresets and what they saw."""

    coresets: list[np.ndarray] = field(default_factory=list)
    errors: list[tuple[str, str | None, str]] = field(default_factory=list)
    n_images: int = 0
    n_patches: int = 0
    grid: tuple[int, int] | None = None
    worker_s: list[tuple[float, float]] = field(default_factory=list)  # (features, coreset) seconds per shard
    nodes: NodeCounts = field(default_factory=NodeCounts)  # shards, images and seconds per Ray node


def _round1(cfg: FitConfig, pool: WorkerPool, units: list[WorkUnit]) -> Round1:
    """Every shard embedded and reduced to its local coreset on the workers; a shard that fails stops the fit."""
    out = Round1()
    results: dict[str, dict[str, Any]] = {}
    progress = Progress("fit shards", len(units), "images")
    for done in pool.map("extract_and_reduce", units, extra=lambda _u: (len(units),)):
        if done.error is not None:
            raise RunIncomplete(f"fit shard {done.unit.unit_id} failed ({start_error_line(done.error)}); no bank was "
                                f"published: fix the cause and run the fit again") from done.error
        results[done.unit.unit_id] = done.result
        out.nodes.add(done.placement, done.started_at, done.seconds, done.result["n_images"])
        progress.update(done.result["n_images"], len(done.result["errors"]))
    # in the plan's order, not the order the shards finished in: the bank must not depend on which node was faster
    for result in (results[unit.unit_id] for unit in units):
        out.errors += result["errors"]
        out.worker_s.append((result["features_s"], result["coreset_s"]))
        if result["features"] is not None:
            out.coresets.append(result["features"])
            out.n_images += result["n_images"]
            out.n_patches += result["n_patches"]
            out.grid = result["grid"]
    progress.finish()
    if not out.coresets:
        raise ConfigError(f"normal={cfg.normal}: none of the {len(out.errors)} inputs could be decoded")
    return out


def _merge(cfg: FitConfig, pool: WorkerPool, shards: Round1, parent: BankMetadata | None,
           parent_vectors: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Round 2: the union of the local coresets (and a parent bank's vectors) reduced to the final size."""
    pc = cfg.patchcore
    total_patches = shards.n_patches + (parent.n_patches if parent else 0)
    parts = ([parent_vectors] if parent is not None else []) + shards.coresets
    shards.coresets = []  # the merge tree owns them now
    k = min(sum(len(p) for p in parts), coreset_size(total_patches, pc.coreset_ratio, pc.coreset_mode))
    return merge_tree(parts, k, pc.merge_max_vectors, pc.local_oversample, _merge_runner(cfg, pool))


def _calibrate(pool: WorkerPool, calibration: list[str], union: np.ndarray, meta: BankMetadata) -> None:
    """The decision threshold from the held-out normal images: the largest of their scores."""
    if not calibration:
        return
    cal_units, _ = plan_units(Listing(calibration, [], []), len(calibration))
    cal_scores = np.array(pool.call_any("calibration_scores", cal_units, union, meta))
    if 0 < len(cal_scores) < RELIABLE_CALIBRATION_IMAGES:
        log.warning("the threshold is calibrated on %d held-out normal images; below %d it is unreliable: "
                    "add normal images, raise patchcore.calibration_fraction, or score with --threshold",
                    len(cal_scores), RELIABLE_CALIBRATION_IMAGES)
    if len(cal_scores):
        meta.threshold = float(cal_scores.max())
        meta.calibration = {"n": float(len(cal_scores)), "mean": float(cal_scores.mean()),
                            "std": float(cal_scores.std()), "max": float(cal_scores.max())}


def _metadata(cfg: FitConfig, listing: Listing, shards: Round1, n_shards: int, union: np.ndarray,
              weights_fingerprint: str, parent: BankMetadata | None) -> BankMetadata:
    lineage = (parent.lineage if parent else []) + [LineageEntry(
        version="", normal_uri=cfg.normal, n_images=shards.n_images,
        listing_fingerprint=listing_fingerprint(listing.images + listing.tars + listing.videos))]
    return BankMetadata(
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), normal_uri=cfg.normal,
        parent=parent.version if parent else None, lineage=lineage, patchcore=cfg.patchcore,
        weights_fingerprint=weights_fingerprint, grid=shards.grid, bn_shift_input=bn_shift_input(cfg.patchcore),
        patch_distance=parent.patch_distance if parent else "squared",
        n_images=shards.n_images + (parent.n_images if parent else 0), n_errors=len(shards.errors),
        n_patches=shards.n_patches + (parent.n_patches if parent else 0),
        n_bank=len(union), n_shards=n_shards, threshold=parent.threshold if parent else None,
        calibration=parent.calibration if parent else {}, fingerprint=fingerprint(union),
    )


def _fit_on_pool(cfg: FitConfig, storage: Storage, pool: WorkerPool, listing: Listing, units: list[WorkUnit],
                 calibration: list[str], parent: BankMetadata | None, parent_vectors: np.ndarray | None,
                 tracking_uri: str | None, t0: float) -> dict[str, Any]:
    weights_fingerprint = pool.wait_ready()[0]
    if parent is not None and weights_fingerprint != parent.weights_fingerprint:
        raise ConfigError(f"update_from={parent.version}: backbone weights {cfg.patchcore.weights} changed since "
                          f"that bank ({weights_fingerprint} vs {parent.weights_fingerprint}); fit a new bank instead")
    seconds = {"startup": time.perf_counter() - t0}
    t = time.perf_counter()
    shards = _round1(cfg, pool, units)
    seconds["features_and_local_coreset"] = time.perf_counter() - t
    t = time.perf_counter()
    union, merge_rounds = _merge(cfg, pool, shards, parent, parent_vectors)
    seconds["coreset_merge"] = time.perf_counter() - t
    meta = _metadata(cfg, listing, shards, len(units), union, weights_fingerprint, parent)
    t = time.perf_counter()
    _calibrate(pool, calibration, union, meta)
    seconds["calibration"] = time.perf_counter() - t
    t = time.perf_counter()
    meta = publish_bank(storage, cfg.bank, union, meta, cfg.patchcore.shard_vectors)
    seconds["index_and_publish"] = time.perf_counter() - t
    seconds["fit"] = sum(seconds[k] for k in ("features_and_local_coreset", "coreset_merge", "calibration",
                                              "index_and_publish"))
    seconds["worker_features_sum"] = sum(f for f, _ in shards.worker_s)
    seconds["worker_coreset_sum"] = sum(c for _, c in shards.worker_s)
    seconds["total"] = time.perf_counter() - t0
    pc = cfg.patchcore
    fraction = preprocess_of(pc).inspected_fraction
    summary = {
        "bank": cfg.bank, "version": meta.version, "parent": meta.parent, "fingerprint": meta.fingerprint,
        "n_inputs": len(listing.images) + len(listing.tars) + len(listing.videos), "n_train_images": shards.n_images,
        "n_calibration_images": len(calibration), "n_errors": len(shards.errors), "n_patches": shards.n_patches,
        "n_bank": meta.n_bank, "n_index_shards": len(meta.shards), "n_feature_shards": len(units),
        "threshold": meta.threshold,
        "random_weights": [f"the {pc.backbone} backbone (patchcore.weights=none)"] if pc.weights == "none" else [],
        "inspected_fraction": fraction, "inspected_area_fraction": fraction ** 2,
        "errors": [{"source_uri": s, "member": m, "error": e} for s, m, e in shards.errors],
        "coreset_merge_rounds": merge_rounds, "seconds": seconds,
        "nodes": shards.nodes.as_dict(),
    }
    _track(cfg, storage, meta, summary, tracking_uri)
    return summary


def _track(cfg: FitConfig, storage: Storage, meta: BankMetadata, summary: dict[str, Any],
           tracking_uri: str | None) -> None:
    """Log the fit to MLflow; a failure here is reported and never unpublishes the bank."""
    try:
        with start_run(cfg.tracking, f"fit-{meta.version}", "fit") as run:
            run.params(flatten(cfg.model_dump()) | {"bank.version": meta.version, "bank.fingerprint": meta.fingerprint,
                                                   "bank.parent": meta.parent}
                       | {k: summary[k] for k in ("inspected_fraction", "inspected_area_fraction")})
            run.tags({"bank_uri": cfg.bank, "bank_version": meta.version, "bank_parent": meta.parent or "",
                      "normal_uri": cfg.normal} | random_weights_tags(summary["random_weights"]))
            run.metrics({"n_train_images": summary["n_train_images"], "n_errors": summary["n_errors"],
                         "n_patches": summary["n_patches"], "n_bank": meta.n_bank}
                        | {f"seconds_{k}": v for k, v in summary["seconds"].items()} | node_metrics(summary["nodes"]))
            run.json_artifact("bank.json", meta.model_dump())
            run.json_artifact("lineage.json", [e.model_dump() for e in meta.lineage])
            run.json_artifact("fit_summary.json", summary)
            bank_uri = join(cfg.bank, meta.version)
            if sum(s.n_vectors for s in meta.shards) * meta.patchcore.embed_dim * 4 <= MAX_LOGGED_INDEX_BYTES:
                for shard in meta.shards:
                    run.file_artifact(shard.file, storage.read_bytes(join(bank_uri, shard.file)), folder="bank")
            summary["mlflow_run_id"] = run.run_id
        if tracking_uri:
            log.info("MLflow run %s at %s", summary["mlflow_run_id"], tracking_uri)
    except Exception as exc:  # noqa: BLE001 - the bank is published; tracking must not undo that
        summary["tracking_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.error("MLflow logging failed (%s): %s; bank %s is published", tracking_uri, summary["tracking_error"],
                  meta.version)
