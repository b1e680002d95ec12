"""Exact nearest-neighbour search over the memory bank with faiss (CPU, or GPU when present)."""

from __future__ import annotations

import faiss
import numpy as np


def build_index(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def to_gpu_if_available(index: faiss.Index, use_gpu: bool) -> faiss.Index:
    """Move the index to all visible GPUs when asked and faiss was built with GPU support."""
    if use_gpu and hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def knn(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean (not squared) distances and ids of the ``k`` nearest bank vectors."""
    d2, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.sqrt(np.maximum(d2, 0.0)), ids
