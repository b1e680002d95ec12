import itertools

import numpy as np
import torch

from pipeline.detectors.patchcore.fit import local_budget
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


def textbook_greedy(x: np.ndarray, k: int, seed: int) -> list[int]:
    """Farthest-first as written in the textbook, in float64: every point re-measured every step."""
    x = x.astype(np.float64)
    sel = [int(np.random.default_rng(seed).integers(len(x)))]
    mind = np.sqrt(((x - x[sel[0]]) ** 2).sum(axis=1))
    for _ in range(1, k):
        j = int(np.argmax(mind))
        sel.append(j)
        mind = np.minimum(mind, np.sqrt(((x - x[j]) ** 2).sum(axis=1)))
    return sel


def point_sets(real: bool):
    """(name, points, k, seed): uniform and clustered sets, with duplicates, d in 2..128, many k."""
    rng = np.random.default_rng(1234 if real else 4321)
    cases = []
    for case in range(36):
        d = (2, 3, 5, 8, 16, 32, 64, 128)[case % 8]
        n = int(rng.integers(6, 400))
        if case % 3 == 0:  # uniform
            x = rng.integers(0, 32 if d <= 8 else 8, (n, d)) if not real else rng.uniform(-5, 5, (n, d))
        else:  # clustered: a few centres, small spread
            n_centres = int(rng.integers(2, 9))
            centres = rng.integers(0, 16, (n_centres, d)) if not real else rng.normal(0, 2, (n_centres, d))
            spread = rng.integers(-1, 2, (n, d)) if not real else rng.normal(0, 0.3, (n, d))
            x = centres[rng.integers(len(centres), size=n)] + spread
        if case % 2 == 0:  # exact duplicates
            x = np.concatenate([x, x[rng.integers(n, size=n // 3)]])
            x = x[rng.permutation(len(x))]
        k = int(rng.choice([1, 2, 3, max(1, len(x) // 10), len(x) // 2, len(x) - 1]))
        cases.append((f"{'real' if real else 'int'}-{case}-n{len(x)}-d{d}-k{k}", x.astype(np.float32), k, case))
    return cases


def test_pruned_greedy_equals_the_textbook_loop_on_small_integer_sets():
    """Small integers: float32 distances are exact, so the selections must be identical, ties included."""
    for name, x, k, seed in point_sets(real=False):
        assert greedy_kcenter(x, k, seed=seed).tolist() == textbook_greedy(x, k, seed), name


def test_pruned_greedy_equals_the_textbook_loop_on_real_valued_sets_up_to_float64_ties():
    """Real values: every pick is the float64 farthest point, or one tied with it to float32 rounding
    (the implementation measures |x|^2 - 2 x.c + |c|^2 in float32: absolute error ~ eps * |x|^2)."""
    n_ties = n_steps = 0
    for name, x, k, seed in point_sets(real=True):
        sel = greedy_kcenter(x, k, seed=seed).tolist()
        x64 = x.astype(np.float64)
        tol = 32 * np.finfo(np.float32).eps * 2 * float((x64 * x64).sum(axis=1).max())  # on squared distances
        assert sel[0] == textbook_greedy(x, 1, seed)[0], name
        mind = np.sqrt(((x64 - x64[sel[0]]) ** 2).sum(axis=1))
        for step, j in enumerate(sel[1:], 1):
            best = int(np.argmax(mind))
            if j != best:
                assert mind[best] ** 2 - mind[j] ** 2 <= tol, f"{name}: step {step} chose {j}, farthest is {best}"
                n_ties += 1
            n_steps += 1
            mind = np.minimum(mind, np.sqrt(((x64 - x64[j]) ** 2).sum(axis=1)))
    assert n_ties <= 0.01 * n_steps, (n_ties, n_steps)  # near-ties are rare; a wrong pruning rule is not a tie


def test_greedy_budget_edges():
    x = np.concatenate([clustered(20, 4, 5)] * 2)  # duplicates: a loop run to k = n would repeat picks
    for k in (len(x), len(x) + 5):
        assert greedy_kcenter(x, k).tolist() == list(range(len(x))), k
    for k in (0, -3):
        chosen = greedy_kcenter(x, k)
        assert chosen.shape == (0,) and chosen.dtype == np.int64, k
