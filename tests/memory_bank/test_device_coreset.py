import numpy as np
import pytest
import torch

from pipeline.memory_bank.coreset import covering_radius, greedy_kcenter
from pipeline.memory_bank.device_coreset import greedy_kcenter_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = [(n, d) for n in (50, 300, 2000, 5000) for d in (2, 8, 32, 128)]


def points(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, d), dtype=np.float32)
    if kind == "clustered":
        centres = rng.normal(0, 4, (20, d))
        return (centres[rng.integers(20, size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)
    if kind == "duplicated":  # every point about three times: exact ties
        base = rng.normal(size=(max(1, n // 3), d)).astype(np.float32)
        return base[rng.integers(len(base), size=n)]
    # small integers: float32 sums are exact in any order, so numpy and torch compute the same bits
    return rng.integers(-4, 5, size=(n, d)).astype(np.float32)


def torch_select(x: np.ndarray, k: int, seed: int, dtype: torch.dtype = torch.float32) -> np.ndarray:
    return greedy_kcenter_torch(torch.from_numpy(x), k, seed=seed, dtype=dtype).numpy()


def min_sq_dist(x: np.ndarray, centres: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Exact (float64) squared distance of every point to its nearest centre."""
    x64, c64 = x.astype(np.float64), centres.astype(np.float64)
    best = np.full(len(x), np.inf)
    for s in range(0, len(c64), chunk):
        c = c64[s:s + chunk]
        d2 = (x64 ** 2).sum(1)[:, None] - 2 * x64 @ c.T + (c ** 2).sum(1)[None]
        best = np.minimum(best, d2.min(axis=1))
    return np.maximum(best, 0.0)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_same_selection_as_numpy_when_float32_arithmetic_is_exact(n, d):
    """Integer points: no rounding anywhere, many exact ties, k spanning 1..n-1."""
    x = points("integer", n, d, seed=n + d)
    for k in sorted({1, 2, int(np.random.default_rng(d).integers(1, n)), n // 2, n - 1}):
        assert np.array_equal(torch_select(x, k, seed=k), greedy_kcenter(x, k, seed=k)), k


@pytest.mark.parametrize("kind", ["uniform", "clustered", "duplicated"])
@pytest.mark.parametrize(("n", "d"), [(50, 8), (300, 2), (300, 128), (2000, 8), (2000, 32), (5000, 128)])
def test_same_selection_as_numpy_up_to_float32_near_ties(kind, n, d):
    """numpy (OpenBLAS) and torch sum in different orders, so the last bits differ: the runs may
    part only where both picks are equally far, in exact arithmetic, up to float32 rounding."""
    seed = n * d
    x = points(kind, n, d, seed)
    k = n - 1 if n <= 2000 else n // 5
    ours, ref = torch_select(x, k, seed), greedy_kcenter(x, k, seed=seed)
    if np.array_equal(ours, ref):
        return
    i = int(np.flatnonzero(ours != ref)[0])
    d2 = min_sq_dist(x, x[ref[:i]])
    # rounding bound of |x|^2 - 2 x.c + |c|^2 in float32, for each of the two implementations
    tol = 2 * (d + 2) * np.finfo(np.float32).eps * 4 * float((x.astype(np.float64) ** 2).sum(1).max())
    assert d2[ours[i]] >= d2.max() - tol and d2[ref[i]] >= d2.max() - tol, (i, d2.max(), d2[ours[i]], d2[ref[i]])


def test_edge_cases_match_numpy():
    x = points("uniform", 40, 3, seed=0)
    for k in (-1, 0, 1, 39, 40, 41):
        ours = torch_select(x, k, seed=5)
        assert ours.dtype == np.int64 and np.array_equal(ours, greedy_kcenter(x, k, seed=5)), k
    assert torch_select(x, 0, seed=5).shape == (0,)


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # far off-centre: 16-bit rounding must follow the spread
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_covering_radius_within_one_percent(dtype, offset):
    x = points("clustered", 4000, 64, seed=11) + np.float32(offset)
    exact = covering_radius(x, x[torch_select(x, 200, seed=1)])
    assert covering_radius(x, x[torch_select(x, 200, seed=1, dtype=dtype)]) <= 1.01 * exact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_selection_matches_cpu():
    x = points("integer", 3000, 64, seed=3)
    on_gpu = greedy_kcenter_torch(torch.from_numpy(x).cuda(), 1500, seed=2)
    assert on_gpu.is_cuda and np.array_equal(on_gpu.cpu().numpy(), greedy_kcenter(x, 1500, seed=2))
    y = points("clustered", 4000, 64, seed=11)
    exact = covering_radius(y, y[greedy_kcenter(y, 200, seed=1)])
    for dtype in (torch.float16, torch.bfloat16):
        sel = greedy_kcenter_torch(torch.from_numpy(y).cuda(), 200, seed=1, dtype=dtype).cpu().numpy()
        assert covering_radius(y, y[sel]) <= 1.01 * exact
