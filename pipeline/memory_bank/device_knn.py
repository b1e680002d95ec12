"""Exact k-nearest-neighbour search over a memory bank held as a torch tensor (CPU or CUDA).

A drop-in for :class:`pipeline.memory_bank.index.ShardedIndex` (``search`` returns Euclidean
distances and int64 ids, ``reconstruct`` returns bank rows) that keeps queries and bank on the
device. Two passes:

1. Coarse: ``|b|^2 - 2 q.b`` (the query's own norm does not change the order) by chunked matmul,
   keeping the best ``k + rerank`` candidates per query with a running ``topk`` across bank
   chunks. No ``[queries x bank]`` block larger than ``max_chunk_bytes`` is ever materialised.
2. Exact re-rank: the direct ``|q - b|`` in float32 for those candidates, then the top ``k``.
   The expansion in pass 1 cancels catastrophically for large-norm vectors that lie close
   together; the direct formula does not, so the reported neighbour and distance are the exact
   ones whenever the true neighbour is among the candidates (also in float32 mode).

``precision`` sets the coarse pass: float32, or bfloat16/float16 for tensor-core matmuls (with
float32 accumulation and output, see :func:`mm_float32`); the re-rank makes up for the rounding.
(TF32, if the process enables it, only affects pass 1 the same way.) Memory per bank vector of
dimension D: float32 ``4 D + 4`` bytes (the bank serves both passes); reduced ``6 D + 4`` (a
2-byte copy for pass 1, stored centred on the bank mean because rounding error grows with the
norm, plus the float32 rows for the re-rank and ``reconstruct``). Casting float32 chunks per
search instead would read more memory than the float32 search does. float16 needs centred
coordinates below 65504; bfloat16 has float32's range.

Besides the score blocks, a search holds its query block and, per block, the candidates
``[rows, k + rerank]`` and one gathered ``[rows, D]`` slice of the bank at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Split the bank before query blocks shrink below this many rows: thinner matmuls starve a GPU.
QUERY_BLOCK = 256


class DeviceKNN:
    """Exact L2 k-NN over ``bank`` ``[n, D]``, searched where the bank lives."""

    def __init__(self, bank: torch.Tensor, precision: str = "float32", rerank: int = 8,
                 max_chunk_bytes: int = 256 << 20):
        if max_chunk_bytes < 4:
            raise ValueError(f"max_chunk_bytes={max_chunk_bytes} cannot hold a single float32 score")
        self.bank = bank.to(torch.float32).contiguous()
        self.rerank = rerank
        self.max_chunk_bytes = max_chunk_bytes
        dtype = PRECISIONS[precision]
        if dtype == torch.float32:
            self._shift, self._coarse = None, self.bank
        else:
            self._shift = self.bank.mean(dim=0)
            self._coarse = (self.bank - self._shift).to(dtype)
        self._coarse_sq = torch.linalg.vector_norm(self._coarse, dim=1, dtype=torch.float32).square()

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | Sequence[np.ndarray], device: str | torch.device = "cpu",
                     precision: str = "float32") -> DeviceKNN:
        """From one array, or from shards' vectors in order (ids numbered successively, as faiss IndexShards)."""
        x = vectors if isinstance(vectors, np.ndarray) else np.concatenate(list(vectors))
        return cls(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device), precision)

    @property
    def ntotal(self) -> int:
        return self.bank.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean (not squared) distances ``[N, k]`` float32 and ids ``[N, k]`` int64, ascending.

        Results are on the queries' device. Where ``k`` exceeds the bank, the missing columns
        are ``inf`` and ``-1`` (faiss pads with -1 too).
        """
        q = queries.to(self.bank.device, torch.float32)
        n_cand = min(k + self.rerank, self.ntotal)
        q_chunk, b_chunk = _chunk_sizes(q.shape[0], self.ntotal, self.max_chunk_bytes // 4)
        parts = [self._exact_top(block, self._candidates(block, n_cand, b_chunk), k) for block in q.split(q_chunk)]
        dist, ids = torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])
        dist, ids = _pad(dist, ids, k)
        return dist.to(queries.device), ids.to(queries.device)

    def reconstruct(self, ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bank rows (float32) by id, on the ids' device (the bank's for numpy ids); no -1 padding."""
        rows = self.bank[torch.as_tensor(ids, device=self.bank.device)]
        return rows.to(ids.device) if isinstance(ids, torch.Tensor) else rows

    def _candidates(self, q: torch.Tensor, n_cand: int, b_chunk: int) -> torch.Tensor:
        """Ids ``[q, n_cand]`` of the best coarse scores, a running top-k over bank chunks."""
        coarse_q = q if self._shift is None else (q - self._shift).to(self._coarse.dtype)
        best = q.new_empty(q.shape[0], 0)
        best_ids = torch.empty(q.shape[0], 0, dtype=torch.int64, device=q.device)
        for start in range(0, self.ntotal, b_chunk):
            # |b|^2 - 2 q.b: the query's own norm does not change the order
            scores = mm_float32(coarse_q, self._coarse[start:start + b_chunk].T).mul_(-2.0)
            scores.add_(self._coarse_sq[start:start + b_chunk])
            top, top_ids = scores.topk(min(n_cand, scores.shape[1]), dim=1, largest=False, sorted=False)
            best, best_ids = torch.cat([best, top], 1), torch.cat([best_ids, top_ids + start], 1)
            if best.shape[1] > n_cand:
                best, pos = best.topk(n_cand, dim=1, largest=False, sorted=False)
                best_ids = best_ids.gather(1, pos)
        return best_ids

    def _exact_top(self, q: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest candidates by the direct float32 ``|q - b|``, one candidate column at a time
        so the working memory stays that of the query block."""
        dist = torch.stack([torch.linalg.vector_norm(self.bank[cand[:, j]] - q, dim=1)
                            for j in range(cand.shape[1])], dim=1)
        dist, pos = dist.topk(min(k, cand.shape[1]), dim=1, largest=False)
        return dist, cand.gather(1, pos)


def _chunk_sizes(n_queries: int, n_bank: int, max_scores: int) -> tuple[int, int]:
    """Query and bank rows per block so that a block holds at most ``max_scores`` scores."""
    bank_chunk = min(n_bank, max(1, max_scores // max(1, min(n_queries, QUERY_BLOCK))))
    return max(1, min(n_queries, max_scores // bank_chunk)), bank_chunk


def mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated and returned in float32, also for float16/bfloat16 inputs.

    Rounding the product of 16-bit inputs to 16 bits (what a plain ``mm`` returns) costs far
    more than rounding the inputs: bf16 keeps 8 bits relative to |a||b|, which swamps the gaps
    between near neighbours. CUDA returns float32 natively; elsewhere the inputs are upcast,
    which gives the same products (two 16-bit floats multiply exactly in float32), so CPU tests
    check what the GPU computes, up to summation order. Costs a float32 copy of both inputs there.
    """
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.device.type == "cuda":
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _pad(dist: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    missing = k - dist.shape[1]
    if missing <= 0:
        return dist, ids
    return (torch.cat([dist, dist.new_full((dist.shape[0], missing), float("inf"))], 1),
            torch.cat([ids, ids.new_full((ids.shape[0], missing), -1)], 1))
