"""Read, decode and batch the inputs of one work unit; failures travel beside the batches.

Memory: a batch keeps its decoded RGB images (heatmaps are drawn on them), and a worker has up to
:data:`BATCHES_ALIVE` batches alive at once, so a batch is closed early once its images hold
:func:`batch_byte_cap` bytes: together they stay within ``decode.max_decoded_bytes`` however large the
images (an image larger than the cap makes a batch of its own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import DecodeSettings
from pipeline.errors import DecodeError, StorageError, TransientStorageError, VideoError
from pipeline.features.preprocess import Preprocess
from pipeline.io.decode import decode_image
from pipeline.io.prefetch import ordered_map
from pipeline.io.sources import RawItem, WorkUnit, iter_unit_items
from pipeline.io.storage import Storage
from pipeline.io.video import iter_frames


@dataclass
class Decoded:
    source_uri: str
    member: str | None
    rgb: np.ndarray
    decode_ms: float
    frame_index: int | None = None
    timestamp_s: float | None = None
    member_index: int | None = None  # position of the member in its tar (see RawItem)


@dataclass
class Failed:
    """An input that gives no scores: ``status`` "error" (``error`` says why) or "skipped"."""

    source_uri: str
    member: str | None
    error: str
    frame_index: int | None = None
    member_index: int | None = None
    status: str = "error"


@dataclass
class Batch:
    items: list[Decoded] = field(default_factory=list)
    tensor: torch.Tensor | None = None  # [len(items), 3, input_size, input_size]
    failed: list[Failed] = field(default_factory=list)


BATCHES_ALIVE = 3  # the batch being scored, the one prefetched behind it, the one being filled


def batch_byte_cap(decode: DecodeSettings) -> int:
    """Decoded bytes (H x W x 3) one batch may hold."""
    return max(1, decode.max_decoded_bytes // BATCHES_ALIVE)


def _iter_video(storage: Storage, unit: WorkUnit) -> Iterator[Decoded | Failed]:
    start = time.perf_counter()
    try:
        for frame in iter_frames(storage, unit.video, unit.frame_start, unit.frame_end, unit.frame_stride):
            yield Decoded(unit.video, None, frame.rgb, (time.perf_counter() - start) * 1e3, frame.index,
                          frame.timestamp_s)
            start = time.perf_counter()
    except TransientStorageError:
        raise
    except VideoError as exc:
        yield Failed(unit.video, None, str(exc), exc.frame_index)
    except StorageError as exc:
        yield Failed(unit.video, None, str(exc))


def _decode_raw(raw: RawItem, decode: DecodeSettings) -> Decoded | Failed:
    if raw.status != "ok":
        return Failed(raw.source_uri, raw.member, raw.error or raw.status, member_index=raw.member_index,
                      status=raw.status)
    start = time.perf_counter()
    try:
        rgb = decode_image(raw.data, decode.max_pixels)
    except DecodeError as exc:
        return Failed(raw.source_uri, raw.member, str(exc), member_index=raw.member_index)
    return Decoded(raw.source_uri, raw.member, rgb, (time.perf_counter() - start) * 1e3,
                   member_index=raw.member_index)


def _iter_decoded(storage: Storage, unit: WorkUnit, decode: DecodeSettings, threads: int = 1
                  ) -> Iterator[Decoded | Failed]:
    """Decoded inputs and failures, in input order; a :class:`TransientStorageError` propagates (the
    unit fails whole). Images are read concurrently (:meth:`Storage.read_many`) and decode on ``threads``
    threads."""
    if unit.video is not None:
        return _iter_video(storage, unit)
    return ordered_map(lambda raw: _decode_raw(raw, decode), iter_unit_items(storage, unit, decode), threads)


def _with_tensor(item: Decoded | Failed, preprocess: Preprocess) -> tuple[Decoded | Failed, torch.Tensor | None]:
    return item, (preprocess(item.rgb) if isinstance(item, Decoded) else None)


def iter_batches(storage: Storage, unit: WorkUnit, decode: DecodeSettings, preprocess: Preprocess,
                 batch_size: int, threads: int = 1) -> Iterator[Batch]:
    """Batches of decoded inputs (images, tar members or sampled video frames) as model tensors.
    Decoding and resizing run on ``threads`` threads (the worker's CPU share). A batch holds at most
    ``batch_size`` images and at most :func:`batch_byte_cap` decoded bytes (at least one image)."""
    batch, tensors, held = Batch(), [], 0
    cap = batch_byte_cap(decode)
    prepared = ordered_map(lambda item: _with_tensor(item, preprocess), _iter_decoded(storage, unit, decode, threads),
                           threads)
    for item, tensor in prepared:
        if isinstance(item, Failed):
            batch.failed.append(item)
            continue
        if batch.items and held + item.rgb.nbytes > cap:
            batch.tensor = torch.stack(tensors)
            yield batch
            batch, tensors, held = Batch(), [], 0
        tensors.append(tensor)
        batch.items.append(item)
        held += item.rgb.nbytes
        if len(batch.items) == batch_size:
            batch.tensor = torch.stack(tensors)
            yield batch
            batch, tensors, held = Batch(), [], 0
    if batch.items or batch.failed:
        batch.tensor = torch.stack(tensors) if tensors else None
        yield batch
