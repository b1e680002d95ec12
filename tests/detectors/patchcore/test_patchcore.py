import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import StorageSettings
from pipeline.detectors.patchcore import PatchCoreDetector, build_embedder
from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import BankMetadata, publish_bank
from pipeline.memory_bank.index import ShardedIndex, build_index
from pipeline.memory_bank.knn import build_knn

STORAGE = Storage(StorageSettings())


def load(folder) -> torch.Tensor:
    return torch.stack([Preprocess(64)(np.array(Image.open(p).convert("RGB")))
                        for p in sorted(folder.glob("*.png"))])


def detector_for(dataset, engine: str = "faiss", precision: str | None = None, **overrides) -> PatchCoreDetector:
    settings = PatchCoreSettings(image_size=64, **overrides)
    embedder, fp = build_embedder(settings, STORAGE)
    feats, grid = embedder(load(dataset / "train" / "good"))
    bank = feats.reshape(-1, feats.shape[-1]).numpy()
    meta = BankMetadata(created_at="now", normal_uri="x", patchcore=settings.model_copy(update={"coreset_ratio": 1.0}),
                        weights_fingerprint=fp, grid=grid, n_images=12, n_errors=0,
                        n_patches=len(bank), n_bank=len(bank), n_shards=1, threshold=None, calibration={},
                        fingerprint="sha256:x")
    return PatchCoreDetector(embedder, build_knn(ShardedIndex([build_index(bank)]), engine, "cpu", precision), meta)


def test_patch_features_have_the_configured_shape():
    embedder, fingerprint = build_embedder(PatchCoreSettings(embed_dim=96), STORAGE)
    feats, grid = embedder(torch.rand(2, 3, 64, 64))
    assert grid == (8, 8) and feats.shape == (2, 64, 96) and fingerprint == "random:seed=0"


def official_recipe(taps: dict, layers: list[str], pretrain_dim: int, embed_dim: int) -> torch.Tensor:
    """PatchCore's official feature recipe, literally: unfold, pool, upsample, concat, pool."""
    grid = taps[layers[0]].shape[-2:]
    batch = taps[layers[0]].shape[0]
    pooled = []
    for layer in layers:
        fmap = taps[layer]
        h, w = fmap.shape[-2:]
        patches = torch.nn.functional.unfold(fmap, 3, padding=1).reshape(batch, -1, h, w)
        if (h, w) != tuple(grid):
            patches = torch.nn.functional.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        flat = patches.permute(0, 2, 3, 1).reshape(-1, 1, patches.shape[1])
        pooled.append(torch.nn.functional.adaptive_avg_pool1d(flat, pretrain_dim))
    stacked = torch.cat(pooled, dim=2)
    return torch.nn.functional.adaptive_avg_pool1d(stacked, embed_dim).reshape(batch, -1, embed_dim)


def test_folded_convolution_equals_the_official_unfold_and_pool_recipe():
    settings = PatchCoreSettings(embed_dim=384)
    embedder, _ = build_embedder(settings, STORAGE)
    images = torch.rand(2, 3, 64, 64)
    ours, _ = embedder(images)
    with torch.inference_mode():
        taps = embedder.backbone((images - embedder.mean) / embedder.std)
    reference = official_recipe(taps, settings.layers, settings.pretrain_embed_dim, settings.embed_dim)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4)


def test_training_images_score_zero_and_defects_peak_inside_their_mask(dataset):
    det = detector_for(dataset)
    train = det.score(load(dataset / "train" / "good"))
    defects = det.score(load(dataset / "test" / "defect"))
    assert train.scores.max() < 0.02 * defects.scores.mean()  # zero up to float rounding
    good = det.score(load(dataset / "test" / "good"))
    assert defects.maps.shape == (4, 64, 64)
    assert defects.scores.mean() > good.scores.mean()
    for i, mask_path in enumerate(sorted((dataset / "ground_truth" / "defect").glob("*.png"))):
        mask = np.asarray(Image.open(mask_path).resize((64, 64))) > 127
        assert defects.maps[i][mask].mean() > defects.maps[i][~mask].mean()


def test_reweighting_damps_but_keeps_scores_positive(dataset):
    images = load(dataset / "test" / "defect")
    raw = detector_for(dataset).score(images).scores
    weighted = detector_for(dataset, reweight=True).score(images).scores
    assert np.all(weighted <= raw + 1e-6) and np.all(weighted > 0)


def test_score_of_an_image_does_not_depend_on_its_batch(dataset):
    det = detector_for(dataset)
    images = load(dataset / "test" / "defect")
    together = det.score(images).scores
    alone = np.array([det.score(images[i:i + 1]).scores[0] for i in range(len(images))])
    assert np.allclose(together, alone, rtol=1e-4)


def test_gaussian_blur_matches_scipy_style_kernel_and_keeps_mass():
    impulse = torch.zeros(1, 65, 65)
    impulse[0, 32, 32] = 1.0
    out = gaussian_blur(impulse, 4.0)
    assert abs(out.sum().item() - 1.0) < 1e-4
    expected = np.exp(-0.5 * (np.arange(-16, 17) / 4.0) ** 2)
    expected /= expected.sum()
    assert np.allclose(out[0, 32, 16:49].numpy(), expected * expected[16], atol=1e-6)


def test_device_engine_gives_exact_distances_and_the_maps_faiss_gives(dataset):
    """Patch scores are squared L2 distances to the nearest bank vector.
    Torch engine (float32, and bfloat16 with its float32 re-rank) against exact float64 distances;
    faiss computes |q|^2 - 2qb + |b|^2 in float32, which near zero distances is only good to ~1e-3."""
    images = torch.cat([load(dataset / "test" / "defect"), load(dataset / "test" / "good")])
    det = detector_for(dataset, "faiss")
    feats, (h, w) = det.embedder(images)
    bank = det.knn.index.all_vectors().astype(np.float64)
    q = feats.reshape(-1, feats.shape[-1]).numpy().astype(np.float64)
    exact = ((q ** 2).sum(1)[:, None] - 2 * q @ bank.T + (bank ** 2).sum(1)[None]).clip(0).min(1)  # squared
    exact = torch.from_numpy(exact.reshape(len(images), h, w)).float()
    exact_maps = gaussian_blur(torch.nn.functional.interpolate(exact[:, None], size=(64, 64), mode="bilinear",
                                                               align_corners=False)[:, 0], 4.0).numpy()
    reference = det.score(images)
    assert np.allclose(reference.maps, exact_maps, rtol=1e-3, atol=1e-3)
    for precision in ("float32", "bfloat16"):
        ours = detector_for(dataset, "torch", precision).score(images)
        assert np.allclose(ours.scores, exact.flatten(1).amax(1).numpy(), rtol=1e-5, atol=1e-6), precision
        assert np.allclose(ours.maps, exact_maps, rtol=1e-5, atol=1e-6), precision
        assert np.allclose(ours.maps, reference.maps, rtol=1e-3, atol=1e-3), precision
    for precision in ("float32", "bfloat16"):  # Eq. 7 too
        weighted = detector_for(dataset, "torch", precision, reweight=True).score(images).scores
        assert np.allclose(weighted, detector_for(dataset, "faiss", reweight=True).score(images).scores, rtol=1e-3)


def test_reweighting_follows_equation_7(dataset):
    """s = (1 - softmax_j(|m_test - n_j|)[m*]) * s*, with n_j the bank's k nearest to m* (m* first) and
    s* the worst patch's score (its squared distance to m*)."""
    det = detector_for(dataset, "torch", reweight=True, num_neighbors=3)
    images = load(dataset / "test" / "defect")
    feats, _ = det.embedder(images)
    bank = det.knn.bank.numpy()
    for i in range(len(images)):
        patches = feats[i].numpy()
        d_all = np.linalg.norm(patches[:, None] - bank[None], axis=-1)
        worst = d_all.min(axis=1).argmax()
        s_star, m_star = d_all[worst].min(), bank[d_all[worst].argmin()]
        support = np.argsort(np.linalg.norm(bank - m_star, axis=1))[:3]
        d = np.linalg.norm(bank[support] - patches[worst], axis=1)
        weight = 1 - np.exp(d[0]) / np.exp(d).sum()
        assert det.score(images[i:i + 1]).scores[0] == pytest.approx(weight * s_star ** 2, rel=1e-4)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
def test_patch_score_is_the_mean_of_the_k_nearest_squared_distances(dataset, engine):
    """The official rule (anomaly_scorer_num_nn = 3), on both engines, against float64 brute force."""
    det = detector_for(dataset, engine, anomaly_scorer_num_nn=3)
    images = load(dataset / "test" / "defect")
    feats, (h, w) = det.embedder(images)
    bank = (det.knn.bank.numpy() if engine == "torch" else det.knn.index.all_vectors()).astype(np.float64)
    q = feats.reshape(-1, feats.shape[-1]).numpy().astype(np.float64)
    d2 = ((q[:, None] - bank[None]) ** 2).sum(-1)
    expected = np.sort(d2, axis=1)[:, :3].mean(1).reshape(len(images), h, w)
    scores, _, _ = det.patch_scores(images)
    assert np.allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(det.score(images).scores, expected.reshape(len(images), -1).max(1), rtol=1e-4)


def test_a_bank_from_before_the_official_rule_scores_as_it_was_calibrated(dataset, tmp_path):
    """A bank.json without patch_distance was built and thresholded on plain L2 to the nearest vector."""
    det = detector_for(dataset)
    images = load(dataset / "test" / "defect")
    storage = Storage(StorageSettings())
    new = publish_bank(storage, str(tmp_path / "bank"), det.knn.index.all_vectors(), det.meta, 1000)
    manifest = tmp_path / "bank" / new.version / "bank.json"
    old = json.loads(manifest.read_text())
    for field in ("patch_distance", "anomaly_scorer_num_nn", "patchsize", "bn_shift_input"):
        del old[field]
    manifest.write_text(json.dumps(old))
    legacy = PatchCoreDetector.load(storage, str(tmp_path / "bank"))
    assert legacy.meta.patch_distance == "euclidean"
    assert np.allclose(legacy.score(images).scores ** 2, det.score(images).scores, rtol=1e-4)
