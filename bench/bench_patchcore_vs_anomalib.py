"""PatchCore fit and scoring, this project versus anomalib's PatchCore, on the same CPU run.

Same data (a seeded synthetic inspection set with masks), same backbone (resnet18, layer2+3),
same weights file (a seeded random-init state_dict both load), coreset ratio 0.1, 2 threads.
Each system runs in its own fresh process (peak RSS is that process's own). The backbone is
random, so the AUROCs compare the two implementations; they are not PatchCore's quality.

Like with like: both systems fit on every training image and score every test image (anomalib
gets no validation or test split, see ``anomalib_patchcore.py``); each writes a score table (image
scores and anomaly maps in one order) and this script computes every AUROC from those tables with
the same labels, masks and function (``score_table.py``). anomalib always re-weights the image
score (paper Eq. 7); ours runs both settings (``max``: the product's default, ``eq7``), in float32
and with the bfloat16 backbone.

    python bench/bench_patchcore_vs_anomalib.py [--images 60] [--size 256]

anomalib lives in its own virtual environment (bench/.work/anomalib-venv, made on first use: it
sees this venv's packages, torch included, and adds anomalib 2.7.0 and its other dependencies);
it is never a dependency of the product.
"""

import argparse
import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path

from machine import MachineLoad
from score_table import aurocs

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"


def anomalib_python() -> str:
    venv = WORK / "anomalib-venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        (venv / "lib" / version / "site-packages" / "product-venv.pth").write_text(
            "\n".join(site.getsitepackages()) + "\n")  # the same torch build as ours, no second download
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "anomalib==2.7.0"], check=True)
    return str(venv / "bin" / "python")


def seeded_weights(path: Path) -> None:
    import torch
    import torchvision

    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def run(python: str, script: str, data: Path, *args: str) -> dict:
    """One system in its own process; its timings, plus whole-process wall time and the AUROCs of its
    score table."""
    out = data.parent / f"{Path(script).stem}-{data.name}-{'-'.join(args[2:])}.json"
    out.unlink(missing_ok=True)
    launched, start = time.time(), time.perf_counter()
    subprocess.run([python, str(HERE / script), str(data), *args, str(out)], check=True,
                   env=os.environ | {"PYTHONPATH": str(HERE.parent)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - start
    result["launched_unix"] = launched
    return result | aurocs(out.with_suffix(".npz"), data)


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
                                "--calibration-fraction", "0", "--crop-fraction", "1"]),
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
    load = MachineLoad()
    sys.path.insert(0, str(HERE.parent))
    from pipeline.demo_data import make_dataset

    WORK.mkdir(exist_ok=True)
    data = WORK / f"data-{args.images}-{args.size}"
    if not data.exists():
        make_dataset(data, n_train=args.images, n_test_good=20, n_test_defect=20, size=args.size)
    weights = WORK / "resnet18-seed0.pt"
    seeded_weights(weights)

    rows = [(f"ours {name} {scoring}", run(sys.executable, "ours_patchcore.py", data, str(weights), str(args.size),
                                            precision, scoring))
            for name, precision in (("fp32", "float32"), ("bf16", "bfloat16")) for scoring in ("max", "eq7")]
    if not args.skip_anomalib:
        rows.append(("anomalib eq7", run(anomalib_python(), "anomalib_patchcore.py", data, str(weights),
                                         str(args.size))))
    job = ray_job(data, weights, args.size)
    r0 = rows[0][1]
    print(f"\nPatchCore, {args.images} train images, {r0['n_test']} test images ({r0['n_defect']} with defects; "
          f"both systems score all of them), {args.size} px, resnet18 layer2+3, coreset 0.1, CPU, 2 threads")
    print(f"{'system':17} {'fit s':>7} {'coreset s':>9} {'bank':>6} {'score img/s':>11} {'peak RSS MB':>11} "
          f"{'image AUROC':>11} {'pixel AUROC':>11} {'process s':>9}")
    for name, r in rows:
        print(f"{name:17} {r['fit_s']:7.2f} {r['fit_coreset_s']:9.2f} {r['n_bank']:6d} {r['score_images_per_s']:11.2f} "
              f"{r['peak_rss_mb']:11.0f} {r['image_auroc']:11.4f} {r['pixel_auroc']:11.4f} {r['process_wall_s']:9.1f}")
    if not args.skip_anomalib:
        a = rows[-1][1]
        for name, r in rows[:-1]:
            print(f"{name} / anomalib: fit {a['fit_s'] / r['fit_s']:.1f}x faster, scoring throughput "
                  f"{r['score_images_per_s'] / a['score_images_per_s']:.2f}x, peak RSS "
                  f"{r['peak_rss_mb'] / a['peak_rss_mb']:.2f}x, "
                  f"image AUROC {r['image_auroc'] - a['image_auroc']:+.4f}, "
                  f"pixel AUROC {r['pixel_auroc'] - a['pixel_auroc']:+.4f}")
        print(f"anomalib: imports {a['import_s']:.1f} s; fit = features {a['fit_features_s']:.1f} s + coreset "
              f"{a['fit_coreset_s']:.1f} s ({a['n_patches']} -> {a['n_bank']} patches, "
              f"{a['coreset_iterations_per_s']:.1f} iterations/s); scoring "
              f"{1e3 / a['score_images_per_s']:.0f} ms per image")
    for name, r in rows[:-1] if not args.skip_anomalib else rows:
        print(f"{name}: fit = features {r['fit_features_s']:.2f} s + coreset {r['fit_coreset_s']:.2f} s; scoring "
              f"{1e3 / r['score_images_per_s']:.0f} ms per image, of which backbone + embedding "
              f"{r['features_ms_per_image']:.1f} ms and exact kNN {r['knn_ms_per_image']:.1f} ms (measured apart)")
    fit, score = job["fit"], job["score"]
    print(f"ours as a Ray job (local Ray, 2 workers x 1 CPU, fp32, max): fit stage {fit['seconds']['fit']:.2f} s "
          f"(start-up {fit['seconds']['startup']:.1f} s, process {fit['wall_s']:.1f} s); scoring "
          f"{score['images_per_s']:.2f} img/s over {score['n_inputs']} images "
          f"(start-up {score['seconds']['startup']:.1f} s, process {score['wall_s']:.1f} s)")
    print(load.report())


if __name__ == "__main__":
    main()
