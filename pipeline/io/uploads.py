"""Writes off the caller's path: many objects stored concurrently, with backpressure instead of a queue.

:meth:`Uploader.put` returns as soon as the write has started, unless ``storage.max_concurrency``
writes are already in flight or their bytes would pass ``storage.max_inflight_mb``: then it waits
for room, so a producer faster than the store slows down rather than filling memory.
:meth:`Uploader.wait` returns once every write so far is durably stored, or raises the first
failure, so a caller can make "everything I wrote is there" a precondition (a unit's marker).
S3 writes are coroutines on s3fs's event loop; local writes run on a small thread pool. Each write
has :class:`~pipeline.io.storage.Storage`'s retry budget.
"""

from __future__ import annotations

import concurrent.futures
import threading

from pipeline.errors import TransientStorageError
from pipeline.io.storage import Storage

_LOCAL_WRITE_THREADS = 8


class Uploader:
    def __init__(self, storage: Storage):
        self.storage = storage
        self._budget = storage.settings.max_inflight_mb * 2**20
        self._room = threading.Condition()
        self._running = self._bytes = 0
        self._futures: list[concurrent.futures.Future] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def put(self, uri: str, data: bytes) -> None:
        """Start writing ``data`` to ``uri``; blocks while the store is behind (see the module docstring)."""
        size = len(data)
        with self._room:
            self._room.wait_for(lambda: self._running == 0 or (
                self._running < self.storage.settings.max_concurrency and self._bytes + size <= self._budget))
            self._running += 1
            self._bytes += size
        future = self._start(uri, data)
        future.add_done_callback(lambda _: self._release(size))
        self._futures.append(future)

    def wait(self) -> None:
        """Block until every write started since the last ``wait`` is stored; then raise the first failure,
        a :class:`~pipeline.errors.TransientStorageError` if any write failed that way."""
        futures, self._futures = self._futures, []
        concurrent.futures.wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            transient = [e for e in errors if isinstance(e, TransientStorageError)]
            raise (transient or errors)[0]

    def abandon(self) -> None:
        """Forget the writes started since the last ``wait`` (after letting those in flight finish)."""
        futures, self._futures = self._futures, []
        concurrent.futures.wait(futures)

    def close(self) -> None:
        self.abandon()
        if self._pool is not None:
            self._pool.shutdown()

    def _release(self, size: int) -> None:
        with self._room:
            self._running -= 1
            self._bytes -= size
            self._room.notify_all()

    def _start(self, uri: str, data: bytes) -> concurrent.futures.Future:
        if self.storage.is_remote(uri):
            return self.storage.start_remote_write(uri, data)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(_LOCAL_WRITE_THREADS, thread_name_prefix="upload")
        return self._pool.submit(self.storage.write_bytes, uri, data)
