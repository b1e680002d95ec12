"""This project's PatchCore on a benchmark folder, in one process (no Ray), like anomalib's run.

Usage: python ours_patchcore.py DATA_ROOT WEIGHTS.pt IMAGE_SIZE PRECISION max|eq7 OUT.json
Fit = feature extraction + greedy coreset + faiss index, through the same worker code the Ray
job runs. Scoring = read + decode + features + kNN + map + Parquet part, per image, timed on a
second pass over the test set. ``max`` scores an image by its largest patch distance (the
product's default), ``eq7`` re-weights it as the paper's Eq. 7 (what anomalib always does).

The image scores and maps of every image under DATA_ROOT/test go to OUT.npz, a score table
(``score_table.py``) from which the driver computes the AUROCs with the same code as for anomalib.
OUT.json also holds a stage profile of scoring: milliseconds per image in the backbone + patch
embedding and in the exact kNN search, measured apart on the same batches.
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch
from score_table import test_images, write_table

from pipeline.config import DecodeSettings, FitConfig, ScoreConfig
from pipeline.detectors.patchcore import PatchCoreDetector, preprocess_of
from pipeline.detectors.patchcore.fit import FitWorker
from pipeline.io.batches import iter_batches
from pipeline.io.sources import Listing, list_inputs, plan_units
from pipeline.io.storage import Storage
from pipeline.memory_bank import index as bank_index
from pipeline.memory_bank.bank import BankMetadata, fingerprint, publish_bank
from pipeline.score import ScoreWorker, resolve_model


def test_unit(root: Path):
    images = test_images(root)
    (unit,), _ = plan_units(Listing(images, [], []), len(images))
    return unit


def write_score_table(detector: PatchCoreDetector, storage: Storage, decode: DecodeSettings, root: Path,
                      path: Path) -> None:
    """Score every test image of ``root`` with ``detector`` and write the score table to ``path``."""
    scored = {}
    for batch in iter_batches(storage, test_unit(root), decode, preprocess_of(detector.meta), 16):
        if batch.failed:
            raise RuntimeError(f"{batch.failed[0].source_uri}: {batch.failed[0].reason}")
        result = detector.score(batch.tensor)
        for item, score, amap in zip(batch.items, result.scores, result.maps, strict=True):
            scored[item.source_uri] = (float(score), amap)
    write_table(path, root, scored)


def stage_ms(detector: PatchCoreDetector, storage: Storage, decode: DecodeSettings, root: Path) -> dict[str, float]:
    """Milliseconds per test image in the backbone + patch embedding and in the exact kNN search."""
    features_s = knn_s = 0.0
    n = 0
    for batch in iter_batches(storage, test_unit(root), decode, preprocess_of(detector.meta), 16):
        start = time.perf_counter()
        feats, _ = detector.embedder(batch.tensor)
        middle = time.perf_counter()
        detector.knn.search(feats.reshape(-1, feats.shape[-1]), 1)
        features_s, knn_s = features_s + middle - start, knn_s + time.perf_counter() - middle
        n += len(batch.items)
    return {"features_ms_per_image": features_s * 1e3 / n, "knn_ms_per_image": knn_s * 1e3 / n}


def main() -> None:
    root, weights, size, precision, scoring, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], \
        sys.argv[5], Path(sys.argv[6])
    work = out.parent / "ours-run"
    runtime = {"workers": 1, "num_cpus_per_worker": 2}
    fit_cfg = FitConfig.model_validate({
        "normal": str(root / "train" / "good"), "bank": str(work / "bank"), "runtime": runtime,
        "patchcore": {"weights": weights, "image_size": size, "crop_fraction": 1.0, "coreset_ratio": 0.1,
                      "calibration_fraction": 0, "batch_size": 16, "precision": precision,
                      "reweight": {"max": False, "eq7": True}[scoring]}, "tracking": {"enabled": False}})
    worker = FitWorker(fit_cfg)
    (unit,), _ = plan_units(list_inputs(worker.storage, fit_cfg.normal), 10_000)
    start = time.perf_counter()
    shard = worker.extract_and_reduce(unit, 1)
    bank_index.serialize(bank_index.build_index(shard["features"]))  # what publishing costs, minus the write
    fit_s = time.perf_counter() - start
    pc = fit_cfg.patchcore
    meta = publish_bank(worker.storage, fit_cfg.bank, shard["features"], BankMetadata(
        created_at="bench", normal_uri=fit_cfg.normal, patchcore=pc.model_copy(update={"image_size": size}),
        weights_fingerprint=worker.weights_fingerprint, grid=shard["grid"], n_images=shard["n_images"],
        n_errors=0, n_patches=shard["n_patches"], n_bank=len(shard["features"]), n_shards=1, threshold=None,
        calibration={}, fingerprint=fingerprint(shard["features"])), pc.shard_vectors)

    score_cfg = ScoreConfig.model_validate({"input": str(root / "test"), "bank": fit_cfg.bank,
                                            "bank_version": meta.version,
                                            "output": str(work / "results"), "heatmaps": "none",
                                            "batch_size": 16, "runtime": runtime, "tracking": {"enabled": False}})
    scorer = ScoreWorker(score_cfg, "bench", resolve_model(worker.storage, score_cfg))
    unit = test_unit(root)
    scorer.score_unit(unit)  # warm-up pass, as for anomalib's predict
    start = time.perf_counter()
    counts = scorer.score_unit(unit)
    score_s = time.perf_counter() - start

    write_score_table(scorer.detector, scorer.storage, score_cfg.decode, root, out.with_suffix(".npz"))
    out.write_text(json.dumps({
        "system": f"ours {precision} {scoring}", "fit_s": fit_s, "fit_features_s": shard["features_s"],
        "fit_coreset_s": shard["coreset_s"],
        "n_bank": meta.n_bank, "score_images_per_s": counts["n_ok"] / score_s,
        **stage_ms(scorer.detector, scorer.storage, score_cfg.decode, root),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
