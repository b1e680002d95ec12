"""Coreset selection on either engine, and the multi-round merge of shard coresets."""

import numpy as np
import pytest
import torch

from pipeline.memory_bank.coreset import covering_radius, greedy_kcenter, project, random_projection
from pipeline.memory_bank.merge import merge_tree, reduce_rows, select_coreset


def clustered(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    centres = rng.normal(size=(max(2, n // 50), d)) * 4
    return (centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_torch_and_numpy_engines_select_the_same_rows(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(200, 3000)), int(rng.choice([16, 64, 384]))
    x = clustered(rng, n, d)
    k = int(rng.integers(1, n // 4))
    projection = random_projection(d, 32, seed)
    numpy_rows = select_coreset(torch.from_numpy(x), k, projection, seed, engine="numpy")
    torch_rows = select_coreset(torch.from_numpy(x), k, projection, seed, engine="torch")
    assert torch.equal(numpy_rows, torch_rows)
    assert torch.all(numpy_rows[1:] > numpy_rows[:-1])  # sorted, distinct


def recording(sizes: list[int]):
    def run(jobs):
        out = []
        for x, budget in jobs:
            sizes.append(len(x))
            out.append(reduce_rows(x, budget, x.shape[1], 0, seed=0))
        return out
    return run


def test_small_union_is_one_step_equal_to_a_plain_reduction():
    x = clustered(np.random.default_rng(0), 2000, 16)
    sizes: list[int] = []
    merged, rounds = merge_tree([x[:900], x[900:]], 100, 10_000, 4.0, recording(sizes))
    assert rounds == 1 and sizes == [2000]
    assert np.array_equal(merged, reduce_rows(x, 100, 16, 0, seed=0))


@pytest.mark.parametrize("max_vectors,n_parts", [(500, 3), (800, 8), (1500, 5), (400, 2)])
def test_merge_tree_never_reduces_more_than_the_limit_and_keeps_coverage(max_vectors, n_parts):
    rng = np.random.default_rng(max_vectors + n_parts)
    parts = [clustered(rng, int(rng.integers(300, 900)), 16) for _ in range(n_parts)]
    union = np.concatenate(parts)
    k = max_vectors // 4
    sizes: list[int] = []
    merged, rounds = merge_tree(parts, k, max_vectors, 4.0, recording(sizes))
    assert len(merged) == k
    assert rounds >= 2 and max(sizes) <= max_vectors
    rows = {r.tobytes() for r in union}
    assert all(r.tobytes() in rows for r in merged)  # rows of the union, not new points
    assert len({r.tobytes() for r in merged}) == k
    single = reduce_rows(union, k, 16, 0, seed=0)
    assert covering_radius(union, merged) <= 1.5 * covering_radius(union, single)


def test_merge_tree_stops_when_k_exceeds_the_limit():
    parts = [clustered(np.random.default_rng(1), 600, 8) for _ in range(2)]
    sizes: list[int] = []
    merged, _ = merge_tree(parts, 500, 400, 4.0, recording(sizes))
    assert len(merged) == 500  # the last step reduces more than the limit: k alone exceeds it


def test_a_union_no_larger_than_k_is_kept_as_it_is():
    parts = [clustered(np.random.default_rng(2), 300, 8) for _ in range(3)]
    sizes: list[int] = []
    merged, rounds = merge_tree(parts, 900, 100, 4.0, recording(sizes))
    assert rounds == 0 and sizes == [] and np.array_equal(merged, np.concatenate(parts))


def test_a_merge_step_selects_on_the_same_seeded_projection_as_the_shards():
    """The fit workers reduce shards on random_projection(embed_dim, projection_dim, seed); every
    merge step must select on that same projection, or the bank would depend on who ran the step."""
    x = clustered(np.random.default_rng(3), 1500, 64)
    expected = np.sort(greedy_kcenter(project(x, random_projection(64, 16, 7)), 120, seed=7))
    assert np.array_equal(reduce_rows(x, 120, 64, 16, seed=7), x[expected])
    assert not np.array_equal(reduce_rows(x, 120, 64, 16, seed=8), x[expected])


@pytest.mark.parametrize("k,budgets", [
    (50, [51, 50, 50]),  # 3 chunks over-sampled x3 (oversample 4 caps at the chunk count)
    (300, [101, 100, 100]),  # x3 would keep 90 % of the union: plain shares of k instead
])
def test_chunk_budgets_are_shares_of_k_over_sampled_unless_that_barely_shrinks_the_union(k, budgets):
    x = clustered(np.random.default_rng(4), 1000, 8)  # cut into chunks of 334, 333, 333
    calls: list[list[tuple[int, int]]] = []
    sizes: list[int] = []

    def run(jobs):
        calls.append([(len(c), budget) for c, budget in jobs])
        return recording(sizes)(jobs)

    merged, rounds = merge_tree([x[:500], x[500:]], k, 400, 4.0, run)
    assert calls[0] == [(334, budget) for budget in budgets[:1]] + [(333, budget) for budget in budgets[1:]]
    assert len(merged) == k
    assert rounds == len(calls)  # one round per reduction step
