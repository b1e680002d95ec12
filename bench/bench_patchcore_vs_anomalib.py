"""PatchCore fit and scoring, this project versus anomalib's PatchCore, on the same CPU run.

Same data (a seeded synthetic inspection set with masks), same backbone (resnet18, layer2+3),
same weights file (a seeded random-init state_dict both load), coreset ratio 0.1, 2 threads.
Each system runs in its own fresh process (peak RSS is that process's own). The backbone is
random, so the AUROCs compare the two implementations; they are not PatchCore's quality.

    python bench/bench_patchcore_vs_anomalib.py [--images 60] [--size 256]

anomalib lives in its own virtual environment (bench/.work/anomalib-venv, made on first use);
it is never a dependency of the product.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"


def anomalib_python() -> str:
    venv = WORK / "anomalib-venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.14.1", "torchvision==0.29.1",
                        "anomalib==2.7.0"], check=True)
    return str(venv / "bin" / "python")


def seeded_weights(path: Path) -> None:
    import torch
    import torchvision

    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def run(python: str, script: str, *args: str) -> dict:
    out = WORK / f"{Path(script).stem}-{'-'.join(args[3:])}.json"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([python, str(HERE / script), *args, str(out)], check=True,
                   env=os.environ | {"PYTHONPATH": str(HERE.parent)}, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - start
    return result


def ray_job(data: Path, weights: Path, size: int) -> dict:
    """The product as a user runs it: jobs.fit then jobs.score on local Ray, 2 workers x 1 CPU.
    Scoring reads an archive of the 40 test images copied 10 times (400 files), so the rate
    is a steady-state one; start-up is reported apart."""
    out = WORK / "ray-job"
    archive = WORK / "archive-400"
    if not archive.exists():
        for copy in range(10):
            for src in sorted((data / "test").rglob("*.png")):
                dest = archive / f"copy{copy}" / src.parent.name / src.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(src.read_bytes())
    common = ["--workers", "2", "--no-tracking"]
    timings = {}
    for name, args in (("fit", ["-m", "jobs.fit", "--normal", str(data / "train" / "good"), "--bank",
                                str(out / "bank"), "--weights", str(weights), "--image-size", str(size),
                                "--calibration-fraction", "0"]),
                       ("score", ["-m", "jobs.score", "--input", str(archive), "--bank", str(out / "bank"),
                                  "--output", str(out / "results"), "--heatmaps", "none",
                                  "--run-name", f"bench-{time.time_ns()}"])):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args, *common], check=True, capture_output=True, text=True,
                              cwd=HERE.parent, env=os.environ | {"RAY_AUTH_MODE": "disabled"})
        timings[name] = json.loads(proc.stdout[proc.stdout.index("{"):]) | {"wall_s": time.perf_counter() - start}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--skip-anomalib", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from pipeline.demo_data import make_dataset

    WORK.mkdir(exist_ok=True)
    data = WORK / f"data-{args.images}-{args.size}"
    if not data.exists():
        make_dataset(data, n_train=args.images, n_test_good=20, n_test_defect=20, size=args.size)
    weights = WORK / "resnet18-seed0.pt"
    seeded_weights(weights)

    ours = run(sys.executable, "ours_patchcore.py", str(data), str(weights), str(args.size), "float32")
    ours_bf16 = run(sys.executable, "ours_patchcore.py", str(data), str(weights), str(args.size), "bfloat16")
    rows = [("ours fp32", ours), ("ours bf16", ours_bf16)]
    if not args.skip_anomalib:
        rows.append(("anomalib", run(anomalib_python(), "anomalib_patchcore.py", str(data), str(weights),
                                     str(args.size))))
    job = ray_job(data, weights, args.size)
    print(f"\nPatchCore, {args.images} train images, 40 test images, {args.size} px, resnet18 layer2+3, "
          f"coreset 0.1, CPU ({os.cpu_count()} cores)")
    print(f"{'system':10} {'fit s':>8} {'bank':>7} {'score img/s':>12} {'peak RSS MB':>12} "
          f"{'image AUROC':>12} {'pixel AUROC':>12} {'process s':>10}")
    for name, r in rows:
        print(f"{name:10} {r['fit_s']:8.2f} {r['n_bank']:7d} {r['score_images_per_s']:12.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['image_auroc']:12.4f} {r['pixel_auroc']:12.4f} {r['process_wall_s']:10.1f}")
    if not args.skip_anomalib:
        a = rows[-1][1]
        for name, r in rows[:-1]:
            print(f"{name} / anomalib: fit speed-up {a['fit_s'] / r['fit_s']:.1f}x, scoring throughput "
                  f"{r['score_images_per_s'] / a['score_images_per_s']:.2f}x, peak RSS "
                  f"{r['peak_rss_mb'] / a['peak_rss_mb']:.2f}x, "
                  f"image AUROC {r['image_auroc'] - a['image_auroc']:+.4f}, "
                  f"pixel AUROC {r['pixel_auroc'] - a['pixel_auroc']:+.4f}")
    fit, score = job["fit"], job["score"]
    print(f"ours as a Ray job (local Ray, 2 workers x 1 CPU, fp32): fit stage {fit['seconds']['fit']:.2f} s "
          f"(start-up {fit['seconds']['startup']:.1f} s, process {fit['wall_s']:.1f} s); scoring "
          f"{score['images_per_s']:.2f} img/s over {score['n_inputs']} images "
          f"(start-up {score['seconds']['startup']:.1f} s, "
          f"process {score['wall_s']:.1f} s)")
    for name, r in rows[:-1] if not args.skip_anomalib else rows:
        print(f"{name} fit breakdown: features {r['fit_features_s']:.2f} s, coreset {r['fit_coreset_s']:.2f} s")


if __name__ == "__main__":
    main()
