"""Exact nearest-neighbour search over a (sharded) memory bank with faiss, on CPU or GPUs.

A bank is stored as several faiss index files; :class:`ShardedIndex` searches them together
through ``faiss.IndexShards`` (ids numbered successively across shards), which returns the same
neighbours as one monolithic flat index. Vectors are stored as float32 (``IndexFlatL2``) or, to
halve memory, float16 (``IndexScalarQuantizer`` with ``QT_fp16``: still an exhaustive search,
on rounded vectors).
"""

from __future__ import annotations

import faiss
import numpy as np


def build_index(vectors: np.ndarray, dtype: str = "float32") -> faiss.Index:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if dtype == "float16":
        index = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def split_rows(n: int, max_per_shard: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` row ranges of at most ``max_per_shard`` rows, near-equal sizes."""
    count = max(1, -(-n // max_per_shard))
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class ShardedIndex:
    """Several faiss indexes searched as one; ``use_gpu`` spreads the shards over visible GPUs."""

    def __init__(self, shards: list[faiss.Index], use_gpu: bool = False):
        if use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._resources = [faiss.StandardGpuResources() for _ in range(faiss.get_num_gpus())]
            shards = [faiss.index_cpu_to_gpu(self._resources[i % len(self._resources)], i % len(self._resources), s)
                      for i, s in enumerate(shards)]
        self.shards = shards  # keep Python references: IndexShards does not own its members
        self.offsets = np.cumsum([0] + [s.ntotal for s in shards])
        self.d = shards[0].d
        self.ntotal = int(self.offsets[-1])
        if len(shards) == 1:
            self._search_index = shards[0]
        else:
            self._search_index = faiss.IndexShards(self.d, True, True)  # threaded, successive ids
            for shard in shards:
                self._search_index.add_shard(shard)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean (not squared) distances and global ids of the ``k`` nearest bank vectors."""
        d2, ids = self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(d2, 0.0)), ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Bank vectors by global id."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.d), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, ids, side="right") - 1
        for row, (gid, s) in enumerate(zip(ids, shard_of, strict=True)):
            out[row] = self.shards[s].reconstruct(int(gid - self.offsets[s]))
        return out

    def all_vectors(self) -> np.ndarray:
        return np.concatenate([s.reconstruct_n(0, s.ntotal) for s in self.shards])

