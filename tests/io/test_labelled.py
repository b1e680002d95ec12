import pytest

from pipeline.config import StorageSettings
from pipeline.features.preprocess import Preprocess
from pipeline.io.labelled import load_labelled
from pipeline.io.storage import Storage

STORAGE = Storage(StorageSettings())


def test_mvtec_style_folder_gives_labels_and_masks(dataset):
    aux = load_labelled(STORAGE, str(dataset), Preprocess(32))
    assert aux.images.shape == (20, 3, 32, 32) and aux.masks.shape == (20, 32, 32)
    assert int(aux.labels.sum()) == 4  # test/defect
    for uri, label, mask in zip(aux.uris, aux.labels, aux.masks, strict=True):
        assert (label == 1) == ("/defect/" in uri)
        assert (mask.sum() > 0) == bool(label)


def test_one_class_only_is_refused(dataset):
    with pytest.raises(ValueError, match="need normal .* and anomalous"):
        load_labelled(STORAGE, str(dataset / "train"), Preprocess(32))
