"""AnomalyCLIP and InCTRL scoring speed and memory on CPU, tiny and paper-size CLIPs (random weights).

    python bench/bench_clip_detectors.py [--images 8]

Each configuration runs in its own process (peak RSS is that process's), builds the detector with
seeded random CLIP weights and untrained prompts / heads (speed does not depend on the values),
scores one warm-up batch, then ``--images`` images in batches of 4 and reports images/s.
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
CONFIGS = [
    ("anomalyclip", "tiny-vit-test", 64),
    ("anomalyclip", "ViT-L-14-336", 336),
    ("inctrl", "tiny-vit-test", 64),
    ("inctrl", "ViT-B-16-plus-240", 240),
]


def measure(detector: str, arch: str, size: int, n_images: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE.parent))
    from pipeline.config import StorageSettings
    from pipeline.detectors import anomalyclip, inctrl
    from pipeline.features.clip import load_clip
    from pipeline.io.storage import Storage

    torch.set_num_threads(2)
    storage = Storage(StorageSettings())
    start = time.perf_counter()
    if detector == "anomalyclip":
        extra = {} if arch != "tiny-vit-test" else {"feature_layers": [1, 2, 3, 4], "dpam_start": 2,
                                                    "deep_prompt_depth": 2}
        settings = anomalyclip.AnomalyCLIPSettings(clip_arch=arch, image_size=size, **extra)
        det = anomalyclip.AnomalyCLIPDetector.untrained(settings, storage)
    else:
        extra = {} if arch != "tiny-vit-test" else {"patch_layers": [2, 3, 4]}
        settings = inctrl.InCTRLSettings(clip_arch=arch, image_size=size, shots=4, **extra)
        clip, _ = load_clip(arch, "none", 0, storage)
        det = inctrl.InCTRLDetector(clip, inctrl.build_heads(settings, clip), settings, torch.rand(4, 3, size, size))
    build_s = time.perf_counter() - start
    images = torch.rand(n_images, 3, size, size)
    det.score(images[:4])
    start = time.perf_counter()
    for i in range(0, n_images, 4):
        det.score(images[i:i + 4])
    rate = n_images / (time.perf_counter() - start)
    return {"detector": detector, "arch": arch, "size": size, "images_per_s": rate, "build_s": build_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]), args.images)))
        return
    print(f"\nscoring on CPU ({os.cpu_count()} cores, 2 threads), random weights, batches of 4, {args.images} images")
    print(f"{'detector':12} {'CLIP':18} {'px':>4} {'images/s':>9} {'build s':>8} {'peak RSS MB':>12}")
    for detector, arch, size in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--one", detector, arch,
                              str(size)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{detector:12} {arch:18} {size:4d} {r['images_per_s']:9.2f} {r['build_s']:8.1f} "
              f"{r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
