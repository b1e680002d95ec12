"""Distributed fit: time, peak memory and coreset quality, single-machine greedy vs two-round.

    python bench/bench_distributed_fit.py [--sizes 500 2000] [--workers 1 2 4] [--quality-images 500]

Part 1 runs the real job (``python -m jobs.fit`` on local Ray) for each data size and worker
count; "single" is one shard holding every feature (plain greedy), "distributed" is one shard
per worker (two-round coreset). Peak RSS is the sum over the job's whole process tree (driver,
raylet, workers), sampled every 0.2 s. Part 2 measures coreset quality in one process on the
same features: covering radius of the two-round coreset against single-machine greedy for
2, 4 and 8 shards at equal bank size, and held-out image AUROC with each bank.
Random-init backbone: AUROC compares the two coresets, it is not PatchCore's quality.
"""

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "distributed"
sys.path.insert(0, str(HERE.parent))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_fit_job(normal: Path, workers: int, per_shard: int, size: int, *extra: str) -> dict:
    """``python -m jobs.fit`` as a whole process: its summary, wall time from launch to exit, peak tree RSS."""
    bank = WORK / f"bank-{time.time_ns()}"
    cmd = [sys.executable, "-m", "jobs.fit", "--normal", str(normal), "--bank", str(bank), "--workers", str(workers),
           "--num-cpus-per-worker", str(os.cpu_count() / workers), "--image-size", str(size),
           "--images-per-shard", str(per_shard), "--calibration-fraction", "0", "--no-tracking", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ | {"RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1"})
    peak = [0]

    def sample() -> None:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"jobs.fit failed: {out[-2000:]}")
    summary = json.loads(out[out.index("{"):])
    return summary | {"wall_s": time.perf_counter() - start, "peak_rss_mb": peak[0] / 2**20, "bank_root": str(bank)}


def subset(data: Path, n: int) -> Path:
    folder = WORK / f"normal-{n}"
    if not folder.exists():
        folder.mkdir(parents=True)
        for src in sorted((data / "train" / "good").glob("*.png"))[:n]:
            (folder / src.name).write_bytes(src.read_bytes())
    return folder


def quality(data: Path, n_images: int, size: int) -> list[str]:
    import numpy as np

    from pipeline.config import FitConfig
    from pipeline.detectors.patchcore import PatchCoreDetector, preprocess_of
    from pipeline.detectors.patchcore.fit import FitWorker, local_budget
    from pipeline.evaluation.metrics import roc_auc
    from pipeline.io.batches import iter_batches
    from pipeline.io.sources import Listing, plan_units
    from pipeline.memory_bank.bank import BankMetadata
    from pipeline.memory_bank.coreset import covering_radius, greedy_kcenter, project, random_projection
    from pipeline.memory_bank.index import ShardedIndex, build_index
    from pipeline.memory_bank.knn import build_knn

    cfg = FitConfig.model_validate({"normal": str(subset(data, n_images)), "bank": str(WORK / "unused"),
                                    "patchcore": {"image_size": size, "coreset_ratio": 0.1},
                                    "runtime": {"num_cpus_per_worker": os.cpu_count()}})
    worker = FitWorker(cfg)
    pc = cfg.patchcore
    files = sorted(str(p) for p in Path(cfg.normal).glob("*.png"))
    (unit,), _ = plan_units(Listing(files, [], []), len(files))
    feats, grid = [], None
    for batch in iter_batches(worker.storage, unit, cfg.decode, preprocess_of(pc), 32):
        f, grid = worker.embedder(batch.tensor)
        feats.append(f.reshape(-1, f.shape[-1]).numpy())
    x = np.concatenate(feats)
    proj = random_projection(pc.embed_dim, pc.coreset_projection_dim, pc.seed)
    z = project(x, proj)
    k = math.ceil(pc.coreset_ratio * len(x))
    start = time.perf_counter()
    single = greedy_kcenter(z, k, seed=pc.seed)
    single_s = time.perf_counter() - start
    banks = {"single": single}
    lines = [f"quality on {n_images} images ({len(x)} patches -> k={k}): single-machine greedy {single_s:.1f} s"]
    # shards as the job cuts them: whole images per shard
    per_image = grid[0] * grid[1]
    order = np.random.default_rng(0).permutation(n_images)
    for shards in (2, 4, 8):
        selected = []
        for part in np.array_split(order, shards):
            rows = (part[:, None] * per_image + np.arange(per_image)).ravel()
            budget = local_budget(len(rows), pc.coreset_ratio, shards, pc.local_oversample)
            keep = greedy_kcenter(z[rows], budget, pc.seed)
            selected.append(rows[keep])
        union = np.concatenate(selected)
        banks[f"{shards} shards"] = union[greedy_kcenter(z[union], k, seed=pc.seed)]

    test = sorted(str(p) for p in (data / "test").rglob("*.png"))
    (test_unit,), _ = plan_units(Listing(test, [], []), len(test))
    labels = np.array(["/defect/" in t for t in test])
    meta = BankMetadata(created_at="b", normal_uri="b", weights_fingerprint="", grid=grid,
                        patchcore=pc.model_copy(update={"image_size": size, "weights": "none", "seed": 0,
                                                        "num_neighbors": 9, "reweight": False, "sigma": 4}),
                        n_images=n_images, n_errors=0, n_patches=len(x), n_bank=k, n_shards=1, threshold=None,
                        calibration={}, fingerprint="")
    radius_single = covering_radius(x, x[single])
    auroc_single = None
    for name, idx in banks.items():
        det = PatchCoreDetector(worker.embedder, build_knn(ShardedIndex([build_index(x[idx])]), "faiss", "cpu"), meta)
        batches = iter_batches(worker.storage, test_unit, cfg.decode, preprocess_of(pc), 32)
        scores = np.concatenate([det.score(b.tensor).scores for b in batches])
        auroc = roc_auc(labels, scores)
        auroc_single = auroc if auroc_single is None else auroc_single
        radius = covering_radius(x, x[idx])
        lines.append(f"  {name:10} covering radius {radius:8.3f} ({radius / radius_single:.3f}x single)   "
                     f"held-out image AUROC {auroc:.4f} ({auroc - auroc_single:+.4f})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--quality-images", type=int, default=500)
    args = parser.parse_args()
    from pipeline.demo_data import make_dataset

    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"data-{max(args.sizes)}-{args.image_size}"
    if not data.exists():
        make_dataset(data, n_train=max(args.sizes), n_test_good=50, n_test_defect=50, size=args.image_size)
    rows = []
    for n in args.sizes:
        normal = subset(data, n)
        rows.append((n, "single", 1, run_fit_job(normal, 1, n, args.image_size)))
        for w in (w for w in args.workers if w > 1):  # one worker, one shard: that is the "single" row
            rows.append((n, "distributed", w, run_fit_job(normal, w, math.ceil(n / w), args.image_size)))
    print(f"\nfit on local Ray, {args.image_size} px, resnet18 layer2+3, coreset 0.1, {os.cpu_count()} cores")
    print(f"{'images':>6} {'mode':12} {'workers':>7} {'shards':>6} {'bank':>7} {'fit s':>7} {'features+local':>14} "
          f"{'merge s':>7} {'process s':>9} {'peak RSS MB':>11}")
    for n, mode, w, r in rows:
        s = r["seconds"]
        print(f"{n:6d} {mode:12} {w:7d} {r['n_feature_shards']:6d} {r['n_bank']:7d} {s['fit']:7.1f} "
              f"{s['features_and_local_coreset']:14.1f} {s['coreset_merge']:7.1f} {r['wall_s']:9.1f} "
              f"{r['peak_rss_mb']:11.0f}")
        print(f"       per-worker sums: features {s['worker_features_sum']:.1f} s, local coreset "
              f"{s['worker_coreset_sum']:.1f} s, start-up {s['startup']:.1f} s")
    print()
    for line in quality(data, args.quality_images, args.image_size):
        print(line)


if __name__ == "__main__":
    main()
