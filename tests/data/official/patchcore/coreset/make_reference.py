"""Run the official ``ApproximateGreedyCoresetSampler`` (amazon-science/patchcore-inspection,
``src/patchcore/sampler.py``) on a seeded feature set and store what it drew and chose, for
``tests/memory_bank/test_official_coreset.py``.

    python tests/data/official/patchcore/coreset/make_reference.py /path/to/patchcore-inspection

The sampler runs unchanged on the CPU after ``np.random.seed(SEED)`` and ``torch.manual_seed(SEED)`` (what the
official ``patchcore.utils.fix_seeds`` seeds). Two of its calls are wrapped to record what they return, nothing
else: ``torch.nn.Linear`` (the projection to 128 dimensions it creates: its weight is stored) and
``np.random.choice`` (the 10 random starting candidates). The features are seeded Gaussians rounded to float16
(stored as float16, which they are exactly, to keep the file small).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

SEED = 0
# name: (points, dimensions, percentage); int(N * p) is not a whole N * p in either case
CASES = {"n1234_d160_p010": (1234, 160, 0.1), "n900_d256_p0033": (900, 256, 0.033)}


def features(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered seeded Gaussians (patch features are not uniform), exactly representable in float16."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * 2.0
    x = centres[rng.integers(12, size=n)] + rng.standard_normal((n, d)) * rng.uniform(0.3, 1.5, size=(n, 1))
    return x.astype(np.float16).astype(np.float32)


def run_case(out: Path, name: str, n: int, d: int, p: float) -> None:
    import patchcore.sampler as sampler

    x = features(n, d, seed=list(CASES).index(name) + 1)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    made, drawn = [], []
    linear, choice = torch.nn.Linear, np.random.choice

    def recording_linear(*args, **kwargs):
        made.append(linear(*args, **kwargs))
        return made[-1]

    def recording_choice(*args, **kwargs):
        drawn.append(np.asarray(choice(*args, **kwargs)))
        return drawn[-1]

    sampler.torch.nn.Linear, sampler.np.random.choice = recording_linear, recording_choice
    try:
        official = sampler.ApproximateGreedyCoresetSampler(p, torch.device("cpu"))
        reduced = official._reduce_features(torch.from_numpy(x))
        selected = official._compute_greedy_coreset_indices(reduced)
    finally:
        sampler.torch.nn.Linear, sampler.np.random.choice = linear, choice
    assert len(made) == 1 and len(drawn) == 1
    sampled = official.run  # the public entry point selects the same rows: checked here once
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    assert np.array_equal(sampled(x), x[selected]), "run() and the recorded steps disagree"
    np.savez_compressed(out / f"{name}.npz", features=x.astype(np.float16), projection=made[0].weight.detach().numpy(),
                        start_candidates=drawn[0].astype(np.int64), selected=selected.astype(np.int64),
                        percentage=np.float64(p), seed=np.int64(SEED))
    print(f"{name}: {n} x {d} -> {len(selected)} (int({n} * {p}) = {int(n * p)}), start candidates "
          f"{drawn[0].tolist()}, first picks {selected[:5].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", type=Path, help="checkout of amazon-science/patchcore-inspection")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official / "src"))
    torch.set_num_threads(1)
    for name, (n, d, p) in CASES.items():
        run_case(args.out, name, n, d, p)


if __name__ == "__main__":
    main()
