"""Shared fixtures: one real local Ray runtime, a real S3 server (moto) on loopback, data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pipeline.demo_data import make_dataset

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
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


def seeded_torchvision_cache(torch_home: Path, arch: str, seed: int):
    """A seeded ``arch`` saved in ``torch_home``'s hub cache under torchvision's IMAGENET1K_V1 file name, so
    ``weights: torchvision`` loads it and nothing downloads. Returns the model (eval mode)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    url = torchvision.models.get_model_weights(arch)["IMAGENET1K_V1"].url
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    return model.eval()


def s3_buckets(endpoint: str, *buckets: str):
    """An s3fs filesystem on the moto server at ``endpoint``, with ``buckets`` created if missing."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint},
                           skip_instance_cache=True)
    for bucket in buckets:
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs


def small_patchcore(**extra) -> dict:
    return {"image_size": 64, "batch_size": 4} | extra
