"""This project's PatchCore on the benchmark folder, in one process (no Ray), like anomalib's run.

Usage: python ours_patchcore.py DATA_ROOT WEIGHTS.pt IMAGE_SIZE PRECISION OUT.json
Fit = feature extraction + greedy coreset + faiss index, through the same worker code the Ray
job runs. Scoring = read + decode + features + kNN + map + Parquet part, per image.
"""

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import FitConfig, ScoreConfig
from pipeline.fit import FitWorker
from pipeline.io.batches import iter_batches
from pipeline.io.sources import Listing, list_inputs, plan_units
from pipeline.memory_bank import index as bank_index
from pipeline.memory_bank.bank import BankMetadata, fingerprint, publish_bank
from pipeline.metrics import roc_auc
from pipeline.score import ScoreWorker, resolve_model


def main() -> None:
    root, weights, size, precision, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], \
        Path(sys.argv[5])
    work = out.parent / "ours-run"
    runtime = {"workers": 1, "num_cpus_per_worker": 2}
    fit_cfg = FitConfig.model_validate({
        "normal": str(root / "train" / "good"), "bank": str(work / "bank"), "runtime": runtime,
        "patchcore": {"weights": weights, "image_size": size, "coreset_ratio": 0.1, "calibration_fraction": 0,
                      "batch_size": 16, "precision": precision}, "tracking": {"enabled": False}})
    worker = FitWorker(fit_cfg)
    (unit,), _ = plan_units(list_inputs(worker.storage, fit_cfg.normal), 10_000)
    start = time.perf_counter()
    shard = worker.extract_and_reduce(unit, 1)
    bank_index.serialize(bank_index.build_index(shard["features"]))  # what publishing costs, minus the write
    fit_s = time.perf_counter() - start
    pc = fit_cfg.patchcore
    meta = publish_bank(worker.storage, fit_cfg.bank, shard["features"], BankMetadata(
        created_at="bench", normal_uri=fit_cfg.normal, backbone=pc.backbone, weights=pc.weights,
        weights_fingerprint=worker.weights_fingerprint, seed=pc.seed, layers=pc.layers, image_size=size,
        pretrain_embed_dim=pc.pretrain_embed_dim, embed_dim=pc.embed_dim, grid=shard["grid"],
        coreset_ratio=pc.coreset_ratio, coreset_projection_dim=pc.coreset_projection_dim,
        num_neighbors=pc.num_neighbors, reweight=pc.reweight, sigma=pc.sigma, precision=pc.precision,
        n_images=shard["n_images"],
        n_errors=0, n_patches=shard["n_patches"], n_bank=len(shard["features"]), n_shards=1, threshold=None,
        calibration={}, fingerprint=fingerprint(shard["features"])), pc.shard_vectors)

    score_cfg = ScoreConfig.model_validate({"input": str(root / "test"), "bank": fit_cfg.bank,
                                            "bank_version": meta.version,
                                            "output": str(work / "results"), "heatmaps": "none",
                                            "batch_size": 16, "runtime": runtime, "tracking": {"enabled": False}})
    scorer = ScoreWorker(score_cfg, "bench", resolve_model(worker.storage, score_cfg))
    listing = list_inputs(scorer.storage, score_cfg.input)
    (test_unit,), _ = plan_units(Listing(listing.images, [], []), 10_000)
    scorer.score_unit(test_unit)  # warm-up pass (anomalib's predict runs after its warm test pass)
    start = time.perf_counter()
    counts = scorer.score_unit(test_unit)
    score_s = time.perf_counter() - start

    labels, scores, pixel_labels, pixel_scores = [], [], [], []
    for batch in iter_batches(scorer.storage, test_unit, score_cfg.decode, size, 16):
        result = scorer.detector.score(batch.tensor)
        for item, s, amap in zip(batch.items, result.scores, result.maps, strict=True):
            path = Path(item.source_uri)
            defect = path.parent.name == "defect"
            mask = np.zeros((size, size), bool)
            if defect:
                mask_img = Image.open(root / "ground_truth" / "defect" / f"{path.stem}_mask.png")
                mask = np.asarray(mask_img.resize((size, size), Image.NEAREST)) > 127
            labels.append(defect)
            scores.append(s)
            pixel_labels.append(mask.ravel())
            pixel_scores.append(amap.ravel())
    out.write_text(json.dumps({
        "system": f"ours {precision}", "fit_s": fit_s, "fit_features_s": shard["features_s"],
        "fit_coreset_s": shard["coreset_s"],
        "n_bank": meta.n_bank, "score_images_per_s": counts["n_ok"] / score_s,
        "image_auroc": roc_auc(np.array(labels), np.array(scores)),
        "pixel_auroc": roc_auc(np.concatenate(pixel_labels), np.concatenate(pixel_scores)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
