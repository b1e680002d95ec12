"""Keeping a GPU fed: decode on a thread pool, and prepare the next batch while this one runs.

PIL and torch release the GIL while they decode and resize, so threads scale with the cores a
worker was given. Both helpers keep results in input order and bound how far they run ahead,
so memory stays flat however long the unit is.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map(fn, items)`` on ``threads`` threads, in input order, at most ``2 * threads`` in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        window: deque[Future[R]] = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def prefetched(source: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield ``source``'s items while a background thread computes up to ``depth`` ahead.

    An exception in ``source`` is raised here, at its place in the sequence. Closing this
    generator early stops the thread at its next item.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((_DONE, exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def to_device(tensor: torch.Tensor, device: str) -> torch.Tensor:
    """Copy to ``device``; from pinned host memory (asynchronous) when the device is a GPU."""
    if device.startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
