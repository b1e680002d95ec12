"""The data path against a distant object store: img/s of whole ``jobs.score`` runs, bucket to bucket.

    python bench/bench_storage.py [--images 200] [--delays 0,25,50] [--heatmaps none,all] [--repeats 1]
                                  [--plan-units 10000] [--workers 2]

moto's S3 server (its own process, on loopback) sits behind the tests' TCP relay, started here, which
holds each request for a fixed delay before passing it on (0, 25 and 50 ms: an in-region S3 round
trip is 10-30 ms). The same ``--images`` 256 px PNGs are scored from one bucket into another by
``python -m jobs.score`` processes (PatchCore, resnet18 at 64 px, random init, ``--workers`` local Ray
workers), once per delay in palindromic order (0, 25, 50, 50, 25, 0 ms: ABBA for every pair), for each
``--heatmaps`` policy. Reported per policy and delay: img/s of the scoring stage (median, min-max over
the runs), its ratio to the 0 ms runs of the same block, and the bytes the run wrote per image.

Planning: about ``--plan-units`` units of one empty ``.png`` key each, a manifest and a completion marker
for every unit (as a finished run leaves them), then the driver's planning (``pipeline.score.plan_run``:
listing, units, manifest, completed units) timed on the 25 ms store: the cost of resuming a finished run.
"""

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import MachineLoad

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "storage"
sys.path.insert(0, str(ROOT))

from tests.helpers.relay import Relay  # noqa: E402 - the one delay relay, shared with the tests

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, int]:
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def s3(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                             skip_instance_cache=True)


def prefix_bytes(fs, prefix: str) -> int:
    return sum(info["size"] for info in fs.find(prefix, detail=True).values())


def fit_bank(env: dict[str, str]) -> Path:
    from pipeline.demo_data import make_dataset

    bank, done = WORK / "bank", WORK / "bank.done"
    if not done.exists():
        data = make_dataset(WORK / "normal", n_train=20, n_test_good=1, n_test_defect=1, size=256)
        subprocess.run([sys.executable, "-m", "jobs.fit", "--normal", str(data / "train" / "good"), "--bank",
                        str(bank), "--no-tracking", "--image-size", "64", "--calibration-fraction", "0"],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        done.touch()
    return bank


def score(env: dict[str, str], relay: Relay, bank: Path, heatmaps: str, workers: int, fs) -> tuple[dict, int]:
    run = f"r{time.time_ns()}"
    proc = subprocess.run([sys.executable, "-m", "jobs.score", "--input", "s3://bench-in/", "--output",
                           "s3://bench-out/", "--run-name", run, "--bank", str(bank), "--heatmaps", heatmaps,
                           "--no-tracking", "--workers", str(workers), "--s3-endpoint-url", relay.url],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"jobs.score failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    written = prefix_bytes(fs, f"bench-out/{run}")
    fs.rm(f"bench-out/{run}", recursive=True)
    return summary, written


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"


def throughput(args, env, relay, bank, fs) -> None:
    delays = [int(d) for d in args.delays.split(",")]
    order = delays + delays[::-1]
    for heatmaps in args.heatmaps.split(","):
        rates: dict[int, list[float]] = {d: [] for d in delays}
        ratios: dict[int, list[float]] = {d: [] for d in delays}
        per_image: dict[int, list[float]] = {d: [] for d in delays}
        for _ in range(args.repeats):
            block: dict[int, list[float]] = {d: [] for d in delays}
            for delay in order:
                relay.delay_s = delay / 1e3
                summary, written = score(env, relay, bank, heatmaps, args.workers, fs)
                assert summary["n_ok"] == args.images, summary
                block[delay].append(summary["images_per_s"])
                per_image[delay].append(written / summary["n_inputs"])
                print(f"  heatmaps={heatmaps} {delay:3d} ms: {summary['images_per_s']:.2f} img/s, "
                      f"{written / summary['n_inputs'] / 1024:.1f} KiB/image", flush=True)
            for d in delays:
                rates[d] += block[d]
                ratios[d].append(statistics.mean(block[d]) / statistics.mean(block[delays[0]]))
        print(f"\n--heatmaps {heatmaps}: {args.images} images (256 px PNG), {args.workers} workers, "
              f"{args.repeats} palindromic block(s)")
        print(f"{'delay':>8} {'img/s median (min-max)':>26} {'vs ' + str(delays[0]) + ' ms':>22} {'KiB/image':>10}")
        for d in delays:
            print(f"{d:>5} ms {spread(rates[d]):>26} {spread(ratios[d]):>22} "
                  f"{statistics.mean(per_image[d]) / 1024:>10.1f}")


def planning(args, relay: Relay, fs) -> None:
    from pipeline.config import ScoreConfig, StorageSettings, load_config
    from pipeline.io.storage import Storage
    from pipeline.score import plan_run

    n = round(args.plan_units / (1 - 1 / math.e))  # hash buckets: one image per unit fills 1 - 1/e of them
    fs.pipe({f"bench-plan-in/img{i:07d}.png": b"" for i in range(n)})
    cfg = load_config(ScoreConfig, None, {"input": "s3://bench-plan-in/", "output": "s3://bench-plan-out/",
                                          "bank": "unused", "images_per_unit": 1,
                                          "storage.endpoint_url": relay.url})
    storage = Storage(StorageSettings(endpoint_url=relay.url))
    relay.delay_s = 0.0
    _, units, _ = plan_run(storage, cfg, "plan", "bank")
    counts = {"n_rows": 1}
    fs.pipe({f"bench-plan-out/plan/_markers/{u.unit_id}.json":
             json.dumps({"fingerprint": u.fingerprint(), "counts": counts}).encode() for u in units})
    relay.delay_s = 0.025
    for attempt in range(args.repeats):
        start = time.perf_counter()
        _, units, done = plan_run(storage, cfg, "plan", "bank")
        seconds = time.perf_counter() - start
        assert len(done) == len(units), (len(done), len(units))
        print(f"planning a {len(units)}-unit resume on the 25 ms store (run {attempt + 1}): {seconds:.2f} s "
              f"({len(done)} units found complete)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--delays", default="0,25,50", help="ms per request; the first is the baseline")
    parser.add_argument("--heatmaps", default="none,all")
    parser.add_argument("--repeats", type=int, default=1, help="palindromic blocks per policy")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plan-units", type=int, default=10_000, help="0: skip the planning measurement")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    env = os.environ | CREDENTIALS | {"RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    WORK.mkdir(parents=True, exist_ok=True)
    moto, port = start_moto()
    relay = Relay("127.0.0.1", port)
    try:
        fs = s3(f"http://127.0.0.1:{port}")  # set-up and byte counts go around the relay
        for bucket in ("bench-in", "bench-out", "bench-plan-in", "bench-plan-out"):
            fs.mkdir(bucket)
        from pipeline.demo_data import make_dataset

        half = args.images // 2
        data = make_dataset(WORK / f"images-{args.images}", n_train=0, n_test_good=args.images - half,
                            n_test_defect=half, size=256)
        fs.pipe({f"bench-in/{p.parent.name}-{p.name}": p.read_bytes() for p in (data / "test").rglob("*.png")})
        bank = fit_bank(env)
        load = MachineLoad()
        if args.heatmaps:
            throughput(args, env, relay, bank, fs)
        if args.plan_units:
            planning(args, relay, fs)
        print(load.report())
    finally:
        relay.close()
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
