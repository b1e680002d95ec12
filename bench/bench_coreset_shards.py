"""What a multi-shard fit's coreset costs, against the official single-pass sampler.

    python bench/bench_coreset_shards.py [--images 200] [--size 128] [--ratio 0.1]

On the seeded inspection set the other benches use (``pipeline.demo_data.make_dataset``: normal texture crops,
test crops with and without painted defects and their masks), the fit workers' embedder (resnet18 layer2+3,
random init) gives the patch features of the normal images once. Then, at equal bank size ``k = int(N x ratio)``:

- ``official single pass``: ``coreset_mode: official`` on one shard, which selects exactly what the official
  ``ApproximateGreedyCoresetSampler`` selects (tests/memory_bank/test_official_coreset.py): the baseline;
- ``S shards`` (1, 2, 4, 8), in both modes: the fit's two-round coreset as ``jobs.fit`` runs it (whole images per
  shard, each shard reduced to its ``local_budget`` by ``select_coreset``, the union reduced to ``k`` by
  ``merge_tree``).

Per bank: covering radius over all N patch features (full dimension, exact) relative to the baseline's, and the
image AUROC and pixel AUROC of PatchCore scoring the test set with that bank. Random-init backbone: the AUROCs
compare coresets with each other, they are not PatchCore's quality. No timing here (see bench_distributed_fit.py).
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "coreset_shards"
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="normal images")
    parser.add_argument("--size", type=int, default=128, help="image side, pixels")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset ratio")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seed", type=int, default=0, help="patchcore.seed: projections, coreset starts")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from pipeline.config import FitConfig
    from pipeline.demo_data import make_dataset
    from pipeline.detectors.patchcore import PatchCoreDetector, preprocess_of
    from pipeline.detectors.patchcore.fit import FitWorker, local_budget
    from pipeline.evaluation.metrics import resize_nearest, roc_auc
    from pipeline.io.batches import iter_batches
    from pipeline.io.sources import Listing, plan_units
    from pipeline.memory_bank.bank import BankMetadata
    from pipeline.memory_bank.coreset import coreset_size, covering_radius, make_projection
    from pipeline.memory_bank.index import ShardedIndex, build_index
    from pipeline.memory_bank.knn import build_knn
    from pipeline.memory_bank.merge import merge_tree, select_coreset

    data = WORK / f"data-{args.images}-{args.size}"
    if not data.exists():
        make_dataset(data, n_train=args.images, n_test_good=40, n_test_defect=40, size=args.size)
    cfg = FitConfig.model_validate({"normal": str(data / "train" / "good"), "bank": str(WORK / "unused"),
                                    "patchcore": {"image_size": args.size, "coreset_ratio": args.ratio,
                                                  "calibration_fraction": 0, "seed": args.seed},
                                    "runtime": {"num_cpus_per_worker": os.cpu_count()}})
    worker = FitWorker(cfg)
    pc = cfg.patchcore
    files = sorted(str(p) for p in (data / "train" / "good").glob("*.png"))
    (unit,), _ = plan_units(Listing(files, [], []), len(files))
    feats, grid = [], None
    with torch.inference_mode():
        for batch in iter_batches(worker.storage, unit, cfg.decode, preprocess_of(pc), 32):
            f, grid = worker.embedder(batch.tensor)
            feats.append(f.reshape(-1, f.shape[-1]).float().numpy())
    x = np.concatenate(feats)
    n, per_image = len(x), grid[0] * grid[1]
    k = coreset_size(n, pc.coreset_ratio, "official")
    xt = torch.from_numpy(x)

    def sharded(mode: str, shards: int) -> np.ndarray:
        """Rows the fit keeps with ``shards`` shards of whole images (as plan_units cuts a listing)."""
        projection = make_projection(pc.embed_dim, pc.coreset_projection_dim, pc.seed, mode)
        parts = []
        for images in np.array_split(np.arange(len(files)), shards):
            rows = (images[:, None] * per_image + np.arange(per_image)).ravel()
            budget = local_budget(len(rows), pc.coreset_ratio, shards, pc.local_oversample, mode)
            keep = select_coreset(xt[rows], budget, projection, pc.seed, "numpy", "float32", mode).numpy()
            parts.append(rows[keep])
        ids = np.arange(n, dtype=np.float32)[:, None]  # carry row ids through merge_tree beside the vectors
        tagged = [np.concatenate([x[p], ids[p]], axis=1) for p in parts]

        def reduce_many(jobs):  # what reduce_rows keeps, with the ids beside
            return [rows[select_coreset(torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), budget, projection,
                                        pc.seed, "numpy", "float32", mode).numpy()] for rows, budget in jobs]

        union, _ = merge_tree(tagged, k, pc.merge_max_vectors, pc.local_oversample, reduce_many)
        return union[:, -1].astype(np.int64)

    test = sorted((data / "test").rglob("*.png"))
    (test_unit,), _ = plan_units(Listing([str(t) for t in test], [], []), len(test))
    labels = np.array([t.parent.name == "defect" for t in test])
    side = preprocess_of(pc).input_size
    masks = []
    for t in test:
        gt = data / "ground_truth" / "defect" / f"{t.stem}_mask.png"
        mask = np.array(Image.open(gt)) > 0 if labels[test.index(t)] else np.zeros((args.size, args.size), bool)
        full = resize_nearest(mask, (pc.image_size, pc.image_size))
        offset = (pc.image_size - side) // 2
        masks.append(full[offset:offset + side, offset:offset + side])
    meta = BankMetadata(created_at="bench", normal_uri="bench", backbone=pc.backbone, weights="none",
                        weights_fingerprint="", seed=pc.seed, layers=pc.layers, image_size=pc.image_size,
                        crop_fraction=pc.crop_fraction, pretrain_embed_dim=pc.pretrain_embed_dim,
                        embed_dim=pc.embed_dim, grid=grid, coreset_ratio=pc.coreset_ratio,
                        coreset_projection_dim=pc.coreset_projection_dim, num_neighbors=9, reweight=False,
                        sigma=pc.sigma, n_images=len(files), n_errors=0, n_patches=n, n_bank=k, n_shards=1,
                        threshold=None, calibration={}, fingerprint="")

    def evaluate(rows: np.ndarray) -> tuple[float, float, float]:
        det = PatchCoreDetector(worker.embedder, build_knn(ShardedIndex([build_index(x[rows])]), "faiss", "cpu"),
                                meta)
        scores, maps = [], []
        for batch in iter_batches(worker.storage, test_unit, cfg.decode, preprocess_of(pc), 32):
            result = det.score(batch.tensor)
            scores.append(result.scores)
            maps.append(result.maps)
        scores, maps = np.concatenate(scores), np.concatenate(maps)
        pixel = roc_auc(np.concatenate([m.ravel() for m in masks]), maps.reshape(-1))
        return covering_radius(x, x[rows]), roc_auc(labels, scores), pixel

    baseline = sharded("official", 1)
    base_radius, base_image, base_pixel = evaluate(baseline)
    print(f"seed {args.seed}: {len(files)} normal images {args.size} px, resnet18 layer2+3 (random init), {n} patch "
          f"features -> k = int({n} x {pc.coreset_ratio}) = {k}; test: {labels.sum()} defect + {(~labels).sum()} "
          "good images")
    print("| bank | covering radius | vs official single pass | image AUROC | pixel AUROC |")
    print("|---|---|---|---|---|")
    print(f"| official single pass | {base_radius:.3f} | 1.000x | {base_image:.4f} | {base_pixel:.4f} |")
    for mode in ("exact", "official"):
        for shards in args.shards:
            if mode == "official" and shards == 1:
                continue  # the baseline
            radius, image, pixel = evaluate(sharded(mode, shards))
            print(f"| {mode}, {shards} shard{'s' * (shards > 1)} | {radius:.3f} | {radius / base_radius:.3f}x | "
                  f"{image:.4f} ({image - base_image:+.4f}) | {pixel:.4f} ({pixel - base_pixel:+.4f}) |")


if __name__ == "__main__":
    main()
