import numpy as np
import pytest

from pipeline.config import FitConfig, StorageSettings
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import (
    BankMetadata,
    load_index,
    load_metadata,
    publish_bank,
    resolve_bank_uri,
)
from pipeline.memory_bank.index import ShardedIndex, build_index, split_rows
from tests.helpers.runs import small_patchcore

STORAGE = Storage(StorageSettings())


def tiny_meta(**settings) -> BankMetadata:
    patchcore = PatchCoreSettings(layers=["layer2"], image_size=64, pretrain_embed_dim=8, embed_dim=8,
                                  coreset_ratio=0.1, coreset_projection_dim=0, num_neighbors=1, sigma=4
                                  ).model_copy(update=settings)
    return BankMetadata(created_at="t", normal_uri="n", patchcore=patchcore, weights_fingerprint="f", grid=(8, 8),
                        n_images=1, n_errors=0, n_patches=64, n_bank=6, n_shards=1, threshold=None, calibration={},
                        fingerprint="sha256:0")


def test_bank_versions_count_up_for_relative_and_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vectors = np.zeros((6, 8), np.float32)
    versions = [publish_bank(STORAGE, root, vectors, tiny_meta(), shard_vectors=4).version
                for root in ("banks/a", "banks/a/", f"file://{tmp_path}/banks/a")]
    assert versions == ["v0001", "v0002", "v0003"]
    assert resolve_bank_uri(STORAGE, "banks/a", None).endswith("v0003")
    assert resolve_bank_uri(STORAGE, "banks/a", "v0001").endswith("v0001")
    with pytest.raises(Exception, match="v0009: not found"):
        resolve_bank_uri(STORAGE, "banks/a", "v0009")


def test_sharded_bank_returns_exactly_the_monolithic_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, 32)).astype(np.float32)
    queries = rng.normal(size=(300, 32)).astype(np.float32)
    meta = publish_bank(STORAGE, str(tmp_path / "bank"), vectors, tiny_meta(embed_dim=32), shard_vectors=300)
    assert [s.n_vectors for s in meta.shards] == [250, 250, 250, 250]
    assert [s.file for s in meta.shards] == [f"index-{i:04d}.faiss" for i in range(4)]
    uri = str(tmp_path / "bank" / "v0001")
    sharded = load_index(STORAGE, uri, load_metadata(STORAGE, uri))
    mono_d, mono_i = ShardedIndex([build_index(vectors)]).search(queries, 5)
    shard_d, shard_i = sharded.search(queries, 5)
    assert np.array_equal(mono_i, shard_i) and np.allclose(mono_d, shard_d)
    assert np.array_equal(sharded.all_vectors(), vectors)
    assert np.array_equal(sharded.reconstruct(np.array([0, 251, 999])), vectors[[0, 251, 999]])


def test_float16_bank_halves_memory_and_keeps_neighbours_close():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2000, 64)).astype(np.float32)
    queries = rng.normal(size=(500, 64)).astype(np.float32)
    exact_d, exact_i = ShardedIndex([build_index(vectors)]).search(queries, 1)
    half_d, half_i = ShardedIndex([build_index(vectors, "float16")]).search(queries, 1)
    from pipeline.memory_bank.index import serialize

    assert len(serialize(build_index(vectors, "float16"))) < 0.55 * len(serialize(build_index(vectors)))
    assert (half_i == exact_i).mean() > 0.98
    assert np.max(np.abs(half_d - exact_d) / exact_d) < 1e-2


def test_split_rows_is_balanced_and_complete():
    assert split_rows(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert split_rows(3, 100) == [(0, 3)]


def test_incremental_update_extends_a_bank_with_lineage(ray_runtime, dataset, tmp_path):
    bank = str(tmp_path / "bank")
    common = {"patchcore": small_patchcore(calibration_fraction=0), "runtime": {"workers": 2},
              "tracking": {"enabled": False}}
    first = run_fit(FitConfig.model_validate({"normal": str(dataset / "train" / "good"), "bank": bank} | common))
    update = run_fit(FitConfig.model_validate(
        {"normal": str(dataset / "test" / "good"), "bank": bank, "update_from": "latest",
         "patchcore": {"image_size": 128, "calibration_fraction": 0}} | {k: v for k, v in common.items()
                                                                        if k != "patchcore"}))
    assert (first["version"], update["version"], update["parent"]) == ("v0001", "v0002", "v0001")
    meta = load_metadata(STORAGE, f"{bank}/v0002")
    assert meta.patchcore.image_size == 64  # feature settings come from the parent, not the flags
    assert meta.n_images == 12 + 4 and meta.n_patches == (12 + 4) * 8 * 8  # 64 px, whole image, stride 8
    assert meta.n_bank == round(0.1 * meta.n_patches + 0.5)
    assert [e.version for e in meta.lineage] == ["v0001", "v0002"]
    assert meta.lineage[1].normal_uri.endswith("test/good")
    # the old bank's vectors were reused, not re-extracted: most of v0002 is copied from v0001
    old = load_index(STORAGE, f"{bank}/v0001", load_metadata(STORAGE, f"{bank}/v0001")).all_vectors()
    new = load_index(STORAGE, f"{bank}/v0002", meta).all_vectors()
    kept = (ShardedIndex([build_index(old)]).search(new, 1)[0][:, 0] < 1e-4).sum()
    assert kept >= 0.5 * len(old)
