"""Fit time, this project's Ray job versus anomalib's PatchCore, both in one run, AUROC on one test set.

    python bench/bench_fit_vs_anomalib.py [--images 200] [--size 128]

Same data (seeded synthetic set: N normal training images, 50 good + 50 defect test images),
same backbone (resnet18 layer2+3), same seeded random-init weights file, coreset ratio 0.1.

- ours, single: ``python -m jobs.fit`` on local Ray, 1 worker x 2 CPUs, one shard (plain greedy).
- ours, distributed: the same with 2 workers x 1 CPU, one shard each (two-round coreset).
- anomalib 2.7.0: ``anomalib_patchcore.py`` in its own venv (2 threads).

Each system runs as its own process, one after the other. "process s" is wall time from launch:
to exit for ``jobs.fit`` (interpreter start, imports, Ray start, workers' model build, fit,
publishing, Ray shutdown), to the end of ``engine.fit`` for anomalib (interpreter start, imports,
model build, fit; it then goes on to predict the test set, which is not counted). The stage columns
are each system's own timers: for ours Ray start-up (until the workers are ready), features +
local coreset on the workers, the merge of the shard coresets, and the whole fit stage (features to
published bank); for anomalib features (``engine.fit`` minus the coreset) and its coreset.

AUROC: each bank scores every test image (ours in this process through the product's detector,
anomalib's model in its script) into a score table; every AUROC comes from those tables with the
same labels, masks and function (``score_table.py``). Our banks use the product's default image
score (max patch distance); anomalib re-weights it (paper Eq. 7). Random weights: the AUROCs compare
the implementations, not PatchCore's quality.
"""

import argparse
import time
from pathlib import Path

import torch
from bench_distributed_fit import run_fit_job
from bench_patchcore_vs_anomalib import anomalib_python, run, seeded_weights
from machine import MachineLoad
from ours_patchcore import write_score_table
from score_table import aurocs

from pipeline.config import DecodeSettings, StorageSettings
from pipeline.demo_data import make_dataset
from pipeline.detectors.patchcore import PatchCoreDetector
from pipeline.io.storage import Storage

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "fit-vs-anomalib"


def ours(data: Path, weights: Path, size: int, workers: int) -> dict:
    n = len(list((data / "train" / "good").glob("*.png")))
    job = run_fit_job(data / "train" / "good", workers, -(-n // workers), size, "--weights", str(weights),
                      "--crop-fraction", "1")
    s = job["seconds"]
    storage = Storage(StorageSettings())
    table = WORK / f"ours-{data.name}-{workers}.npz"
    write_score_table(PatchCoreDetector.load(storage, job["bank_root"]), storage, DecodeSettings(), data, table)
    return {"workers": workers, "shards": job["n_feature_shards"], "n_bank": job["n_bank"],
            "process_s": job["wall_s"], "startup_s": s["startup"], "fit_s": s["fit"],
            "features_s": s["features_and_local_coreset"], "coreset_s": s["coreset_merge"],
            "peak_rss_mb": job["peak_rss_mb"]} | aurocs(table, data)


def anomalib(data: Path, weights: Path, size: int) -> dict:
    r = run(anomalib_python(), "anomalib_patchcore.py", data, str(weights), str(size))
    process_s = r["fit_end_unix"] - r["launched_unix"]
    return {"workers": 1, "shards": 1, "n_bank": r["n_bank"], "process_s": process_s,
            "startup_s": process_s - r["fit_s"], "fit_s": r["fit_s"], "features_s": r["fit_features_s"],
            "coreset_s": r["fit_coreset_s"], "peak_rss_mb": r["peak_rss_mb"],
            "iterations_per_s": r["coreset_iterations_per_s"]} | {k: r[k] for k in (
                "n_patches", "image_auroc", "pixel_auroc", "n_test", "n_defect")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    load = MachineLoad()
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"data-{args.images}-{args.size}"
    if not data.exists():
        make_dataset(data, n_train=args.images, n_test_good=50, n_test_defect=50, size=args.size)
    weights = HERE / ".work" / "resnet18-seed0.pt"
    seeded_weights(weights)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [("ours single", ours(data, weights, args.size, 1)), ("ours distributed", ours(data, weights, args.size, 2)),
            ("anomalib 2.7.0", anomalib(data, weights, args.size))]
    a = rows[-1][1]
    print(f"\nfit, {args.images} normal images at {args.size} px ({a['n_patches']} patches -> bank "
          f"{a['n_bank']}), resnet18 layer2+3, coreset 0.1, CPU; AUROC on the same {a['n_test']} test images "
          f"({a['n_defect']} with defects); run started {started}")
    print(f"{'system':17} {'workers':>7} {'shards':>6} {'bank':>6} {'process s':>9} {'start-up s':>10} "
          f"{'fit stage s':>11} {'features s':>10} {'coreset s':>9} {'peak RSS MB':>11} {'image AUROC':>11} "
          f"{'pixel AUROC':>11}")
    for name, r in rows:
        print(f"{name:17} {r['workers']:7d} {r['shards']:6d} {r['n_bank']:6d} {r['process_s']:9.1f} "
              f"{r['startup_s']:10.1f} {r['fit_s']:11.1f} {r['features_s']:10.1f} {r['coreset_s']:9.1f} "
              f"{r['peak_rss_mb']:11.0f} {r['image_auroc']:11.4f} {r['pixel_auroc']:11.4f}")
    print("(ours: features s = features + local coreset on the workers, coreset s = merge of the shard coresets; "
          "peak RSS = the job's whole process tree. anomalib: start-up = interpreter, imports and model build; "
          f"its coreset ran at {a['iterations_per_s']:.1f} iterations/s)")
    for name, r in rows[:-1]:
        print(f"anomalib / {name}: fit stage {a['fit_s'] / r['fit_s']:.1f}x, whole process "
              f"{a['process_s'] / r['process_s']:.1f}x")
    print(load.report())


if __name__ == "__main__":
    main()
