"""PatchCore fit and score kept on one device, stage by stage, plus the coreset engines compared.

    python bench/bench_gpu.py [--device cpu|cuda] [--images N] [--coreset-points P]

Writes N real JPEG files (256 px), then drives the library directly (no Ray): decode (PIL on a
thread pool; on CUDA also ``torchvision.io.decode_jpeg`` on the GPU), PatchCore features
(``PatchEmbedder``, bf16 autocast on CUDA), the device coreset, the device kNN, maps (upsample +
Gaussian) and PNG heatmaps, and prints images/s per stage and end to end. Then it times greedy
k-center on P x 128 random points with the numpy loop and the torch loop on the device and
checks that both select the same points. It imports only torch, torchvision, numpy, PIL and
the library modules it measures, so it runs on a bare GPU host. Random weights: speed only.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.features.backbones import build_backbone  # noqa: E402
from pipeline.features.patch_embedding import PatchEmbedder  # noqa: E402
from pipeline.features.preprocess import Preprocess, gaussian_blur  # noqa: E402
from pipeline.io.decode import decode_image  # noqa: E402
from pipeline.io.prefetch import ordered_map, prefetched, to_device  # noqa: E402
from pipeline.memory_bank.coreset import greedy_kcenter, random_projection  # noqa: E402
from pipeline.memory_bank.device_coreset import greedy_kcenter_torch  # noqa: E402
from pipeline.memory_bank.device_knn import DeviceKNN  # noqa: E402
from pipeline.memory_bank.merge import select_coreset  # noqa: E402
from pipeline.results.heatmaps import overlay_png  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


def write_jpegs(n: int, size: int) -> list[Path]:
    folder = WORK / f"jpeg-{n}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            phase = rng.uniform(0, 2 * np.pi, 3)
            img = 0.5 + 0.25 * np.sin(xx / 5 + phase[0]) * np.sin(yy / 7 + phase[1]) + rng.normal(0, 0.05, (size, size))
            rgb = (np.clip(img, 0, 1)[..., None] * np.array([200, 160, 120]) + phase[2]).astype(np.uint8)
            Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    return paths


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args):
    sync(device)
    start = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - start


def decode_cpu(data: bytes, size: int) -> torch.Tensor:
    return Preprocess(size)(decode_image(data, 100_000_000))


def decode_batches_cpu(blobs: list[bytes], size: int, batch: int, threads: int):
    tensors = ordered_map(lambda b: decode_cpu(b, size), blobs, threads)
    while chunk := [t for _, t in zip(range(batch), tensors, strict=False)]:
        yield torch.stack(chunk)


def decode_batch_gpu(blobs: list[bytes], size: int, device: str) -> torch.Tensor:
    from torchvision.io import decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    images = decode_jpeg(raw, device=device)
    x = torch.stack([F.interpolate(i[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0] for i in images])
    return x.div_(255.0).clamp_(0, 1)


def build_embedder(backbone: str, device: str) -> PatchEmbedder:
    layers = ["layer2", "layer3"]
    net, channels, _ = build_backbone(backbone, layers, "none", 0, None)
    precision = "bfloat16" if device.startswith("cuda") else "float32"
    embed = 1024 if backbone == "wide_resnet50_2" else 384
    return PatchEmbedder(net, layers, channels, 1024, embed, precision).to(device).eval()


def score_batch(embedder: PatchEmbedder, knn: DeviceKNN, images: torch.Tensor, stages: dict[str, float],
                device: str) -> tuple[np.ndarray, np.ndarray]:
    (feats, (h, w)), t = timed(device, embedder, images)
    stages["features"] += t
    b = feats.shape[0]
    (dist, _), t = timed(device, knn.search, feats.reshape(b * h * w, -1), 1)
    stages["knn"] += t
    start = time.perf_counter()
    raw = dist[:, 0].reshape(b, h, w)
    maps = gaussian_blur(F.interpolate(raw[:, None], size=images.shape[-2:], mode="bilinear",
                                       align_corners=False)[:, 0], 4.0)
    scores, maps = raw.flatten(1).amax(1).cpu().numpy(), maps.cpu().numpy()
    stages["maps"] += time.perf_counter() - start
    return scores, maps


def run(args: argparse.Namespace) -> None:
    device = args.device
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))
    paths = write_jpegs(args.images, 256)
    blobs = [p.read_bytes() for p in paths]
    size, batch = args.image_size, args.batch
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "")
          + f", {len(blobs)} JPEG files 256 px, {args.backbone} at {size} px, batch {batch}, {threads} threads")

    # decode
    _, t = timed(device, lambda: [x for x in decode_batches_cpu(blobs, size, batch, threads)])
    print(f"decode  PIL, {threads} threads: {len(blobs) / t:9.1f} img/s")
    if device.startswith("cuda"):
        decode_batch_gpu(blobs[:batch], size, device)  # warm-up
        _, t = timed(device, lambda: [decode_batch_gpu(blobs[i:i + batch], size, device)
                                      for i in range(0, len(blobs), batch)])
        print(f"decode  decode_jpeg on {device}: {len(blobs) / t:9.1f} img/s")

    embedder = build_embedder(args.backbone, device)
    embedder(torch.rand(2, 3, size, size, device=device))  # warm-up

    # fit: decode -> features (on the device) -> coreset -> kNN bank
    n_fit = min(len(blobs), args.fit_images)
    sync(device)
    start = time.perf_counter()
    feats = []
    for images in prefetched(decode_batches_cpu(blobs[:n_fit], size, batch, threads)):
        f, _ = embedder(to_device(images, device))
        feats.append(f.reshape(-1, f.shape[-1]))
    features = torch.cat(feats)
    sync(device)
    fit_features_s = time.perf_counter() - start
    k = math.ceil(args.coreset_ratio * len(features))
    projection = random_projection(features.shape[1], 128, 0)
    keep, coreset_s = timed(device, select_coreset, features, k, projection, 0, "auto")
    knn, index_s = timed(device, DeviceKNN, features[keep], "bfloat16" if device.startswith("cuda") else "float32")
    fit_s = fit_features_s + coreset_s + index_s
    print(f"fit     {n_fit} images, {len(features):,} patches -> {k:,}: features {fit_features_s:.2f} s, "
          f"coreset {coreset_s:.2f} s, index {index_s:.3f} s; {n_fit / fit_s:9.1f} img/s end to end")

    # score, stage by stage (synchronised between stages)
    stages = dict.fromkeys(("decode", "features", "knn", "maps", "writing"), 0.0)
    start = time.perf_counter()
    decoded = decode_batches_cpu(blobs, size, batch, threads)
    out = io.BytesIO()
    for images in decoded:
        stages["decode"] += time.perf_counter() - start
        host = images.mul(255).byte().permute(0, 2, 3, 1).numpy() if args.heatmaps else None
        scores, maps = score_batch(embedder, knn, to_device(images, device), stages, device)
        t = time.perf_counter()
        if host is not None:
            for rgb, m in zip(host, maps, strict=True):
                out.write(overlay_png(rgb, m, float(scores.max())))
        stages["writing"] += time.perf_counter() - t
        start = time.perf_counter()
    for name, seconds in stages.items():
        print(f"score   {name:9s} {len(blobs) / max(seconds, 1e-9):10.1f} img/s  ({seconds:.2f} s)")

    # score end to end, decode overlapped with the device (what a worker does)
    sync(device)
    start = time.perf_counter()
    n = 0
    for images in prefetched(decode_batches_cpu(blobs, size, batch, threads)):
        stages = dict.fromkeys(("features", "knn", "maps"), 0.0)
        score_batch(embedder, knn, to_device(images, device), stages, device)
        n += len(images)
    sync(device)
    print(f"score   end to end (decode overlapped, no heatmaps): {n / (time.perf_counter() - start):9.1f} img/s")

    # the coreset engines on the same points
    rng = np.random.default_rng(0)
    points = rng.normal(size=(args.coreset_points, 128)).astype(np.float32)
    k = max(1, args.coreset_points // 100)
    start = time.perf_counter()
    ref = greedy_kcenter(points, k, seed=0)
    numpy_s = time.perf_counter() - start
    ours, torch_s = timed(device, greedy_kcenter_torch, torch.from_numpy(points).to(device), k, 0)
    ours = ours.cpu().numpy()
    same = next((i for i in range(k) if ref[i] != ours[i]), k)
    print(f"coreset {args.coreset_points:,} x 128 -> {k:,}: numpy {numpy_s:.2f} s, torch on {device} {torch_s:.2f} s "
          f"= {numpy_s / torch_s:.1f}x; identical for the first {same:,} of {k:,} picks, "
          f"{len(np.intersect1d(ref, ours)) / k:.1%} of the selection shared")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/bench_gpu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, help="JPEG files to write and score (default: 2000 cuda, 200 cpu)")
    parser.add_argument("--fit-images", type=int, default=2000, help="of those, how many the fit uses")
    parser.add_argument("--backbone", help="default: wide_resnet50_2 on cuda, resnet18 on cpu")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, help="default: 128 cuda, 16 cpu")
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--coreset-points", type=int, help="default: 200000 cuda, 50000 cpu")
    parser.add_argument("--threads", type=int, help="decode threads (default: all cores)")
    parser.add_argument("--heatmaps", action=argparse.BooleanOptionalAction, default=True,
                        help="encode a PNG overlay per image in the stage-by-stage pass")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.images = args.images or (2000 if gpu else 200)
    args.backbone = args.backbone or ("wide_resnet50_2" if gpu else "resnet18")
    args.batch = args.batch or (128 if gpu else 16)
    args.coreset_points = args.coreset_points or (200_000 if gpu else 50_000)
    with torch.inference_mode():
        run(args)


if __name__ == "__main__":
    main()
