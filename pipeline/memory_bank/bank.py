"""A versioned, sharded PatchCore memory bank in object storage.

Layout under the bank root URI::

    {root}/v0001/index-0000.faiss   faiss index shards (exact search; float32 or float16 vectors)
    {root}/v0001/index-0001.faiss
    {root}/v0001/bank.json          the manifest: how the features were made, shape, shards with
                                    fingerprints, counts, threshold, lineage (data and parent)
    {root}/latest.json              {"version": "v0001"}, written last: readers never see half a bank
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.errors import StorageError
from pipeline.io.storage import Storage, join
from pipeline.memory_bank.index import ShardedIndex, build_index, deserialize, serialize, split_rows

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


class ShardInfo(BaseModel):
    file: str
    n_vectors: int
    fingerprint: str


class LineageEntry(BaseModel):
    """One batch of normal data that went into a bank (a bank made by updates has several)."""

    version: str
    normal_uri: str
    n_images: int
    listing_fingerprint: str


class BankMetadata(BaseModel):
    """``bank.json``: the PatchCore settings the bank was fitted (or imported) with, and what the fit found.

    On disk the settings sit beside the bank's own fields, one flat mapping (as every bank.json has been), so
    banks written before this model read unchanged and readers of the file need no second level."""

    version: str = ""
    created_at: str
    normal_uri: str
    parent: str | None = None
    lineage: list[LineageEntry] = []
    patchcore: PatchCoreSettings
    weights_fingerprint: str
    grid: tuple[int, int]
    patch_distance: Literal["squared", "euclidean"] = Field(
        "squared", description="patch score: mean squared L2 distance to the anomaly_scorer_num_nn nearest bank "
                               "vectors (official), or the plain L2 distance to the nearest (banks written before "
                               "the official rule, see LEGACY_DEFAULTS)")
    bn_shift_input: tuple[int, int] | None = Field(
        None, description="(H, W) of the all-ones image the official code ran through the backbone in train mode "
                          "(imported banks); None: the clean backbone")
    n_images: int
    n_errors: int
    n_patches: int
    n_bank: int
    n_shards: int
    shards: list[ShardInfo] = []
    threshold: float | None
    calibration: dict[str, float]
    fingerprint: str


    @model_validator(mode="before")
    @classmethod
    def _settings_from_flat(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "patchcore" not in raw:
            raw = dict(raw)
            raw["patchcore"] = {k: raw.pop(k) for k in list(raw) if k in PatchCoreSettings.model_fields}
        return raw

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k != "patchcore"} | data["patchcore"]


def fingerprint(vectors: np.ndarray) -> str:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    return "sha256:" + hashlib.sha256(arr.tobytes()).hexdigest()


def listing_fingerprint(uris: list[str]) -> str:
    return "sha256:" + hashlib.sha256("\n".join(sorted(uris)).encode("utf-8", "surrogateescape")).hexdigest()


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


def next_version(storage: Storage, root: str) -> str:
    versions = _versions(storage, root)
    return f"v{(int(versions[-1][1:]) + 1) if versions else 1:04d}"


def publish_bank(storage: Storage, root: str, vectors: np.ndarray, meta: BankMetadata, shard_vectors: int
                 ) -> BankMetadata:
    """Write ``vectors`` as index shards of at most ``shard_vectors`` rows, the manifest, then the pointer."""
    version = meta.version or next_version(storage, root)
    shards = []
    for i, (start, end) in enumerate(split_rows(len(vectors), shard_vectors)):
        name = f"index-{i:04d}.faiss"
        index = build_index(vectors[start:end], meta.patchcore.index_dtype)
        storage.write_bytes(join(root, version, name), serialize(index))
        shards.append(ShardInfo(file=name, n_vectors=end - start, fingerprint=fingerprint(vectors[start:end])))
    return _publish_manifest(storage, root, meta.model_copy(update={"version": version, "shards": shards,
                                                                     "n_bank": len(vectors)}))


def publish_index_file(storage: Storage, root: str, data: bytes, meta: BankMetadata) -> BankMetadata:
    """Publish a serialised exact faiss index (an imported bank) as the single shard of a new version,
    byte for byte."""
    index = deserialize(data)
    version = next_version(storage, root)
    storage.write_bytes(join(root, version, "index-0000.faiss"), data)
    shard = ShardInfo(file="index-0000.faiss", n_vectors=index.ntotal,
                      fingerprint=fingerprint(index.reconstruct_n(0, index.ntotal)))
    return _publish_manifest(storage, root, meta.model_copy(update={"version": version, "shards": [shard],
                                                                     "n_bank": index.ntotal}))


def _publish_manifest(storage: Storage, root: str, meta: BankMetadata) -> BankMetadata:
    """``bank.json`` of a version whose shards are written, then ``latest.json``: readers never see half a bank."""
    lineage = [e if e.version else e.model_copy(update={"version": meta.version}) for e in meta.lineage]
    meta = meta.model_copy(update={"lineage": lineage})
    storage.write_bytes(join(root, meta.version, "bank.json"), meta.model_dump_json(indent=2).encode())
    storage.write_bytes(join(root, "latest.json"), json.dumps({"version": meta.version}).encode())
    return meta


def resolve_bank_uri(storage: Storage, root: str, version: str | None) -> str:
    """The folder of one bank version: ``version``, else the latest. ``root`` may name a version."""
    if version is None and storage.exists(join(root, "bank.json")):
        return root.rstrip("/")
    if version is None or version == "latest":
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


# What a bank.json written before a field existed was built and calibrated with: its threshold was
# set on plain L2 distances to the nearest vector, and its ``weights: torchvision`` meant torchvision's
# DEFAULT (IMAGENET1K_V2 for resnet50/wide_resnet50_2; ``torchvision`` now means IMAGENET1K_V1). Banks from
# before the crop setting scored the whole resized image.
LEGACY_DEFAULTS: dict[str, Any] = {"patch_distance": "euclidean", "anomaly_scorer_num_nn": 1, "patchsize": 3,
                                   "bn_shift_input": None, "crop_fraction": 1.0, "interpolation": "bilinear"}


def upgrade_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """A manifest from before the official scoring rule and weights names, made to score as it did."""
    from pipeline.features.backbones import upgrade_legacy_torchvision

    raw = LEGACY_DEFAULTS | raw
    if {"backbone", "weights", "weights_fingerprint"} <= raw.keys():
        raw["weights"], raw["weights_fingerprint"] = upgrade_legacy_torchvision(
            raw["backbone"], raw["weights"], raw["weights_fingerprint"])
    return raw


def load_metadata(storage: Storage, uri: str) -> BankMetadata:
    return BankMetadata.model_validate(upgrade_legacy(json.loads(storage.read_bytes(join(uri, "bank.json")))))


def load_index(storage: Storage, uri: str, meta: BankMetadata, use_gpu: bool = False) -> ShardedIndex:
    shards = [deserialize(storage.read_bytes(join(uri, s.file))) for s in meta.shards]
    for info, shard in zip(meta.shards, shards, strict=True):
        if shard.ntotal != info.n_vectors:
            raise StorageError(f"{join(uri, info.file)}: {shard.ntotal} vectors, manifest says {info.n_vectors}")
    return ShardedIndex(shards, use_gpu=use_gpu)
