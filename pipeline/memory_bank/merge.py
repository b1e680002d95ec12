"""Coreset reduction where the vectors live, and the multi-round merge of shard coresets.

:func:`reduce_rows` runs greedy k-center on a seeded projection (``exact`` or ``official`` mode), in torch on a GPU (one
fused matvec per iteration, no host sync) or with the pruned numpy loop on a CPU (it reads far
less memory there: 61,440 x 128 -> 6,144 takes ~3 s pruned against ~28 s for the full loop).

:func:`merge_tree` reduces the union of the workers' coresets to ``k`` so that no single step
runs greedy on more than ``max_vectors`` vectors: while the union is larger, it is cut into
contiguous chunks of at most ``max_vectors``, each chunk is reduced to its share of ``k`` times
``min(chunks, oversample)`` (the same over-sampling as the first round), and the results are
merged again. Each round is another composable-coreset round (a factor of 2 on the covering
radius bound, in practice far less, see docs/benchmarks.md); the chunks of a round run in parallel.
The bound holds when ``k <= max_vectors / 2``; with a larger ``k`` the last step reduces more.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from pipeline.memory_bank.coreset import (
    CoresetMode,
    greedy_kcenter,
    make_projection,
    official_start_candidates,
    project,
)
from pipeline.memory_bank.device_coreset import greedy_kcenter_torch

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def resolve_coreset_engine(engine: str, device: str) -> str:
    """``auto`` -> torch on CUDA, numpy (pruned loop) elsewhere."""
    if engine == "auto":
        return "torch" if str(device).startswith("cuda") else "numpy"
    return engine


def select_coreset(features: torch.Tensor, k: int, projection: np.ndarray | None, seed: int, engine: str = "auto",
                   dtype: str = "float32", mode: CoresetMode = "exact") -> torch.Tensor:
    """Sorted indices (on ``features.device``) of ``k`` rows chosen farthest-first on the projected rows, started
    as ``mode`` says (see :mod:`pipeline.memory_bank.coreset`)."""
    starts = official_start_candidates(len(features), seed) if mode == "official" and k < len(features) else None
    if resolve_coreset_engine(engine, features.device.type) == "torch":
        proj = features.float()
        if projection is not None:
            proj = proj @ torch.from_numpy(projection).to(features.device)
        keep = greedy_kcenter_torch(proj, k, seed, DTYPES[dtype], start_candidates=starts)
    else:
        x = features.detach().float().cpu().numpy()
        keep = torch.from_numpy(greedy_kcenter(project(x, projection), k, seed=seed, start_candidates=starts))
        keep = keep.to(features.device)
    return keep.sort().values


def reduce_rows(vectors: np.ndarray, k: int, embed_dim: int, projection_dim: int, seed: int, engine: str = "auto",
                dtype: str = "float32", mode: CoresetMode = "exact") -> np.ndarray:
    """The ``k`` rows of ``vectors`` a coreset keeps, reduced on this process's GPU if it has one."""
    if k >= len(vectors):
        return vectors
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    keep = select_coreset(x, k, make_projection(embed_dim, projection_dim, seed, mode), seed, engine, dtype, mode)
    return vectors[keep.cpu().numpy()]


def merge_tree(parts: list[np.ndarray], k: int, max_vectors: int, oversample: float,
               reduce_many: Callable[[list[tuple[np.ndarray, int]]], list[np.ndarray]]) -> tuple[np.ndarray, int]:
    """Reduce the union of ``parts`` to ``k`` rows; returns the rows and the number of rounds.

    ``reduce_many([(vectors, budget), ...])`` reduces each chunk (in parallel where it can).
    """
    union = np.concatenate(parts)
    rounds = 0
    while k < len(union) > max_vectors:
        n = len(union)
        chunks = np.array_split(union, math.ceil(n / max_vectors))  # contiguous, near-equal sizes
        factor = min(float(len(chunks)), oversample)
        if k * factor > 0.75 * n:  # over-sampling would barely shrink the union: take plain shares
            factor = 1.0
        jobs = [(c, min(len(c), math.ceil(k * factor * len(c) / n))) for c in chunks]
        union = np.concatenate(reduce_many(jobs))
        rounds += 1
        if len(union) >= n:
            break
    if len(union) > k:
        union = reduce_many([(union, k)])[0]
        rounds += 1
    return union, rounds
