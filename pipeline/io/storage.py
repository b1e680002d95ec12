"""One way to reach local paths, ``file://`` and ``s3://`` URIs (fsspec underneath).

Writes are atomic: a reader sees the old object or the new one, never half of one. On a
local disk that is a temporary file and ``os.replace``; an S3 PUT is atomic by itself.

Failures: every exception from a filesystem becomes a one-line :class:`StorageError` naming
the URI. Transient ones (connection refused/reset/timed out, HTTP 5xx, throttling) are retried
here and become :class:`TransientStorageError` once the attempts run out; permanent ones
(missing, forbidden, any local-disk error but ``EINTR``/``EAGAIN``) are raised at once.

Retry budget: :meth:`Storage._call` is the only retry loop. botocore's retries are off
(``total_max_attempts=1``) and s3fs's own loop makes one try (pausing 0.1 s after a retryable
failure), so each storage call (an s3fs operation, or one ``read`` of an open object) is tried at
most ``storage.max_attempts`` times; a stalled try is abandoned after ``storage.connect_timeout_s``
(connecting) or :data:`READ_TIMEOUT_S` (waiting for data), and the sleeps between tries add up to
at most ``sum(min(8, 0.5 * 2**i) for i in range(max_attempts - 1))`` seconds: 1.5 s for the
default 3 attempts, 127.5 s for the maximum of 20.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import http.client
import logging
import os
import posixpath
import random
import stat
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import fsspec
import fsspec.asyn
from fsspec.exceptions import FSTimeoutError

from pipeline.config import StorageSettings
from pipeline.errors import StorageError, TransientStorageError

T = TypeVar("T")

READ_TIMEOUT_S = 30.0
MIN_WRITE_BYTES_PER_S = 1 << 20  # a remote write slower than this (beyond READ_TIMEOUT_S) is abandoned
REMOTE_BLOCK_BYTES = 50 * 2**20  # one ranged GET per block when reading an object through open_read
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 8.0
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_LOCAL_TRANSIENT_ERRNOS = (errno.EINTR, errno.EAGAIN)
_THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequestsException",
                               "RequestLimitExceeded", "RequestThrottled", "RequestTimeout", "ServiceUnavailable",
                               "InternalError"})
_LOCAL_READ_THREADS = 16  # local reads are blocking calls: a pool of this many threads overlaps them
_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


class _DropOrphanedUploadErrors(logging.Filter):
    """When a connection is cut during a PUT, aiohttp leaves its body-writing task behind with the same
    error the request itself raised (and that :meth:`Storage._call` handles); asyncio then prints that
    orphan's traceback when it is collected. Only that report is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith("Task exception was never retrieved")
                    and type(error).__name__ == "ClientConnectionResetError")


logging.getLogger("asyncio").addFilter(_DropOrphanedUploadErrors())


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of ``base``."""
    return posixpath.join(base.rstrip("/"), *parts)


def backoff_s(attempt: int) -> float:
    """Sleep after failed attempt ``attempt`` (1-based): doubling from 0.5 s, capped at 8 s, jittered down
    to half so workers that failed together do not retry together."""
    return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@functools.cache
def _single_try_s3() -> type:
    """s3fs with its own retry loop down to one try (a class attribute, hence the subclass)."""
    from s3fs import S3FileSystem

    class SingleTryS3FileSystem(S3FileSystem):
        retries = 1

    return SingleTryS3FileSystem


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the service did not answer properly this time"."""
    import aiohttp
    from botocore import exceptions as bce
    from botocore.parsers import ResponseParserError  # garbled answers, as under throttling

    return (OSError, FSTimeoutError, asyncio.TimeoutError, http.client.HTTPException, aiohttp.ClientError,
            bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError, ResponseParserError)


def _client_error_response(exc: BaseException) -> dict[str, Any] | None:
    """The HTTP response of the botocore ClientError behind ``exc`` (s3fs re-raises those as OSError
    subclasses with the original as ``__cause__``)."""
    for _ in range(4):
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return response
        if exc.__cause__ is None:
            return None
        exc = exc.__cause__
    return None


def _is_transient_remote(exc: BaseException) -> bool:
    response = _client_error_response(exc)
    if response is not None:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or response.get("Error", {}).get("Code") in _THROTTLING_CODES
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    return isinstance(exc, _transient_types())


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _require_regular(uri: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
        raise StorageError(f"{uri}: not a regular file ({kind})")


def _open_local(uri: str, path: str) -> IO[bytes]:
    """Open a regular file for reading; anything else is refused before it is opened (opening a FIFO
    blocks until a writer comes, opening a device may act on it). The non-blocking open and second
    check cover a file swapped for a FIFO between the two."""
    _require_regular(uri, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        _require_regular(uri, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _write_local(path: str, data: bytes) -> None:
    """Write a temporary file beside ``path``, then rename it over ``path``. The temporary file is
    created with mode 0o666 less the umask, as ``open()`` does (``mkstemp`` would make it 0600, and
    the rename would keep that: a bank on a shared disk nobody else could read)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


async def _cat_head(fs: Any, path: str, size: int) -> bytes:
    """The first ``size`` bytes of an S3 object in one ranged GET (s3fs would send a HEAD first for a
    whole object). S3 answers a range on an empty object with 416, which here means "no bytes"."""
    try:
        return await fs._cat_file(path, start=0, end=size)
    except OSError as exc:
        response = _client_error_response(exc)
        if response is not None and response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
            return b""
        raise


class _Reader:
    """A file open for reading whose ``read`` goes through :meth:`Storage._call`: a transient failure
    half-way through an object is retried, then raised as :class:`TransientStorageError`. A failed
    fsspec read leaves the position where it was, so the retry reads the same bytes."""

    def __init__(self, storage: Storage, uri: str, fh: IO[bytes]):
        self._storage, self._fh, self.name = storage, fh, uri

    def read(self, size: int = -1) -> bytes:
        return self._storage._call(self.name, self._fh.read, size)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fh, attr)

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._fh.close()


@dataclass(frozen=True)
class Storage:
    """A filesystem for one URI scheme, built from picklable settings (ships to Ray workers)."""

    settings: StorageSettings

    def _fs_for(self, uri: str) -> tuple[Any, str]:
        if uri.startswith("s3://"):
            s = self.settings
            fs = _single_try_s3()(
                key=s.key,
                secret=s.secret,
                client_kwargs={k: v for k, v in {"endpoint_url": s.endpoint_url, "region_name": s.region}.items()
                               if v},
                config_kwargs={
                    "connect_timeout": s.connect_timeout_s,
                    "read_timeout": max(READ_TIMEOUT_S, s.connect_timeout_s),
                    "retries": {"total_max_attempts": 1, "mode": "standard"},
                    "max_pool_connections": s.max_concurrency,  # botocore's default 10 would cap concurrency
                },
                skip_instance_cache=False,
            )
            return fs, uri[len("s3://"):]
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        elif "://" in uri:
            raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
        return fsspec.filesystem("file"), os.path.abspath(uri)

    def _session(self, uri: str) -> Any:
        """The S3 filesystem of ``uri`` with its client set up: a burst of concurrent requests on a fresh
        filesystem otherwise each wait on the set-up, and run several times slower."""
        fs = self._fs_for(uri)[0]
        self._call(uri, fsspec.asyn.sync, fs.loop, fs.set_session)
        return fs

    def canonical(self, uri: str) -> str:
        """The form :meth:`list_files` reports ``uri`` in (absolute local path, or ``s3://...``)."""
        return uri.rstrip("/") if self.is_remote(uri) else self._fs_for(uri)[1].rstrip("/")

    def is_remote(self, uri: str) -> bool:
        return uri.startswith("s3://")

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_for(uri)
        return self._call(uri, fs.exists, path)

    def size(self, uri: str) -> int:
        """Bytes in the object at ``uri`` (a local path must be a regular file)."""
        fs, path = self._fs_for(uri)
        if self.is_remote(uri):
            return int(self._call(uri, fs.size, path))
        st = self._call(uri, os.stat, path)
        _require_regular(uri, st.st_mode)
        return st.st_size

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self._fs_for(uri)
        if self.is_remote(uri):
            return self._call(uri, fs.cat_file, path)
        with self.open_read(uri) as fh:
            return fh.read()

    def read_many(self, uris: Sequence[str], limit: int) -> Iterator[bytes | StorageError]:
        """The first ``limit + 1`` bytes of each object of ``uris``, in input order, read concurrently.

        At most ``storage.max_concurrency`` reads are in flight, and a read starts only while the bytes
        held (read, not yet consumed) plus the expected size of those in flight stay under
        ``storage.max_inflight_mb`` (one read always may), so memory stays flat however many ``uris``.
        S3 objects are fetched with s3fs's async API on its event loop (one ranged GET each, no HEAD);
        local files are read on a thread pool. Each read has :meth:`_call`'s retry budget. A failed read
        is yielded as its :class:`StorageError` (a :class:`TransientStorageError` when storage, not the
        object, failed) in its place; the others go on.
        """
        if not uris:
            return
        if self.is_remote(uris[0]):
            fs = self._session(uris[0])
            deadline = READ_TIMEOUT_S + (limit + 1) / MIN_WRITE_BYTES_PER_S

            def start(uri: str) -> concurrent.futures.Future:
                coro = self._acall(uri, _cat_head, fs, uri[len("s3://"):], limit + 1, timeout=deadline)
                return asyncio.run_coroutine_threadsafe(coro, fs.loop)

            yield from self._windowed(uris, start)
        else:
            with concurrent.futures.ThreadPoolExecutor(min(_LOCAL_READ_THREADS, self.settings.max_concurrency),
                                                       thread_name_prefix="read") as pool:
                yield from self._windowed(uris, lambda uri: pool.submit(self._read_local_head, uri, limit))

    def _read_local_head(self, uri: str, limit: int) -> bytes:
        with self.open_read(uri) as fh:
            return fh.read(limit + 1)

    def _windowed(self, uris: Sequence[str], start: Callable[[str], concurrent.futures.Future]
                  ) -> Iterator[bytes | StorageError]:
        """Start reads as the concurrency and byte budgets allow; yield their results in order."""
        budget = self.settings.max_inflight_mb * 2**20
        window: deque[concurrent.futures.Future] = deque()
        pending = iter(uris)
        done_bytes = done_count = 0
        exhausted = False

        def top_up() -> None:
            nonlocal exhausted
            while not exhausted:
                running = sum(not f.done() for f in window)
                held = sum(len(f.result()) for f in window if f.done() and f.exception() is None)
                expected = done_bytes / done_count if done_count else 0.0
                if window and (running >= self.settings.max_concurrency or held + running * expected >= budget):
                    return
                uri = next(pending, None)
                if uri is None:
                    exhausted = True
                    return
                window.append(start(uri))

        try:
            while True:
                top_up()
                if not window:
                    return
                head = window[0]
                while not head.done():
                    concurrent.futures.wait([f for f in window if not f.done()],
                                            return_when=concurrent.futures.FIRST_COMPLETED)
                    top_up()
                window.popleft()
                error = head.exception()
                if error is None:
                    data = head.result()
                    done_bytes, done_count = done_bytes + len(data), done_count + 1
                    yield data
                elif isinstance(error, StorageError):
                    yield error
                else:
                    raise error
        finally:
            for future in window:
                future.cancel()

    def open_read(self, uri: str) -> _Reader:
        """A binary file object (read, seek, tell; a context manager) over the object at ``uri``."""
        fs, path = self._fs_for(uri)
        if self.is_remote(uri):
            fh = self._call(uri, fs.open, path, "rb", block_size=REMOTE_BLOCK_BYTES)
        else:
            fh = self._call(uri, _open_local, uri, path)
        return _Reader(self, uri, fh)

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self._fs_for(uri)
        if self.is_remote(uri):
            # A deadline of its own: a PUT waits on "Expect: 100-continue", which the read timeout does
            # not cover, so a stalled endpoint would otherwise hold the write (and the job) forever.
            limit = READ_TIMEOUT_S + len(data) / MIN_WRITE_BYTES_PER_S
            self._call(uri, fsspec.asyn.sync, fs.loop, fs._pipe_file, path, data, timeout=limit)
        else:
            self._call(uri, _write_local, path, data)

    def remove(self, uri: str) -> None:
        """Delete the object or file at ``uri`` (missing is fine)."""
        fs, path = self._fs_for(uri)
        if self.is_remote(uri) or os.path.lexists(path):
            self._call(uri, fs.rm_file, path)

    def start_remote_write(self, uri: str, data: bytes) -> concurrent.futures.Future:
        """:meth:`write_bytes` of an S3 object as a coroutine on s3fs's event loop: returns at once, the
        future holds ``None`` or the :class:`StorageError` (same retry budget, same deadline per try)."""
        fs, path = self._session(uri), uri[len("s3://"):]
        limit = READ_TIMEOUT_S + len(data) / MIN_WRITE_BYTES_PER_S
        return asyncio.run_coroutine_threadsafe(self._acall(uri, fs._pipe_file, path, data, timeout=limit), fs.loop)

    def list_files(self, uri: str) -> list[str]:
        """All files under ``uri`` (recursive), as URIs of the same scheme, sorted. Local FIFOs, sockets
        and devices are listed too (reading them raises), so they can be reported rather than lost."""
        if self.is_remote(uri):
            return list(self.iter_files(uri))
        fs, path = self._fs_for(uri)
        if self._call(uri, fs.isdir, path):
            return sorted(self._call(uri, fs.find, path))
        if not self._call(uri, fs.exists, path):
            raise StorageError(f"{uri}: no such file, folder or prefix")
        return [uri]

    def iter_files(self, uri: str) -> Iterator[str]:
        """:meth:`list_files`, streamed: under S3 one page of keys (1,000) at a time, each page a request with
        the retry budget, so a prefix of millions of keys is never held here as listing records."""
        if not self.is_remote(uri):
            yield from self.list_files(uri)
            return
        fs = self._session(uri)
        bucket, _, key = uri[len("s3://"):].partition("/")
        query = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key.rstrip("/") else ""}
        found = False
        while True:
            try:
                page = self._call(uri, fsspec.asyn.sync, fs.loop, fs._call_s3, "list_objects_v2", **query)
            except TransientStorageError:
                raise
            except StorageError:  # no such bucket: said below, as for any missing prefix
                break
            for entry in page.get("Contents", []):
                if not entry["Key"].endswith("/"):  # "folder" placeholders are no files
                    found = True
                    yield f"s3://{bucket}/{entry['Key']}"
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                break
            query["ContinuationToken"] = page["NextContinuationToken"]
        if found:
            return
        fs, path = self._fs_for(uri)
        if self._call(uri, fs.isdir, path):  # isdir first: s3fs's exists() of a bucket says False on any error
            return
        if not self._call(uri, fs.exists, path):
            raise StorageError(f"{uri}: no such file, folder or prefix")
        yield uri

    def check_reachable(self, uri: str, setting: str) -> None:
        """Fail fast, naming ``setting``, when the storage behind ``uri`` does not answer."""
        fs, path = self._fs_for(uri)
        try:
            if self.is_remote(uri):
                self._call(uri, fs.ls, path.split("/", 1)[0], refresh=True)
                return
            parent = _nearest_existing(path)
            if not os.access(parent, os.W_OK | os.R_OK):
                raise StorageError(f"no read/write access to {parent}")
        except StorageError as exc:
            where = f" (storage.endpoint_url={self.settings.endpoint_url})" if self.is_remote(uri) else ""
            raise StorageError(f"{setting}={uri}: storage unreachable{where}: {exc}") from exc

    def check_writable_folder(self, uri: str, setting: str) -> None:
        """:meth:`check_reachable`, and refuse a local ``uri`` that is, or lies under, an existing file
        (outputs are folders). On S3 a key and a prefix of the same name coexist, so nothing to refuse."""
        self.check_reachable(uri, setting)
        if self.is_remote(uri):
            return
        nearest = _nearest_existing(self._fs_for(uri)[1])
        if not os.path.isdir(nearest):
            raise StorageError(f"{setting}={uri}: {nearest} is an existing file; {setting} must be a folder")

    def _is_transient(self, uri: str, exc: BaseException) -> bool:
        if self.is_remote(uri):
            return _is_transient_remote(exc)
        return isinstance(exc, OSError) and exc.errno in _LOCAL_TRANSIENT_ERRNOS

    def _call(self, uri: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with transient failures retried (see the module docstring) and every
        failure raised as a one-line :class:`StorageError` naming ``uri``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - s3fs/botocore/aiohttp raise many unrelated types
                self._raise_unless_retried(uri, exc, attempt)
            time.sleep(backoff_s(attempt))

    async def _acall(self, uri: str, fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> Any:
        """:meth:`_call` for a coroutine function on the filesystem's event loop: the same retry budget,
        and each try abandoned (a transient failure) after ``timeout`` seconds."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await asyncio.wait_for(fn(*args, **kwargs), timeout)
            except Exception as exc:  # noqa: BLE001 - as in _call
                self._raise_unless_retried(uri, exc, attempt)
            await asyncio.sleep(backoff_s(attempt))

    def _raise_unless_retried(self, uri: str, exc: Exception, attempt: int) -> None:
        """Raise ``exc`` as a :class:`StorageError` unless it is transient and tries are left."""
        if isinstance(exc, StorageError):
            raise exc
        if isinstance(exc, FileNotFoundError):
            raise StorageError(f"{uri}: not found") from exc
        if not self._is_transient(uri, exc):
            raise StorageError(f"{uri}: {_one_line(exc)}") from exc
        if attempt >= self.settings.max_attempts:
            raise TransientStorageError(
                f"{uri}: storage failed {attempt} time(s), giving up: {_one_line(exc)}") from exc
