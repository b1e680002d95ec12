"""Memory bank vectors in float32 vs float16: index size, search speed, neighbours and AUROC.

    python bench/bench_bank_dtype.py [--images 500] [--size 128]

Features of the distributed benchmark's data set (bench/.work/distributed, made by
bench_distributed_fit.py or here), coreset ratio 0.1, exact search in both cases (float16 is
``IndexScalarQuantizer(QT_fp16)``: an exhaustive scan over rounded vectors). Random-init backbone.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "distributed"
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from PIL import Image

    from pipeline.config import StorageSettings
    from pipeline.demo_data import make_dataset
    from pipeline.detectors.patchcore import build_embedder
    from pipeline.detectors.patchcore.settings import PatchCoreSettings
    from pipeline.evaluation.metrics import roc_auc
    from pipeline.features.preprocess import Preprocess
    from pipeline.io.storage import Storage
    from pipeline.memory_bank.coreset import greedy_kcenter, project, random_projection
    from pipeline.memory_bank.index import ShardedIndex, build_index, serialize

    data = WORK / f"data-2000-{args.size}"
    if not data.exists():
        make_dataset(data, n_train=2000, n_test_good=50, n_test_defect=50, size=args.size)
    settings = PatchCoreSettings(image_size=args.size)
    embedder, _ = build_embedder(settings, Storage(StorageSettings()))

    def embed(paths: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), 32):
            batch = torch.stack([Preprocess(args.size)(np.array(Image.open(p).convert("RGB")))
                                 for p in paths[start:start + 32]])
            out.append(embedder(batch)[0].numpy())
        return np.concatenate(out)

    train = embed(sorted((data / "train" / "good").glob("*.png"))[: args.images]).reshape(-1, settings.embed_dim)
    k = math.ceil(0.1 * len(train))
    bank = train[greedy_kcenter(project(train, random_projection(settings.embed_dim, 128, 0)), k)]
    tests = sorted((data / "test").rglob("*.png"))
    labels = np.array(["defect" in p.parent.name for p in tests])
    queries = embed(tests)
    results = {}
    for dtype in ("float32", "float16"):
        index = ShardedIndex([build_index(bank, dtype)])
        flat = queries.reshape(-1, settings.embed_dim)
        index.search(flat[:1024], 1)
        start = time.perf_counter()
        dist, ids = index.search(flat, 1)
        search_s = time.perf_counter() - start
        scores = dist[:, 0].reshape(len(tests), -1).max(axis=1)
        results[dtype] = (len(serialize(index.shards[0])), search_s, dist[:, 0], ids[:, 0], roc_auc(labels, scores))
    size32, t32, d32, i32, auc32 = results["float32"]
    print(f"\nbank {k} x {settings.embed_dim} from {args.images} images at {args.size} px; "
          f"{len(queries.reshape(-1, settings.embed_dim))} query patches from {len(tests)} test images")
    print(f"{'dtype':8} {'index MB':>9} {'search s':>9} {'patches/s':>10} {'same NN':>8} {'max rel dist err':>17} "
          f"{'image AUROC':>12}")
    for dtype, (size, t, d, i, auc) in results.items():
        rel = np.abs(d - d32) / np.maximum(d32, 1e-6)
        print(f"{dtype:8} {size / 2**20:9.1f} {t:9.2f} {len(d) / t:10.0f} {np.mean(i == i32):8.4f} {rel.max():17.2e} "
              f"{auc:12.4f}")


if __name__ == "__main__":
    main()
