"""Greedy k-center (farthest-first) coreset selection, as PatchCore uses it.

PatchCore runs greedy k-center on a random projection of the patch features (the official
code projects to 128 dimensions) and keeps the selected *full* features. The textbook loop
reads all N features on every one of the k iterations. We get the identical selection while
reading far less, with the triangle inequality: if a point's current centre ``a`` and the new
centre ``c`` satisfy ``d(a, c) >= 2 * mind(x)``, then ``d(x, c) >= mind(x)`` and ``x`` cannot
change, so only the remaining candidates are measured. As the covering radius shrinks, most
points are pruned by two scalar reads instead of ``d`` floats.
"""

from __future__ import annotations

import numpy as np


def random_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray | None:
    """A seeded Gaussian (Johnson-Lindenstrauss) projection, or None when it would not shrink."""
    if dim_out <= 0 or dim_out >= dim_in:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim_in, dim_out)) / np.sqrt(dim_out)).astype(np.float32)


def project(features: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(features, dtype=np.float32)
    return x if projection is None else x @ projection


def greedy_kcenter(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` points chosen farthest-first (2-approximation of k-center, Gonzalez 1985).

    Starts from a seeded random point. Exact: the same selection as the plain O(N k d) loop.
    """
    x = np.ascontiguousarray(points, dtype=np.float32)
    n = x.shape[0]
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    selected = np.empty(k, dtype=np.int64)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centre_sq = np.empty(k, dtype=np.float32)
    first = int(np.random.default_rng(seed).integers(n))
    selected[0], centres[0], centre_sq[0] = first, x[first], sq[first]
    mind = np.sqrt(np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0))
    assign = np.zeros(n, dtype=np.int32)
    for i in range(1, k):
        j = int(np.argmax(mind))
        c = x[j]
        # distance from the new centre to every earlier centre (k x d, small and cache-resident)
        to_centres = np.sqrt(np.maximum(centre_sq[:i] - 2.0 * (centres[:i] @ c) + sq[j], 0.0))
        candidates = np.flatnonzero(to_centres[assign] < 2.0 * mind)
        if candidates.size:
            d = np.sqrt(np.maximum(sq[candidates] - 2.0 * (x[candidates] @ c) + sq[j], 0.0))
            closer = d < mind[candidates]
            moved = candidates[closer]
            mind[moved] = d[closer]
            assign[moved] = i
        mind[j] = 0.0
        assign[j] = i
        selected[i], centres[i], centre_sq[i] = j, c, sq[j]
    return selected


def covering_radius(points: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> float:
    """Max over ``points`` of the Euclidean distance to the nearest of ``centres`` (exact, faiss)."""
    import faiss

    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    worst = 0.0
    for start in range(0, len(points), chunk):
        d, _ = index.search(np.ascontiguousarray(points[start:start + chunk], dtype=np.float32), 1)
        worst = max(worst, float(d.max()))
    return float(np.sqrt(max(worst, 0.0)))
