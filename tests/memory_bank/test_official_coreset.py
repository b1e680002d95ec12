"""The ``official`` coreset mode against the official ``ApproximateGreedyCoresetSampler``
(tests/data/official/patchcore/coreset, made by running amazon-science/patchcore-inspection)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.detectors.patchcore.fit import local_budget
from pipeline.memory_bank.coreset import (
    coreset_size,
    greedy_kcenter,
    official_projection,
    official_start_candidates,
)
from pipeline.memory_bank.device_coreset import greedy_kcenter_torch
from pipeline.memory_bank.merge import reduce_rows

DATA = Path(__file__).resolve().parents[1] / "data" / "official" / "patchcore" / "coreset"
CASES = sorted(p.stem for p in DATA.glob("*.npz"))


def _case(name: str) -> dict:
    ref = dict(np.load(DATA / f"{name}.npz"))
    ref["features"] = ref["features"].astype(np.float32)
    ref["percentage"] = float(ref["percentage"])
    return ref


@pytest.mark.parametrize("name", CASES)
def test_given_the_official_projection_and_candidates_the_selection_is_the_officials(name):
    ref = _case(name)
    projected = ref["features"] @ ref["projection"].T
    k = coreset_size(len(projected), ref["percentage"], "official")
    assert k == len(ref["selected"])  # int(N * p), not ceil
    ours = greedy_kcenter(projected, k, start_candidates=ref["start_candidates"])
    assert ours.tolist() == ref["selected"].tolist()
    on_torch = greedy_kcenter_torch(torch.from_numpy(projected), k, start_candidates=ref["start_candidates"])
    assert on_torch.tolist() == ref["selected"].tolist()


@pytest.mark.parametrize("name", CASES)
def test_official_mode_draws_the_officials_projection_and_candidates_from_the_seed(name):
    """The sampler ran right after the official ``fix_seeds(0)``: the same seed gives the same draws here, so a
    single-shard reduction in ``official`` mode keeps exactly the official rows with nothing passed in."""
    ref = _case(name)
    n, d = ref["features"].shape
    assert np.array_equal(official_projection(d, 128, int(ref["seed"])), ref["projection"].T)
    assert official_start_candidates(n, int(ref["seed"])).tolist() == ref["start_candidates"].tolist()
    k = coreset_size(n, ref["percentage"], "official")
    assert local_budget(n, ref["percentage"], 1, 4.0, "official") == k  # a one-shard fit keeps exactly k
    kept = reduce_rows(ref["features"], k, d, 128, int(ref["seed"]), engine="numpy", mode="official")
    assert np.array_equal(kept, ref["features"][np.sort(ref["selected"])])


def test_exact_mode_differs_from_the_official_start_and_count():
    """Our default keeps its seeded first point and ceil(N * p) points: not the official selection."""
    ref = _case(CASES[0])
    projected = ref["features"] @ ref["projection"].T
    n = len(projected)
    assert coreset_size(n, ref["percentage"], "exact") == len(ref["selected"]) + 1
    ours = greedy_kcenter(projected, len(ref["selected"]), seed=0)
    assert ours.tolist() != ref["selected"].tolist()
