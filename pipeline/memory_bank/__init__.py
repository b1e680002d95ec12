"""PatchCore's memory bank: greedy coreset (numpy or on the device), distributed merge, faiss shards, kNN, versions."""

from __future__ import annotations

from pipeline.lazy_exports import lazy_exports

_HOMES = {
    "BankMetadata": "pipeline.memory_bank.bank",
    "DTYPES": "pipeline.memory_bank.merge",
    "DeviceKNN": "pipeline.memory_bank.device_knn",
    "FaissKNN": "pipeline.memory_bank.knn",
    "LEGACY_DEFAULTS": "pipeline.memory_bank.bank",
    "LineageEntry": "pipeline.memory_bank.bank",
    "NearestNeighbours": "pipeline.memory_bank.knn",
    "PRECISIONS": "pipeline.memory_bank.device_knn",
    "QUERY_BLOCK": "pipeline.memory_bank.device_knn",
    "ShardInfo": "pipeline.memory_bank.bank",
    "ShardedIndex": "pipeline.memory_bank.index",
    "VERSION_PATTERN": "pipeline.memory_bank.bank",
    "build_index": "pipeline.memory_bank.index",
    "build_knn": "pipeline.memory_bank.knn",
    "covering_radius": "pipeline.memory_bank.coreset",
    "default_precision": "pipeline.memory_bank.knn",
    "deserialize": "pipeline.memory_bank.index",
    "fingerprint": "pipeline.memory_bank.bank",
    "greedy_kcenter": "pipeline.memory_bank.coreset",
    "greedy_kcenter_torch": "pipeline.memory_bank.device_coreset",
    "listing_fingerprint": "pipeline.memory_bank.bank",
    "load_index": "pipeline.memory_bank.bank",
    "load_metadata": "pipeline.memory_bank.bank",
    "merge_tree": "pipeline.memory_bank.merge",
    "mm_float32": "pipeline.memory_bank.device_knn",
    "next_version": "pipeline.memory_bank.bank",
    "project": "pipeline.memory_bank.coreset",
    "publish_bank": "pipeline.memory_bank.bank",
    "publish_index_file": "pipeline.memory_bank.bank",
    "resolve_coreset_engine": "pipeline.memory_bank.merge",
    "resolve_knn_engine": "pipeline.memory_bank.knn",
    "random_projection": "pipeline.memory_bank.coreset",
    "reduce_rows": "pipeline.memory_bank.merge",
    "resolve_bank_uri": "pipeline.memory_bank.bank",
    "select_coreset": "pipeline.memory_bank.merge",
    "serialize": "pipeline.memory_bank.index",
    "split_rows": "pipeline.memory_bank.index",
    "upgrade_legacy": "pipeline.memory_bank.bank",
}

__getattr__, __all__ = lazy_exports(__name__, _HOMES)
