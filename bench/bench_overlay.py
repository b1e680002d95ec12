"""Heatmap overlays: ms per image and bytes per image, the renderer against the PNG overlay it replaced.

    python bench/bench_overlay.py [--images photo,texture] [--sizes 256,1024] [--batch 16] [--repeats 5]
                                  [--device cpu|cuda] [--threads 1]

Images: a photograph and the demo data's grainy texture, each at every side in ``--sizes``, with a
smooth 64x64 anomaly map (as a PatchCore map before it is resized). "before" is the overlay the product
wrote until December 2026 (numpy ramp by fancy indexing, float blend, PIL PNG at compress level 1), copied
here as the baseline; "now" is ``pipeline.results.heatmaps.render_overlays`` on ``--device`` in batches of ``--batch``,
in each format at its default quality. Runs alternate in ABBA order (before, now, now, before, ...);
reported: median wall ms per image (min-max over the runs), median CPU ms per image (this process, all
threads: what the overlay costs a worker's cores on a shared machine) and bytes per image, and now/before per ABBA
block for JPEG (the default format).
"""

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import MachineLoad
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.results.heatmaps import render_overlays  # noqa: E402
from tests.helpers.previous_overlay import reference_overlay  # noqa: E402


def overlay_png_before(rgb: np.ndarray, amap: np.ndarray, scale: float, max_side: int = 1024) -> bytes:
    """The overlay as written before this renderer (the baseline): the previous drawing, PNG-encoded."""
    out = io.BytesIO()
    Image.fromarray(reference_overlay(rgb, amap, scale, max_side)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def image_of(kind: str, side: int) -> np.ndarray:
    """A photograph (matplotlib's Grace Hopper sample, 512x600, resized) or the demo data's woven texture
    with its grain (the hardest case for JPEG)."""
    if kind == "photo":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB").resize((side, side), Image.BICUBIC))
    from pipeline.demo_data import _crop, _texture

    rng = np.random.default_rng(side)
    return _crop(_texture(side + 64, rng), side, rng)


def inputs(kind: str, side: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(side)
    image = image_of(kind, side)
    noise = rng.normal(0, 1, (16, 16)).astype(np.float32)
    amap = np.abs(F.interpolate(torch.from_numpy(noise)[None, None], size=(64, 64), mode="bicubic")[0, 0].numpy())
    return [image.copy() for _ in range(n)], [amap.copy() for _ in range(n)]


def timed(fn) -> tuple[float, float, list[bytes]]:
    """Wall seconds, CPU seconds of this process (all its threads) and the result of ``fn()``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--images", default="photo,texture")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="ABBA blocks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker of 1 CPU has 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = MachineLoad()
    print(f"overlays on {args.device} ({torch.get_num_threads()} torch threads), batches of {args.batch}, "
          f"{args.repeats} ABBA blocks")
    print(f"{'image':<12} {'renderer':<12} {'ms/image median (min-max)':>28} {'CPU ms/image':>13} {'KiB/image':>10}")
    for kind, side in ((k, int(s)) for k in args.images.split(",") for s in args.sizes.split(",")):
        images, maps = inputs(kind, side, args.batch)
        scales = [1.0] * args.batch

        def before(images=images, maps=maps):
            return [overlay_png_before(i, m, 1.0) for i, m in zip(images, maps, strict=True)]

        def now(fmt, images=images, maps=maps, scales=scales):
            def run():
                out = render_overlays(images, maps, scales, fmt, device=args.device)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                return out
            return run

        now("jpeg")()  # warm-up: LUT, encoder
        runs: dict[str, list[float]] = {"before png": [], "now jpeg": [], "now png": [], "now webp": []}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        sizes: dict[str, int] = {}
        ratios = []
        for block in range(args.repeats):
            order = ["before png", "now jpeg"] if block % 2 == 0 else ["now jpeg", "before png"]
            block_runs: dict[str, list[float]] = {k: [] for k in order}
            for name in order + order[::-1]:
                seconds, cpu_s, out = timed(before if name == "before png" else now("jpeg"))
                block_runs[name].append(seconds * 1e3 / args.batch)
                cpu[name].append(cpu_s * 1e3 / args.batch)
                sizes[name] = sum(map(len, out)) // len(out)
            for name, values in block_runs.items():
                runs[name] += values
            ratios.append(statistics.mean(block_runs["now jpeg"]) / statistics.mean(block_runs["before png"]))
            for fmt in ("png", "webp"):
                seconds, cpu_s, out = timed(now(fmt))
                runs[f"now {fmt}"].append(seconds * 1e3 / args.batch)
                cpu[f"now {fmt}"].append(cpu_s * 1e3 / args.batch)
                sizes[f"now {fmt}"] = sum(map(len, out)) // len(out)
        for name, values in runs.items():
            spread = f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"
            print(f"{kind + ' ' + str(side):<12} {name:<12} {spread:>28} {statistics.median(cpu[name]):>13.2f} "
                  f"{sizes[name] / 1024:>10.1f}")
        print(f"{kind + ' ' + str(side):<12} now jpeg / before png, per ABBA block: "
              f"median {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")
    print(load.report())


if __name__ == "__main__":
    main()
