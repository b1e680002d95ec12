import faiss
import numpy as np
import pytest
import torch

from pipeline.memory_bank.device_knn import DeviceKNN

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRECISIONS = ["float32", "bfloat16", "float16"]
BANK_SIZES = [1, 7, 1000, 4099]  # 64 KiB blocks hold 64 bank rows x 256 queries: remainders both ways


def vectors(kind: str, n: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    if kind == "uniform":
        return rng.random((n, d), dtype=np.float32)
    if kind == "off-centre":  # 16-bit rounding must follow the spread, not the position
        return vectors("clustered", n, d, rng, centres) + np.float32(100.0)
    return (centres[rng.integers(len(centres), size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def faiss_search(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    d2, ids = index.search(queries, k)
    return np.sqrt(d2), ids


def exact_search(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force, padded like faiss."""
    d = torch.cdist(torch.from_numpy(queries).double(), torch.from_numpy(bank).double())
    dist, ids = d.topk(min(k, len(bank)), dim=1, largest=False)
    pad = k - dist.shape[1]
    return (np.pad(dist.numpy(), ((0, 0), (0, pad)), constant_values=np.inf),
            np.pad(ids.numpy(), ((0, 0), (0, pad)), constant_values=-1))


def exact_dist(bank: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.linalg.norm(bank[ids].astype(np.float64) - queries.astype(np.float64), axis=1)


def assert_same_nearest(bank, queries, ids, ref_ids):
    """The same nearest neighbour for >= 99.9 % of queries; where not, an exact tie."""
    same = ids[:, 0] == ref_ids[:, 0]
    assert same.mean() >= 0.999
    np.testing.assert_allclose(exact_dist(bank, queries[~same], ids[~same, 0]),
                               exact_dist(bank, queries[~same], ref_ids[~same, 0]), rtol=1e-5)


def assert_exact_knn(bank, queries, dist, ids, k, faiss_exact=True):
    """Against float64 brute force, and against faiss IndexFlatL2.

    faiss ranks by |q|^2 - 2 q.b + |b|^2 in float32, which mis-ranks near neighbours of large-norm
    vectors: on off-centre data only "never farther than faiss's pick" is asked of it.
    """
    assert ids.dtype == torch.int64 and dist.dtype == torch.float32 and ids.shape == (len(queries), k)
    dist, ids = dist.numpy(), ids.numpy()
    ref_dist, ref_ids = exact_search(bank, queries, k)
    missing = ref_ids == -1  # k beyond the bank
    assert np.array_equal(ids == -1, missing) and np.isinf(dist[missing]).all()
    assert (dist[:, 1:] >= dist[:, :-1]).all()
    assert_same_nearest(bank, queries, ids, ref_ids)
    np.testing.assert_allclose(dist[~missing], ref_dist[~missing], rtol=1e-5)
    faiss_dist, faiss_ids = faiss_search(bank, queries, k)
    if faiss_exact:
        assert_same_nearest(bank, queries, ids, faiss_ids)
        np.testing.assert_allclose(dist[~missing], faiss_dist[~missing], rtol=1e-4)
    else:
        assert (dist[:, 0] <= exact_dist(bank, queries, faiss_ids[:, 0]) * (1 + 1e-6)).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("d", [3, 64, 384])
@pytest.mark.parametrize("kind", ["uniform", "clustered", "off-centre"])
def test_same_neighbours_as_faiss_and_brute_force(kind, d, precision):
    rng = np.random.default_rng(d)
    centres = rng.normal(0, 4, (20, d))
    queries = vectors(kind, 500, d, rng, centres)
    for n_bank in BANK_SIZES:
        bank = vectors(kind, n_bank, d, rng, centres)
        knn = DeviceKNN(torch.from_numpy(bank), precision, max_chunk_bytes=64 << 10)
        for k in (1, 3, 9):
            dist, ids = knn.search(torch.from_numpy(queries), k)
            assert_exact_knn(bank, queries, dist, ids, k, faiss_exact=kind != "off-centre")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rerank_recovers_neighbours_the_expansion_loses(precision):
    """Groups of 8 points 1e-2 apart at norm ~3e4: |q|^2 - 2 q.b + |b|^2 in float32 cannot tell
    group members apart (one ulp of |q|^2 is 64), but it still finds the right group."""
    rng = np.random.default_rng(0)
    d, groups = 8, 50
    centres = 1e4 + 100.0 * rng.integers(0, 20, size=(groups, d))
    bank = (np.repeat(centres, 8, axis=0) + rng.normal(0, 1e-2, (groups * 8, d))).astype(np.float32)
    queries = (centres[rng.integers(groups, size=400)] + rng.normal(0, 1e-2, (400, d))).astype(np.float32)
    exact = np.linalg.norm(queries[:, None].astype(np.float64) - bank[None].astype(np.float64), axis=2)

    q, b = torch.from_numpy(queries), torch.from_numpy(bank)
    expansion = (q * q).sum(1, keepdim=True) - 2 * q @ b.T + (b * b).sum(1)
    assert (expansion.argmin(1).numpy() != exact.argmin(1)).mean() > 0.5

    dist, ids = DeviceKNN(b, precision).search(q, 1)
    assert np.array_equal(ids[:, 0].numpy(), exact.argmin(1))
    np.testing.assert_allclose(dist[:, 0].numpy(), exact.min(1), rtol=1e-4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_working_memory_stays_within_budget(monkeypatch, precision):
    rng = np.random.default_rng(1)
    bank, queries = rng.normal(size=(3001, 32)).astype(np.float32), rng.normal(size=(300, 32)).astype(np.float32)
    expected = DeviceKNN(torch.from_numpy(bank), precision).search(torch.from_numpy(queries), 5)
    products = []
    mm = torch.mm

    def recording_mm(a, b, **kwargs):
        products.append(a.shape[0] * b.shape[1])
        return mm(a, b, **kwargs)

    monkeypatch.setattr(torch, "mm", recording_mm)
    budget = 4000  # bytes: 1000 float32 scores
    dist, ids = DeviceKNN(torch.from_numpy(bank), precision, max_chunk_bytes=budget).search(
        torch.from_numpy(queries), 5)
    assert len(products) > 300 and max(products) * 4 <= budget
    assert torch.equal(ids, expected[1]) and torch.equal(dist, expected[0])


def test_from_shards_and_reconstruct():
    rng = np.random.default_rng(2)
    shards = [rng.normal(size=(n, 16)).astype(np.float32) for n in (5, 300, 17)]
    bank = np.concatenate(shards)
    knn = DeviceKNN.from_vectors(shards, "cpu", "float16")
    assert knn.ntotal == 322
    ids = np.array([0, 4, 5, 304, 305, 321])
    assert torch.equal(knn.reconstruct(ids), torch.from_numpy(bank[ids]))
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    dist, found = knn.search(torch.from_numpy(queries), 3)
    assert_exact_knn(bank, queries, dist, found, 3)
    assert torch.equal(knn.reconstruct(found[:, 0]), torch.from_numpy(bank[found[:, 0].numpy()]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_cuda_bank_matches_faiss(precision):
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (20, 384))
    bank, queries = vectors("clustered", 16000, 384, rng, centres), vectors("clustered", 5000, 384, rng, centres)
    knn = DeviceKNN.from_vectors(bank, "cuda", precision)
    dist, ids = knn.search(torch.from_numpy(queries), 9)  # host queries: results come back to the host
    assert not dist.is_cuda and not ids.is_cuda
    assert_exact_knn(bank, queries, dist, ids, 9)
    gpu_dist, _ = knn.search(torch.from_numpy(queries).cuda(), 9)
    assert gpu_dist.is_cuda
