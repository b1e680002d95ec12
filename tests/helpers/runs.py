"""Building blocks of small real runs: free ports, moto buckets, seeded torchvision weights, tiny PatchCore settings."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



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
