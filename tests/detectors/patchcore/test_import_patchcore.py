"""The official PatchCore save folder (``patchcore_params.pkl`` + ``nnscorer_search_index.faiss``)
built synthetically, imported into a bank, and scored through ``PatchCoreDetector.load``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from pipeline.config import ScoreConfig, StorageSettings
from pipeline.detectors.patchcore import PatchCoreDetector, resolve_bank
from pipeline.detectors.patchcore.importer import convert
from pipeline.errors import ImportRefused
from pipeline.io.storage import Storage
from tests.helpers.official import released_folder
from tests.helpers.runs import s3_buckets

STORAGE = Storage(StorageSettings())


def test_imported_bank_scores_with_the_official_rule_and_the_shifted_backbone(tmp_path, seeded_torchvision_resnet18):
    source = released_folder(tmp_path / "mvtec_bottle")
    applied = convert(source, str(tmp_path / "bank"), STORAGE)
    assert applied["version"] == "v0001" and applied["n_bank"] == 300
    assert {k: applied[k] for k in ("backbone", "image_size", "embed_dim", "patchsize", "anomaly_scorer_num_nn")} == {
        "backbone": "resnet18", "image_size": 64, "embed_dim": 64, "patchsize": 3, "anomaly_scorer_num_nn": 2}
    assert applied["bn_shift_input"] == [64, 64] and any("BatchNorm shift" in n for n in applied["notes"])
    stored = tmp_path / "bank" / "v0001" / "index-0000.faiss"
    assert stored.read_bytes() == (source / "nnscorer_search_index.faiss").read_bytes()  # the shard as it is
    assert json.loads((tmp_path / "bank" / "latest.json").read_text()) == {"version": "v0001"}

    detector = PatchCoreDetector.load(STORAGE, str(tmp_path / "bank"))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = detector.score(images)
    assert result.maps.shape == (2, 64, 64)
    feats, _ = detector.embedder(images)
    bank = faiss.read_index(str(stored)).reconstruct_n(0, 300).astype(np.float64)
    q = feats.reshape(-1, 64).numpy().astype(np.float64)
    d2 = np.sort(((q[:, None] - bank[None]) ** 2).sum(-1), axis=1)[:, :2].mean(1)
    assert np.allclose(result.scores, d2.reshape(2, -1).max(1), rtol=1e-5)

    # the backbone is the pretrained one with the official BatchNorm shift, not the clean one
    bn = detector.embedder.backbone.get_submodule("layer2.0.bn1")
    clean = seeded_torchvision_resnet18.get_submodule("layer2.0.bn1")
    assert not torch.allclose(bn.running_mean, clean.running_mean)
    assert torch.equal(detector.embedder.backbone.get_submodule("conv1").weight,
                       seeded_torchvision_resnet18.conv1.weight)


def test_a_second_import_is_a_new_version(tmp_path):
    source = released_folder(tmp_path / "mvtec_cable")
    assert convert(source, str(tmp_path / "bank"), STORAGE)["version"] == "v0001"
    assert convert(source / "patchcore_params.pkl", str(tmp_path / "bank"), STORAGE)["version"] == "v0002"


def test_released_wideresnet50_gets_the_papers_torchvision_weights(tmp_path):
    source = released_folder(tmp_path / "mvtec_grid", backbone="wideresnet50", side=224, embed_dim=32, patchsize=5,
                             num_nn=1, n_vectors=10)
    applied = convert(source, str(tmp_path / "bank"), STORAGE)
    assert applied["weights"] == "torchvision:IMAGENET1K_V1" and applied["backbone"] == "wide_resnet50_2"
    meta = json.loads((tmp_path / "bank" / "v0001" / "bank.json").read_text())
    assert meta["weights_fingerprint"] == "torchvision:wide_resnet50_2:IMAGENET1K_V1"
    assert meta["grid"] == [28, 28] and meta["patchsize"] == 5 and meta["patch_distance"] == "squared"
    assert (meta["image_size"], meta["crop_fraction"], meta["interpolation"]) == (256, 0.875, "bilinear")
    assert meta["bn_shift_input"] == [224, 224]  # the crop the model sees
    # an imported bank keeps the release's crop, and a run scoring with it records how much of each image it sees
    model = resolve_bank(STORAGE, ScoreConfig.model_validate({"input": "/a", "output": "/b",
                                                               "bank": str(tmp_path / "bank")}))
    assert model.inspected_fraction == 0.875 and model.random_weights == ()


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_names_any_global_is_refused_without_running_it(tmp_path):
    source = released_folder(tmp_path / "evil")
    marker = tmp_path / "pwned"
    (source / "patchcore_params.pkl").write_bytes(pickle.dumps({"backbone.name": RunsACommand(marker)}))
    with pytest.raises(ImportRefused, match=r"params.pkl: not a plain parameters pickle .*refuses posix.system"):
        convert(source, str(tmp_path / "bank"), STORAGE)
    assert not marker.exists()
    (source / "patchcore_params.pkl").write_bytes(pickle.dumps({"patchsize": np.int64(3)}))  # numpy is a global too
    with pytest.raises(ImportRefused, match=r"refuses numpy"):
        convert(source, str(tmp_path / "bank"), STORAGE)
    assert not (tmp_path / "bank").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backbone.name": "densenet201"}, "backbone 'densenet201' is not supported"),
    ({"patchstride": 2}, "patchstride=2"),
    ({"input_shape": (3, 64, 80)}, r"input_shape=\(3, 64, 80\)"),
    ({"layers_to_extract_from": ["layer3", "layer2"]}, "layers_to_extract_from"),
    ({"target_embed_dimension": 32}, "dimension 64, the parameters say target_embed_dimension=32"),
    ({"anomaly_scorer_num_nn": "1"}, "anomaly_scorer_num_nn missing or not int"),
])
def test_unsupported_parameters_are_refused_in_one_line(tmp_path, overrides, message):
    source = released_folder(tmp_path / "src")
    params = pickle.loads((source / "patchcore_params.pkl").read_bytes()) | overrides
    (source / "patchcore_params.pkl").write_bytes(pickle.dumps(params))
    with pytest.raises(ImportRefused, match=message):
        convert(source, str(tmp_path / "bank"), STORAGE)


def test_ensembles_and_approximate_indexes_are_refused(tmp_path):
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    (ensemble / "Ensemble-1-3_patchcore_params.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(ImportRefused, match="ensemble .*Ensemble-1-3_patchcore_params.pkl"):
        convert(ensemble, str(tmp_path / "bank"), STORAGE)
    source = released_folder(tmp_path / "ivf")
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(64), 64, 2)
    vectors = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)
    ivf.train(vectors)
    ivf.add(vectors)
    faiss.write_index(ivf, str(source / "nnscorer_search_index.faiss"))
    with pytest.raises(ImportRefused, match="a IndexIVFFlat: only exact flat"):
        convert(source, str(tmp_path / "bank"), STORAGE)


def test_import_to_s3_and_score_from_there(tmp_path, s3_endpoint, seeded_torchvision_resnet18):
    s3_buckets(s3_endpoint, "pc-import")
    storage = Storage(StorageSettings(endpoint_url=s3_endpoint))
    applied = convert(released_folder(tmp_path / "src", patchsize=5, num_nn=1), "s3://pc-import/bank", storage)
    detector = PatchCoreDetector.load(storage, "s3://pc-import/bank")
    assert applied["version"] == detector.meta.version == "v0001" and detector.meta.patchcore.patchsize == 5
    assert detector.score(torch.rand(1, 3, 64, 64)).scores.shape == (1,)


def test_an_imported_bank_cannot_be_extended_by_our_fit(tmp_path, dataset):
    from pipeline.config import FitConfig
    from pipeline.detectors.patchcore.fit import run_fit
    from pipeline.errors import ConfigError

    convert(released_folder(tmp_path / "src"), str(tmp_path / "bank"), STORAGE)
    cfg = FitConfig(normal=str(dataset / "train" / "good"), bank=str(tmp_path / "bank"), update_from="latest",
                    tracking={"enabled": False})
    with pytest.raises(ConfigError, match="update_from=v0001: that bank was imported from the official code"):
        run_fit(cfg)
