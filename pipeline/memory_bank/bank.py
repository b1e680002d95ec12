"""A versioned PatchCore memory bank in object storage.

Layout under the bank root URI::

    {root}/v0001/index.faiss   exact faiss index of the coreset vectors
    {root}/v0001/bank.json     metadata: how the features were made, counts, fingerprint
    {root}/latest.json         {"version": "v0001"}, written last, so readers never see half a bank
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
from pydantic import BaseModel

from pipeline.io.storage import Storage, StorageError, join

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


class BankMetadata(BaseModel):
    version: str = ""
    created_at: str
    normal_uri: str
    parent: str | None = None
    backbone: str
    weights: str
    weights_fingerprint: str
    seed: int
    layers: list[str]
    image_size: int
    pretrain_embed_dim: int
    embed_dim: int
    grid: tuple[int, int]
    coreset_ratio: float
    coreset_projection_dim: int
    num_neighbors: int
    reweight: bool
    sigma: float
    precision: str = "float32"
    n_images: int
    n_errors: int
    n_patches: int
    n_bank: int
    n_shards: int
    threshold: float | None
    calibration: dict[str, float]
    fingerprint: str


def fingerprint(vectors: np.ndarray) -> str:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    return "sha256:" + hashlib.sha256(arr.tobytes()).hexdigest()


def _versions(storage: Storage, root: str) -> list[str]:
    if not storage.exists(root):
        return []
    found = set()
    base = storage.canonical(root) + "/"
    for path in storage.list_files(root):
        head = path[len(base):].split("/", 1)[0] if path.startswith(base) else ""
        if VERSION_PATTERN.match(head):
            found.add(head)
    return sorted(found, key=lambda v: int(v[1:]))


def publish_bank(storage: Storage, root: str, index_bytes: bytes, meta: BankMetadata) -> BankMetadata:
    """Write a new version under ``root`` and point ``latest.json`` at it."""
    versions = _versions(storage, root)
    version = f"v{(int(versions[-1][1:]) + 1) if versions else 1:04d}"
    meta = meta.model_copy(update={"version": version})
    storage.write_bytes(join(root, version, "index.faiss"), index_bytes)
    storage.write_bytes(join(root, version, "bank.json"), meta.model_dump_json(indent=2).encode())
    storage.write_bytes(join(root, "latest.json"), json.dumps({"version": version}).encode())
    return meta


def resolve_bank_uri(storage: Storage, root: str, version: str | None) -> str:
    """The folder of one bank version: ``version``, else the latest. ``root`` may name a version."""
    if version is None and storage.exists(join(root, "bank.json")):
        return root.rstrip("/")
    if version is None:
        try:
            version = json.loads(storage.read_bytes(join(root, "latest.json")))["version"]
        except StorageError as exc:
            raise StorageError(f"bank={root}: no memory bank here (no latest.json); run jobs.fit first") from exc
    if not VERSION_PATTERN.match(version or ""):
        raise StorageError(f"bank_version={version!r}: expected a name like v0001")
    uri = join(root, version)
    if not storage.exists(join(uri, "bank.json")):
        raise StorageError(f"bank_version={version}: not found under {root}")
    return uri


def load_bank(storage: Storage, uri: str) -> tuple[BankMetadata, bytes]:
    meta = BankMetadata.model_validate_json(storage.read_bytes(join(uri, "bank.json")))
    return meta, storage.read_bytes(join(uri, "index.faiss"))

