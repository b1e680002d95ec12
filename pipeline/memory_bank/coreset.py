"""Greedy k-center (farthest-first) coreset selection, as PatchCore uses it.

PatchCore runs greedy k-center on a random projection of the patch features (the official
code projects to 128 dimensions) and keeps the selected *full* features. The textbook loop
reads all N features on every one of the k iterations. We get the identical selection while
reading far less, with the triangle inequality: if a point's current centre ``a`` and the new
centre ``c`` satisfy ``d(a, c) >= 2 * mind(x)``, then ``d(x, c) >= mind(x)`` and ``x`` cannot
change, so only the remaining candidates are measured. As the covering radius shrinks, most
points are pruned by two scalar reads instead of ``d`` floats.

Two ways to start and size the selection (``patchcore.coreset_mode``):

- ``exact`` (ours): a seeded Gaussian projection, a seeded random first point that is kept, and
  ``ceil(N * ratio)`` points; plain farthest-first, so the 2-approximation bound of k-center holds;
- ``official`` (``ApproximateGreedyCoresetSampler`` of amazon-science/patchcore-inspection): the
  projection is a ``torch.nn.Linear(D, 128, bias=False)`` at its default initialisation; every
  point's running distance starts at its *mean* distance to 10 random candidates (which are not
  kept, and whose mean stays in the running minimum), so the first pick is the argmax of that
  mean; ``int(N * ratio)`` points. Given the same projection and candidates, the selection equals
  the official sampler's (``tests/data/official/patchcore/coreset``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

CoresetMode = Literal["exact", "official"]
OFFICIAL_START_CANDIDATES = 10  # ApproximateGreedyCoresetSampler's number_of_starting_points


def random_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray | None:
    """A seeded Gaussian (Johnson-Lindenstrauss) projection, or None when it would not shrink."""
    if dim_out <= 0 or dim_out >= dim_in:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((dim_in, dim_out)) / np.sqrt(dim_out)).astype(np.float32)


def official_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray | None:
    """``[dim_in, dim_out]``: the transposed weight of a seeded ``torch.nn.Linear(dim_in, dim_out, bias=False)`` at
    torch's default initialisation (uniform in +-1/sqrt(dim_in)), as the official sampler projects; None when the
    features already have ``dim_out`` dimensions (the official code then skips the projection) or ``dim_out`` is 0."""
    import torch

    if dim_out <= 0 or dim_out == dim_in:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        weight = torch.nn.Linear(dim_in, dim_out, bias=False).weight
    return weight.detach().T.contiguous().numpy()


def official_start_candidates(n: int, seed: int) -> np.ndarray:
    """The official sampler's random starting candidates: ``np.random.choice(n, 10, replace=False)`` on a fresh
    ``RandomState(seed)`` (the official code draws from numpy's global state after ``fix_seeds(seed)``)."""
    return np.random.RandomState(seed).choice(n, min(OFFICIAL_START_CANDIDATES, n), replace=False)


def coreset_size(n: int, ratio: float, mode: CoresetMode) -> int:
    """How many of ``n`` vectors a coreset of ``ratio`` keeps: ``ceil(n * ratio)`` (exact) or the official
    ``int(n * ratio)`` (at least 1, where the official code would keep none)."""
    return min(n, math.ceil(ratio * n)) if mode == "exact" else min(n, max(1, int(n * ratio)))


def make_projection(dim_in: int, dim_out: int, seed: int, mode: CoresetMode) -> np.ndarray | None:
    return official_projection(dim_in, dim_out, seed) if mode == "official" else random_projection(dim_in, dim_out,
                                                                                                     seed)


def project(features: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(features, dtype=np.float32)
    return x if projection is None else x @ projection


def greedy_kcenter(points: np.ndarray, k: int, seed: int = 0, start_candidates: np.ndarray | None = None
                   ) -> np.ndarray:
    """Indices of ``k`` points chosen farthest-first (2-approximation of k-center, Gonzalez 1985), in the order
    chosen. Exact: the same selection as the plain O(N k d) loop.

    Starts from a seeded random point, or with ``start_candidates`` by the official rule: every running distance
    starts at the mean distance to the candidates and the first pick is its argmax.
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
    if start_candidates is None:
        first = int(np.random.default_rng(seed).integers(n))
        selected[0], centres[0], centre_sq[0] = first, x[first], sq[first]
        mind = np.sqrt(np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0))
        assign = np.zeros(n, dtype=np.int32)
        begin = 1
    else:  # no centre yet (assign -1): the mean distance to the candidates bounds nothing, so nothing is pruned
        mind = np.mean([np.sqrt(np.maximum(sq - 2.0 * (x @ x[s]) + sq[s], 0.0)) for s in start_candidates], axis=0,
                       dtype=np.float32)
        assign = np.full(n, -1, dtype=np.int32)
        begin = 0
    for i in range(begin, k):
        j = int(np.argmax(mind))
        c = x[j]
        # distance from the new centre to every earlier centre (k x d, small and cache-resident)
        to_centres = np.sqrt(np.maximum(centre_sq[:i] - 2.0 * (centres[:i] @ c) + sq[j], 0.0))
        if i == 0:
            candidates = np.arange(n)
        else:
            near = to_centres[assign] < 2.0 * mind  # assign -1 reads the last centre: overruled next line
            if begin == 0:
                near |= assign < 0
            candidates = np.flatnonzero(near)
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
