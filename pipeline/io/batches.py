"""Read, decode and batch the inputs of one work unit; failures travel beside the batches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import DecodeSettings
from pipeline.features.preprocess import to_input_tensor
from pipeline.io.decode import DecodeError, decode_image
from pipeline.io.sources import WorkUnit, iter_unit_items
from pipeline.io.storage import Storage


@dataclass
class Decoded:
    source_uri: str
    member: str | None
    rgb: np.ndarray
    decode_ms: float


@dataclass
class Failed:
    source_uri: str
    member: str | None
    error: str


@dataclass
class Batch:
    items: list[Decoded] = field(default_factory=list)
    tensor: torch.Tensor | None = None  # [len(items), 3, size, size]
    failed: list[Failed] = field(default_factory=list)


def iter_batches(storage: Storage, unit: WorkUnit, decode: DecodeSettings, size: int, batch_size: int
                 ) -> Iterator[Batch]:
    batch, tensors = Batch(), []
    for raw in iter_unit_items(storage, unit, decode):
        if raw.error is not None:
            batch.failed.append(Failed(raw.source_uri, raw.member, raw.error))
            continue
        start = time.perf_counter()
        try:
            rgb = decode_image(raw.data, decode.max_pixels)
        except DecodeError as exc:
            batch.failed.append(Failed(raw.source_uri, raw.member, str(exc)))
            continue
        tensors.append(to_input_tensor(rgb, size))
        batch.items.append(Decoded(raw.source_uri, raw.member, rgb, (time.perf_counter() - start) * 1e3))
        if len(batch.items) == batch_size:
            batch.tensor = torch.stack(tensors)
            yield batch
            batch, tensors = Batch(), []
    if batch.items or batch.failed:
        batch.tensor = torch.stack(tensors) if tensors else None
        yield batch
