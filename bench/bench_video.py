"""Video path throughput: the pipeline's decoder against a plain PyAV loop, and frames/s scored.

    python bench/bench_video.py [--frames 600] [--size 768x576] [--repeats 5]

Decoding: the same MPEG-4 file through ``pipeline.io.video.iter_frames`` (PyAV, RGB arrays,
timestamps, frame-index bookkeeping) and through the plain loop
``for f in container.decode(video=0): f.to_ndarray(format="rgb24")``, in ABBA order (plain,
pipeline, pipeline, plain, then the next repeat starts with the other one), so neither path always
runs first or on a warmer cache. Reported: the median and the min-max of each path's frames/s
over its 2 x repeats runs, and the pipeline/plain ratio per ABBA block (mean of its two runs of
each), median and min-max.
Scoring: ``jobs.score`` (local Ray, 2 workers x 1 CPU) on the same file, frames/s of the scoring
stage (start-up reported apart): PatchCore at 256 px (random-init backbone) and DMAD's video
variant at 256 px, official ped2 widths (trained here for 20 steps on this file: a speed number, not a quality one).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
from machine import MachineLoad

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "video"
sys.path.insert(0, str(HERE.parent))


def write_video(path: Path, frames: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height + frames, width + frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", 4_000_000
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(base[i:i + height, i:i + width].copy())):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plain_pyav(path: Path) -> int:
    n = 0
    with av.open(str(path)) as container:
        container.streams.video[0].thread_type = "AUTO"
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def pipeline_path(path: Path) -> int:
    from pipeline.config import StorageSettings
    from pipeline.io.storage import Storage
    from pipeline.io.video import iter_frames

    return sum(1 for _ in iter_frames(Storage(StorageSettings()), str(path), 0, None, 1))


def rate(fn, path: Path) -> float:
    start = time.perf_counter()
    n = fn(path)
    return n / (time.perf_counter() - start)


def abba_rates(a, b, path: Path, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Frames/s of ``a`` and ``b`` over ``repeats`` ABBA blocks (odd blocks run BAAB), and b/a per block."""
    rates_a, rates_b, ratios = [], [], []
    for block in range(repeats):
        first, second = (a, b) if block % 2 == 0 else (b, a)
        runs = {first: [], second: []}
        for fn in (first, second, second, first):
            runs[fn].append(rate(fn, path))
        rates_a += runs[a]
        rates_b += runs[b]
        ratios.append(statistics.mean(runs[b]) / statistics.mean(runs[a]))
    return rates_a, rates_b, ratios


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):8.2f}  (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", default="768x576")
    parser.add_argument("--repeats", type=int, default=5, help="ABBA blocks")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"bench-{args.frames}-{args.size}.mp4"
    if not path.exists():
        write_video(path, args.frames, width, height)
    load = MachineLoad()
    plain, ours, ratios = abba_rates(plain_pyav, pipeline_path, path, args.repeats)
    print(f"\ndecode {args.frames} frames {args.size} MPEG-4, {os.cpu_count()} cores, {args.repeats} ABBA blocks "
          f"({2 * args.repeats} runs per path)")
    print(f"plain PyAV loop   frames/s {spread(plain)}")
    print(f"pipeline path     frames/s {spread(ours)}")
    print(f"pipeline / plain  per block {spread(ratios)}")
    print(load.report())

    from pipeline.demo_data import make_dataset

    data = make_dataset(WORK / "normal", n_train=30, n_test_good=1, n_test_defect=1, size=256)
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1"}
    bank = WORK / f"bank-{time.time_ns()}"
    subprocess.run([sys.executable, "-m", "jobs.fit", "--normal", str(data / "train" / "good"), "--bank", str(bank),
                    "--no-tracking", "--calibration-fraction", "0"], check=True, cwd=HERE.parent, env=env,
                   capture_output=True)
    model = WORK / f"dmad-{time.time_ns()}.pt"
    subprocess.run([sys.executable, "-m", "jobs.train", "--detector", "dmad", "--variant", "video", "--normal",
                    str(path), "--model-out", str(model), "--steps", "20", "--image-size", "256", "--no-tracking",
                    "--workers", "2"], check=True, cwd=HERE.parent, env=env, capture_output=True)
    for detector_args in (["--detector", "patchcore"], ["--detector", "dmad", "--model", str(model)]):
        proc = subprocess.run([sys.executable, "-m", "jobs.score", "--input", str(path), "--bank", str(bank),
                               "--output", str(WORK / "out"), "--run-name", f"v{time.time_ns()}", "--no-tracking",
                               "--workers", "2", *detector_args], check=True, cwd=HERE.parent, env=env,
                              capture_output=True, text=True)
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
        size = 256 if detector_args[1] == "patchcore" else 128
        print(f"score {detector_args[1]:10} {summary['images_per_s']:8.2f} frames/s over {summary['n_inputs']} frames "
              f"(model input {size} px, 2 workers x 1 CPU, start-up {summary['seconds']['startup']:.1f} s)")


if __name__ == "__main__":
    main()
