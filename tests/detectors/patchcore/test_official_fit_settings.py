"""``jobs.fit --coreset-mode official --bn-shift official`` end to end on local Ray: the settings reach the fit
workers, bank.json records them, and the scorer that loads the bank uses the same shifted backbone."""

import json

import numpy as np
import pytest
from PIL import Image

from jobs import fit


def test_official_coreset_and_bn_shift_reach_the_bank_and_its_scorer(ray_runtime, dataset, tmp_path, capsys):
    from pipeline.config import StorageSettings
    from pipeline.detectors.patchcore import PatchCoreDetector
    from pipeline.detectors.patchcore.fit import split_calibration
    from pipeline.io.sources import list_inputs
    from pipeline.io.storage import Storage

    normal, bank = str(dataset / "train" / "good"), tmp_path / "bank"
    argv = ["--normal", normal, "--bank", str(bank), "--image-size", "64", "--crop-fraction", "0.875",
            "--coreset-mode", "official", "--bn-shift", "official", "--workers", "1", "--no-tracking"]
    assert fit.main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    meta = json.loads((bank / "v0001" / "bank.json").read_text())
    assert meta["coreset_mode"] == "official" and meta["bn_shift_input"] == [56, 56]  # the 0.875 crop of 64
    assert summary["n_feature_shards"] == 1 and meta["n_bank"] == int(meta["n_patches"] * 0.1)  # int, not ceil
    storage = Storage(StorageSettings())
    detector = PatchCoreDetector.load(storage, str(bank))
    _, held = split_calibration(list_inputs(storage, normal), 0.1)
    scores = [float(detector.score(detector.preprocess(np.array(Image.open(h.removeprefix("file://")).convert(
        "RGB")))[None]).scores[0]) for h in held]
    assert max(scores) == pytest.approx(meta["threshold"], rel=1e-5)  # scored with the backbone it was fitted on
