"""Shared fixtures: one real local Ray runtime, a real S3 server (moto) on loopback, data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pipeline.demo_data import make_dataset
from tests.helpers.runs import free_port, seeded_torchvision_cache

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_runtime():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=12, n_test_good=4, n_test_defect=4, size=96)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server in this process, over HTTP on loopback (as s3fs tests itself)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ[key] = value
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny learned models run several times faster on one thread than on two contended cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def seeded_torchvision_resnet18(tmp_path, monkeypatch) -> torch.nn.Module:
    """$TORCH_HOME holding a seeded resnet18 under torchvision's IMAGENET1K_V1 file name (nothing downloads)."""
    model = seeded_torchvision_cache(tmp_path / "torch-home", "resnet18", 3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return model
