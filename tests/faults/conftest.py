"""Fixtures shared by the fault tests: one fitted bank for the whole suite, tiny images, and the
environment a ``python -m jobs.*`` subprocess needs to join the session's Ray runtime."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.demo_data import make_dataset
from tests.helpers.faults import N_IMAGES
from tests.helpers.runs import small_patchcore


@dataclass(frozen=True)
class FaultData:
    images: Path  # N_IMAGES loose PNGs (read-only: tests copy what they change)
    bank: Path  # a fitted PatchCore bank root


@pytest.fixture(scope="session")
def fault_data(ray_runtime, tmp_path_factory) -> FaultData:
    from pipeline.config import FitConfig
    from pipeline.detectors.patchcore.fit import run_fit

    root = tmp_path_factory.mktemp("faults")
    data = make_dataset(root / "data", n_train=12, n_test_good=N_IMAGES // 2, n_test_defect=N_IMAGES // 2, size=64)
    images = root / "images"
    images.mkdir()
    for sub in ("good", "defect"):
        for src in sorted((data / "test" / sub).glob("*.png")):
            shutil.copyfile(src, images / f"{sub}-{src.name}")
    assert len(list(images.iterdir())) == N_IMAGES
    run_fit(FitConfig.model_validate({
        "normal": str(data / "train" / "good"), "bank": str(root / "bank"), "patchcore": small_patchcore(),
        "runtime": {"workers": 1}, "tracking": {"enabled": False}}))
    return FaultData(images=images, bank=root / "bank")


@pytest.fixture()
def cluster_env(ray_runtime) -> dict[str, str]:
    """Environment for a job subprocess that joins this session's Ray (a cluster from its point of view)."""
    gcs = ray_runtime.get_runtime_context().gcs_address
    return os.environ | {"RAY_ADDRESS": gcs, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                         "TQDM_DISABLE": "1"}
