"""Video path throughput: the pipeline's decoder against a plain PyAV loop, and frames/s scored.

    python bench/bench_video.py [--frames 600] [--size 768x576]

Decoding: the same MPEG-4 file through ``pipeline.io.video.iter_frames`` (PyAV, RGB arrays,
timestamps, frame-index bookkeeping) and through the plain loop
``for f in container.decode(video=0): f.to_ndarray(format="rgb24")``; best of 3 each, ratio.
Scoring: ``jobs.score`` (local Ray, 2 workers x 1 CPU) on the same file, frames/s of the scoring
stage (start-up reported apart): PatchCore at 256 px (random-init backbone) and DMAD's video
variant at 256 px, official ped2 widths (trained here for 20 steps on this file: a speed number, not a quality one).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

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


def best_rate(fn, path: Path) -> float:
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        n = fn(path)
        rates.append(n / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", default="768x576")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"bench-{args.frames}-{args.size}.mp4"
    if not path.exists():
        write_video(path, args.frames, width, height)
    plain = best_rate(plain_pyav, path)
    ours = best_rate(pipeline_path, path)
    print(f"\ndecode {args.frames} frames {args.size} MPEG-4, {os.cpu_count()} cores")
    print(f"plain PyAV loop   {plain:8.1f} frames/s")
    print(f"pipeline path     {ours:8.1f} frames/s   ratio {ours / plain:.2f}")

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
