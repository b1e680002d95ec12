import itertools

import numpy as np
import torch

from pipeline.fit import local_budget
from pipeline.memory_bank.coreset import covering_radius, greedy_kcenter, project, random_projection
from pipeline.memory_bank.index import ShardedIndex, build_index


def naive_greedy(x: np.ndarray, k: int, seed: int) -> list[int]:
    sel = [int(np.random.default_rng(seed).integers(len(x)))]
    mind = np.linalg.norm(x - x[sel[0]], axis=1)
    for _ in range(1, k):
        j = int(np.argmax(mind))
        sel.append(j)
        mind = np.minimum(mind, np.linalg.norm(x - x[j], axis=1))
    return sel


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (20, d))
    return (centres[rng.integers(20, size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def test_pruned_greedy_selects_exactly_what_the_plain_loop_selects():
    x = clustered(3000, 32, 0)
    assert greedy_kcenter(x, 200, seed=3).tolist() == naive_greedy(x, 200, seed=3)


def test_greedy_radius_within_twice_the_brute_force_optimum():
    x = clustered(14, 4, 1)
    k = 3
    optimum = min(covering_radius(x, x[list(c)]) for c in itertools.combinations(range(len(x)), k))
    greedy = covering_radius(x, x[greedy_kcenter(x, k)])
    assert optimum <= greedy <= 2 * optimum + 1e-6


def test_two_round_coreset_radius_close_to_single_machine():
    x = clustered(8000, 64, 2)
    k = 400
    single = covering_radius(x, x[greedy_kcenter(x, k)])
    shards = np.array_split(np.random.default_rng(0).permutation(len(x)), 4)
    union = np.concatenate([s[greedy_kcenter(x[s], local_budget(len(s), k / len(x), 4, 4.0))] for s in shards])
    merged = union[greedy_kcenter(x[union], k)]
    assert covering_radius(x, x[merged]) <= 1.10 * single


def test_projection_is_seeded_and_shrinks():
    p1, p2 = random_projection(384, 128, 7), random_projection(384, 128, 7)
    assert np.array_equal(p1, p2) and project(np.ones((5, 384)), p1).shape == (5, 128)
    assert random_projection(64, 128, 0) is None


def test_faiss_knn_matches_torch_cdist():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(500, 48)).astype(np.float32), rng.normal(size=(200, 48)).astype(np.float32)
    dist, ids = ShardedIndex([build_index(bank)]).search(queries, 3)
    ref = torch.cdist(torch.from_numpy(queries).double(), torch.from_numpy(bank).double())
    ref_d, ref_i = ref.topk(3, largest=False)
    assert np.array_equal(ids, ref_i.numpy())
    assert np.allclose(dist, ref_d.numpy(), atol=1e-3)
