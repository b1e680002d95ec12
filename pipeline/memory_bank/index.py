"""Exact nearest-neighbour search over a (sharded) memory bank with faiss, on CPU or GPUs.

A bank is stored as several faiss index files; :class:`ShardedIndex` searches them together
through ``faiss.IndexShards`` (ids numbered successively across shards), which returns the same
neighbours as one monolithic flat index. Vectors are stored as float32 (``IndexFlatL2``) or, to
halve memory, float16 (``IndexScalarQuantizer`` with ``QT_fp16``: still an exhaustive search,
on rounded vectors).
"""

from __future__ import annotations

import struct

import faiss
import numpy as np

from pipeline.errors import IndexFileError


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


_HEADER = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, two unused, is_trained, metric_type (faiss write_index)
_COUNT = struct.Struct("<Q")  # a vector's length, before its elements
_SQ_FIELDS = struct.Struct("<iifQQ")  # ScalarQuantizer: qtype, rangestat, rangestat_arg, d, code_size
_FLAT = (b"IxF2", b"IxFI", b"IxFl")  # IndexFlatL2 / IndexFlatIP / IndexFlat: float32 vectors
_SCALAR_QUANTIZER = b"IxSQ"
_OTHER_TYPES = {b"IwFl": "IndexIVFFlat", b"IwPQ": "IndexIVFPQ", b"IwSq": "IndexIVFScalarQuantizer",
                b"IxPq": "IndexPQ", b"IHNf": "IndexHNSWFlat", b"IxMp": "IndexIDMap", b"IxM2": "IndexIDMap2"}


def _vector(data: bytes, offset: int, item_bytes: int, what: str) -> tuple[int, int]:
    """``(length, offset after it)`` of the vector at ``offset``, refused if it claims more than the file holds."""
    if offset + _COUNT.size > len(data):
        raise IndexFileError(f"truncated before its {what}")
    (length,) = _COUNT.unpack_from(data, offset)
    end = offset + _COUNT.size + length * item_bytes
    if end > len(data):
        raise IndexFileError(f"the header claims {what} ({length * item_bytes} bytes), but the file holds "
                             f"{len(data)} bytes")
    return length, end


def check_header(data: bytes) -> None:
    """Refuse ``data`` before faiss reads it if its header claims more than it holds: faiss allocates
    what a header claims (up to 2^40 elements) before finding the bytes missing, so a 100-byte file
    claiming 3 GiB costs 3 GiB. Only the index types :func:`build_index` writes are accepted."""
    if len(data) < _HEADER.size:
        raise IndexFileError(f"{len(data)} bytes: too short for a faiss index header")
    fourcc, d, ntotal, _, _, _, metric = _HEADER.unpack_from(data)
    if fourcc not in (*_FLAT, _SCALAR_QUANTIZER):
        kind = _OTHER_TYPES.get(fourcc, f"index of type {fourcc.decode('latin-1')!r}")
        raise IndexFileError(f"a {kind}: only exact flat and scalar-quantizer faiss indexes are read")
    if d <= 0 or ntotal < 0:
        raise IndexFileError(f"header claims dimension {d} and {ntotal} vectors")
    offset = _HEADER.size + (4 if metric > 1 else 0)  # metric_arg follows the header for metrics past L2/IP
    if fourcc in _FLAT:
        length, end = _vector(data, offset, 4, f"{ntotal} vectors of dimension {d}")
        if length != ntotal * d or end != len(data):
            raise IndexFileError(f"header claims {ntotal} vectors of dimension {d} ({ntotal * d * 4} bytes); the "
                                 f"file holds {len(data)} bytes")
        return
    if offset + _SQ_FIELDS.size > len(data):
        raise IndexFileError("truncated scalar quantizer")
    _, _, _, sq_d, code_size = _SQ_FIELDS.unpack_from(data, offset)
    _, offset = _vector(data, offset + _SQ_FIELDS.size, 4, "quantizer ranges")
    length, end = _vector(data, offset, 1, f"{ntotal} codes of {code_size} bytes")
    if sq_d != d or length != ntotal * code_size or end != len(data):
        raise IndexFileError(f"header claims {ntotal} vectors of {code_size} bytes; the file holds {len(data)} bytes")


def deserialize(data: bytes) -> faiss.Index:
    """The index in ``data``, after :func:`check_header`."""
    check_header(data)
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

