"""One nearest-neighbour interface over the two engines: faiss (CPU nodes, or faiss-gpu) and
:class:`DeviceKNN` (a torch tensor on the worker's device). Both take and return torch tensors,
so PatchCore's scoring code is the same whichever engine searches.

``auto`` picks the torch engine on a CUDA device (features never leave the GPU; coarse pass in
bfloat16, exact float32 re-rank) and faiss on CPU (its BLAS search is as fast there and the
index files load without a copy).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from pipeline.memory_bank.device_knn import DeviceKNN
from pipeline.memory_bank.index import ShardedIndex


class NearestNeighbours(Protocol):
    ntotal: int

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances and int64 ids ``[N, k]``, ascending, on the queries' device."""
        ...

    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        """Bank rows by id."""
        ...


class FaissKNN:
    """A :class:`ShardedIndex` behind the torch interface (queries are copied to the host)."""

    def __init__(self, index: ShardedIndex):
        self.index = index
        self.ntotal = index.ntotal

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        dist, ids = self.index.search(queries.detach().float().cpu().numpy(), k)
        return torch.from_numpy(dist).to(queries.device), torch.from_numpy(ids).to(queries.device)

    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.index.reconstruct(ids.cpu().numpy())).to(ids.device)


def resolve_knn_engine(engine: str, device: str) -> str:
    """``auto`` -> ``torch`` on CUDA, ``faiss`` elsewhere."""
    if engine == "auto":
        return "torch" if device.startswith("cuda") else "faiss"
    return engine


def default_precision(engine: str, device: str) -> str:
    return "bfloat16" if engine == "torch" and device.startswith("cuda") else "float32"


def build_knn(index: ShardedIndex, engine: str, device: str, precision: str | None = None) -> NearestNeighbours:
    """The bank's vectors behind the chosen engine (``auto``, ``torch`` or ``faiss``)."""
    engine = resolve_knn_engine(engine, device)
    if engine == "faiss":
        return FaissKNN(index)
    vectors: np.ndarray = index.all_vectors()
    return DeviceKNN.from_vectors(vectors, device, precision or default_precision(engine, device))
