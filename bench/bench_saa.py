"""SAA+ scoring speed and memory on CPU: the tiny test configuration and the real sizes (random weights).

    python bench/bench_saa.py [--images 8] [--real-images 1]

Each configuration runs in its own process (peak RSS is that process's) and builds the detector exactly as
``jobs.score --detector saa --gdino-weights none --sam-weights none`` does (seeded random weights: speed does not
depend on the values, and no score here says anything about SAA+'s quality), with the generic prompt set
(the object caption and 3 defect captions, i.e. 4 GroundingDINO passes per batch). The tiny configuration scores
a warm-up batch, then ``--images`` images in batches of 4; the real sizes score ``--real-images`` images one at a
time with no warm-up (seconds each on this CPU), so their first-call overhead is included.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (GroundingDINO arch, SAM arch, saliency backbone, saliency px)
CONFIGS = [
    ("tiny-test", "tiny-test", "resnet18", 64),
    ("swin-t", "vit-b", "wide_resnet50_2", 256),
    ("swin-t", "vit-h", "wide_resnet50_2", 256),
]


def measure(gdino_arch: str, sam_arch: str, backbone: str, saliency_size: int, n_images: int, batch: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE.parent))
    from pipeline.config import ScoreConfig, StorageSettings
    from pipeline.detectors.saa import load_for_score, resolve_saa
    from pipeline.io.storage import Storage

    torch.set_num_threads(2)
    cfg = ScoreConfig.model_validate({"input": "-", "output": "-", "detector": "saa", "saa": {
        "gdino_weights": "none", "sam_weights": "none", "gdino_arch": gdino_arch, "sam_arch": sam_arch,
        "saliency_backbone": backbone, "saliency_size": saliency_size,
        **({"gdino_size": 64} if gdino_arch == "tiny-test" else {})}})
    storage = Storage(StorageSettings())
    start = time.perf_counter()
    det = load_for_score(cfg, storage, resolve_saa(storage, cfg), "cpu")
    build_s = time.perf_counter() - start
    size = det.image_size
    images = torch.rand(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    if batch > 1:
        det.score(images[:batch])
    start = time.perf_counter()
    for i in range(0, n_images, batch):
        det.score(images[i:i + batch])
    seconds = time.perf_counter() - start
    return {"gdino": gdino_arch, "sam": sam_arch, "saliency": backbone, "size": size, "gdino_px": cfg.saa.gdino_size,
            "images": n_images, "images_per_s": n_images / seconds, "build_s": build_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="tiny configuration: images scored (batches of 4)")
    parser.add_argument("--real-images", type=int, default=1, help="real sizes: images scored (one at a time)")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        tiny = args.one[0] == "tiny-test"
        result = measure(*args.one[:3], int(args.one[3]), args.images if tiny else args.real_images, 4 if tiny else 1)
        print(json.dumps(result))
        return
    print(f"\nSAA+ scoring on CPU ({os.cpu_count()} cores, 2 threads), random weights, generic prompts")
    print("| GroundingDINO | SAM | saliency | working px (GDINO px) | images | images/s | s/image | build s | "
          "peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for gdino, sam, backbone, saliency_size in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--real-images",
                              str(args.real_images), "--one", gdino, sam, backbone, str(saliency_size)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {gdino} | {sam} | {backbone} @ {saliency_size} | {r['size']} ({r['gdino_px']}) | {r['images']} | "
              f"{r['images_per_s']:.3f} | {1 / r['images_per_s']:.2f} | {r['build_s']:.1f} | "
              f"{r['peak_rss_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
