"""Storage failures: only regular local files are read; transient S3 failures are retried for a
bounded time, then raised as TransientStorageError; permanent ones fail at once. Outages are
played by a relay (tests/relay.py) in front of a real S3 server (moto, HTTP on loopback)."""

import asyncio
import errno
import gc
import io
import logging
import os
import random
import re
import socket
import tarfile
import time

import aiohttp
import numpy as np
import pytest
import s3fs
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from fsspec.exceptions import FSTimeoutError
from PIL import Image
from s3fs.errors import translate_boto_error

from pipeline.config import DecodeSettings, StorageSettings, VideoSettings
from pipeline.demo_data import make_video
from pipeline.errors import StorageError, TransientStorageError
from pipeline.io import storage as storage_module
from pipeline.io.batches import Decoded, _iter_decoded
from pipeline.io.sources import iter_unit_items, list_inputs, plan_units, plan_video_units
from pipeline.io.storage import Storage, backoff_s
from tests.helpers.relay import Relay, without_hanging

LOCAL = Storage(StorageSettings())
BUCKET = "outage"


# ---------------------------------------------------------------- local paths


def special_file(tmp_path, kind: str) -> str:
    path = str(tmp_path / "special.png")
    if kind == "FIFO":
        os.mkfifo(path)
    elif kind == "symlink to FIFO":
        os.mkfifo(tmp_path / "fifo")
        os.symlink(tmp_path / "fifo", path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()
    elif kind == "directory":
        os.mkdir(path)
    else:
        os.symlink("/dev/null", path)
    return path


@pytest.mark.parametrize("kind, named", [("FIFO", "FIFO"), ("symlink to FIFO", "FIFO"), ("socket", "socket"),
                                         ("directory", "directory"), ("device", "character device")])
def test_only_regular_local_files_are_read(tmp_path, kind, named):
    path = special_file(tmp_path, kind)
    for read in (LOCAL.read_bytes, LOCAL.open_read, LOCAL.size):
        with pytest.raises(StorageError, match=rf"^{re.escape(path)}: not a regular file \({named}\)$"):
            without_hanging(lambda read=read: read(path), tmp_path / "fifo", path, seconds=5)
    if kind != "directory":
        assert path in LOCAL.list_files(str(tmp_path))  # listed, so it gets an error row


def test_an_output_folder_must_not_be_an_existing_file(tmp_path):
    (tmp_path / "results.csv").write_text("x")
    for uri in (tmp_path / "results.csv", tmp_path / "results.csv" / "run"):
        with pytest.raises(StorageError) as caught:
            LOCAL.check_writable_folder(str(uri), "output")
        message = str(caught.value)
        assert message == f"output={uri}: {tmp_path / 'results.csv'} is an existing file; output must be a folder"
    for uri in (tmp_path, tmp_path / "new" / "deeper"):
        LOCAL.check_writable_folder(str(uri), "output")
    LOCAL.check_reachable(str(tmp_path / "results.csv"), "input")  # an input may be one file


@pytest.fixture()
def sleeps(monkeypatch) -> list[float]:
    """The backoff sleeps Storage takes, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr(storage_module.time, "sleep", taken.append)
    return taken


def test_local_failures_are_permanent_and_fail_at_once(tmp_path, sleeps):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"FileExistsError") as caught:  # makedirs of the folder
        LOCAL.write_bytes(str(tmp_path / "file" / "part.parquet"), b"data")
    assert not isinstance(caught.value, TransientStorageError) and "\n" not in str(caught.value)
    with pytest.raises(StorageError, match=r": not found$"):
        LOCAL.read_bytes(str(tmp_path / "missing.png"))
    assert sleeps == []


def test_local_eagain_is_retried(sleeps):
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise BlockingIOError(errno.EAGAIN, "try again")
        return "done"

    assert Storage(StorageSettings(max_attempts=3))._call("/x", flaky) == "done"
    assert len(calls) == 3 and len(sleeps) == 2


# ---------------------------------------------------------------- classification and budget


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


TRANSIENT = [
    EndpointConnectionError(endpoint_url="http://s3"), ConnectionClosedError(endpoint_url="http://s3"),
    ReadTimeoutError(endpoint_url="http://s3"), ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    ConnectionResetError(errno.ECONNRESET, "reset"), FSTimeoutError(), aiohttp.ClientPayloadError("cut short"),
    OSError(errno.EIO, "generic"), translate_boto_error(client_error(503, "SlowDown")),
    translate_boto_error(client_error(500, "InternalError")), translate_boto_error(client_error(400, "Throttling")),
]
PERMANENT = [
    translate_boto_error(client_error(403, "AccessDenied")), translate_boto_error(client_error(400, "InvalidArgument")),
    PermissionError(errno.EACCES, "denied"), NoCredentialsError(), ValueError("bad\nrequest"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_remote_failures_are_retried_then_raised_as_transient(error, sleeps):
    calls = []

    def failing():
        calls.append(1)
        raise error

    with pytest.raises(TransientStorageError, match=r"^s3://b/k: storage failed 4 time\(s\), giving up: ") as caught:
        Storage(StorageSettings(max_attempts=4))._call("s3://b/k", failing)
    assert len(calls) == 4 and len(sleeps) == 3 and "\n" not in str(caught.value)


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_remote_failures_fail_at_once_as_one_line(error, sleeps):
    def failing():
        raise error

    with pytest.raises(StorageError, match=r"^s3://b/k: ") as caught:
        Storage(StorageSettings(max_attempts=4))._call("s3://b/k", failing)
    assert not isinstance(caught.value, TransientStorageError)
    assert sleeps == [] and "\n" not in str(caught.value)


def test_backoff_doubles_with_jitter_and_is_capped():
    random.seed(3)
    for attempt in range(1, 20):
        full = min(8.0, 0.5 * 2 ** (attempt - 1))
        taken = [backoff_s(attempt) for _ in range(200)]
        assert full / 2 <= min(taken) and max(taken) <= full and max(taken) - min(taken) > full / 4
    assert sum(min(8.0, 0.5 * 2 ** i) for i in range(19)) == 127.5  # the documented worst case at max_attempts=20


# ---------------------------------------------------------------- a real S3 server behind a relay


@pytest.fixture(scope="module")
def moto(s3_endpoint) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint},
                           skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


@pytest.fixture()
def relay(s3_endpoint):
    relay = Relay("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1]))
    yield relay
    relay.close()


def through(relay: Relay, max_attempts: int = 3) -> Storage:
    return Storage(StorageSettings(endpoint_url=relay.url, key="testing", secret="testing", connect_timeout_s=1,
                                   max_attempts=max_attempts))


def timed(fn):
    start = time.perf_counter()
    try:
        return fn(), time.perf_counter() - start
    except StorageError as exc:
        return exc, time.perf_counter() - start


@pytest.mark.parametrize("mode", ["refuse", "reset", "503"])
def test_a_short_outage_is_ridden_out(moto, relay, mode):
    moto.pipe(f"{BUCKET}/short-{mode}", b"payload")
    storage = through(relay, max_attempts=5)
    relay.set_mode(mode)
    relay.set_mode_later("forward", 1.0)
    data, seconds = timed(lambda: storage.read_bytes(f"s3://{BUCKET}/short-{mode}"))
    assert data == b"payload" and seconds >= 0.9


@pytest.mark.parametrize("mode", ["refuse", "reset", "503"])
def test_a_long_outage_fails_transient_in_bounded_time(moto, relay, mode):
    moto.pipe(f"{BUCKET}/long", b"payload")
    storage = through(relay)
    relay.set_mode(mode)
    error, seconds = timed(lambda: storage.read_bytes(f"s3://{BUCKET}/long"))
    assert isinstance(error, TransientStorageError), error
    assert str(error).startswith(f"s3://{BUCKET}/long: storage failed 3 time(s), giving up: ")
    assert 0.7 <= seconds < 20  # two backoff sleeps of at least 0.25 s and 0.5 s, then it gives up
    if mode == "503":  # botocore and s3fs add no attempts of their own (s3fs would retry a SlowDown listing)
        assert relay.answered_503 == 3
        error, _ = timed(lambda: storage.list_files(f"s3://{BUCKET}/long-prefix"))
        assert isinstance(error, TransientStorageError) and "Please reduce your request rate" in str(error)
        assert relay.answered_503 == 6


@pytest.mark.parametrize("operation, key", [("open_read", "ops/a"), ("exists", "ops/a"), ("size", "ops/a"),
                                            ("list_files", "ops"), ("list_files", ""), ("write_bytes", "ops/a")])
def test_every_operation_turns_an_outage_into_transient(moto, relay, operation, key):
    moto.pipe(f"{BUCKET}/ops/a", b"payload")
    storage = through(relay)
    relay.set_mode("refuse")
    uri = f"s3://{BUCKET}/{key}"
    call = getattr(storage, operation)
    error, seconds = timed(lambda: call(uri, b"new") if operation == "write_bytes" else call(uri))
    assert isinstance(error, TransientStorageError) and seconds < 20


def test_a_missing_key_is_permanent_and_fails_without_retrying(moto, relay, sleeps):
    storage = through(relay)
    for read in (storage.read_bytes, storage.open_read):
        error, _ = timed(lambda read=read: read(f"s3://{BUCKET}/no-such-key"))
        assert type(error) is StorageError and str(error) == f"s3://{BUCKET}/no-such-key: not found"
    assert sleeps == []  # no backoff: a missing key is not retried


def test_a_read_cut_mid_object_resumes_or_fails_transient(moto, relay, monkeypatch):
    payload = np.random.default_rng(0).bytes(64 * 1024)
    moto.pipe(f"{BUCKET}/big", payload)
    monkeypatch.setattr(storage_module, "REMOTE_BLOCK_BYTES", 4096)
    storage = through(relay, max_attempts=5)
    with storage.open_read(f"s3://{BUCKET}/big") as fh:
        head = fh.read(4096)
        relay.set_mode("reset")
        relay.set_mode_later("forward", 1.0)
        assert head + fh.read() == payload
    with through(relay).open_read(f"s3://{BUCKET}/big") as fh:
        fh.read(4096)
        relay.set_mode("refuse")
        with pytest.raises(TransientStorageError):
            fh.read()


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out, "PNG")
    return out.getvalue()


def put_tar(moto, key: str, n_members: int) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(n_members):
            data = png(i) + bytes(8192)  # padding: the shard spans several read blocks
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    moto.pipe(key, out.getvalue())


def test_an_outage_fails_the_unit_instead_of_writing_error_rows(moto, relay, monkeypatch):
    monkeypatch.setattr(storage_module, "REMOTE_BLOCK_BYTES", 4096)
    for name in ("a.png", "b.png"):
        moto.pipe(f"{BUCKET}/unit/{name}", png(50))
    put_tar(moto, f"{BUCKET}/unit/shard.tar", 6)
    storage = through(relay)
    units, _ = plan_units(list_inputs(storage, f"s3://{BUCKET}/unit"), 10)
    loose, shard = units
    moto.rm(f"{BUCKET}/unit/b.png")  # gone after listing: a permanent problem of one input, an error item
    items = list(iter_unit_items(storage, loose, DecodeSettings()))
    assert [(i.status, i.error) for i in items] == [("ok", None), ("error", f"read failed: s3://{BUCKET}/unit/b.png: "
                                                                           "not found")]
    streamed = iter_unit_items(storage, shard, DecodeSettings())
    assert next(streamed).member == "0.png"
    relay.set_mode("refuse")
    with pytest.raises(TransientStorageError):
        list(streamed)  # the rest of the shard: no "tar shard unreadable" item
    with pytest.raises(TransientStorageError):
        list(iter_unit_items(storage, loose, DecodeSettings()))


def test_an_outage_mid_video_fails_the_unit(moto, relay, tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module, "REMOTE_BLOCK_BYTES", 16 * 1024)
    clip = make_video(tmp_path / "clip.mp4", n_frames=120, size=64)
    moto.put(str(clip), f"{BUCKET}/video/clip.mp4")
    storage = through(relay)
    listing = list_inputs(storage, f"s3://{BUCKET}/video")  # s3fs keeps the sizes: opening needs no request
    (unit,) = plan_video_units(storage, listing.videos, VideoSettings())
    items = _iter_decoded(storage, unit, DecodeSettings())
    first = next(items)
    assert isinstance(first, Decoded) and first.frame_index == 0
    relay.set_mode("refuse")
    with pytest.raises(TransientStorageError):
        list(items)  # not an error row: the unit fails whole and a re-run retries it
    with pytest.raises(TransientStorageError):
        list(_iter_decoded(storage, unit, DecodeSettings()))  # fails in PyAV's first read, not "not a video"


def test_a_write_to_an_endpoint_that_never_answers_gives_up_in_bounded_time(monkeypatch):
    """A PUT waits for "100 Continue"; an endpoint that accepts and then says nothing must not hold it forever."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept_and_stay_silent():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    monkeypatch.setattr(storage_module, "READ_TIMEOUT_S", 1.0)
    settings = StorageSettings(endpoint_url=f"http://127.0.0.1:{server.getsockname()[1]}", key="k", secret="s",
                               connect_timeout_s=1, max_attempts=2)
    start = time.monotonic()
    try:
        with pytest.raises(TransientStorageError):
            Storage(settings).write_bytes("s3://bucket/part.parquet", b"x" * 1000)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert time.monotonic() - start < 10


def test_only_the_orphaned_upload_task_report_is_silenced(caplog):
    """aiohttp's left-behind PUT task is not reported as a traceback; any other lost task error still is."""
    from aiohttp.client_exceptions import ClientConnectionResetError

    async def cut():
        raise ClientConnectionResetError("Cannot write to closing transport")

    async def bug():
        raise ValueError("a real bug")

    async def main():
        tasks = [asyncio.ensure_future(cut()), asyncio.ensure_future(bug())]
        await asyncio.sleep(0.01)
        tasks.clear()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(main())
        gc.collect()
    reported = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [type(e).__name__ for e in reported] == ["ValueError"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask_as_open_does(tmp_path, umask):
    """Banks and results on a shared disk must be readable by whoever the umask lets read them
    (``mkstemp`` made every file 0600, and the atomic rename kept it)."""
    previous = os.umask(umask)
    try:
        storage = Storage(StorageSettings())
        storage.write_bytes(str(tmp_path / "new" / "part.parquet"), b"rows")
        storage.write_bytes(str(tmp_path / "new" / "part.parquet"), b"rows again")  # replacing keeps the rule
        with open(tmp_path / "by-open", "wb") as fh:
            fh.write(b"x")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert os.stat(tmp_path / "by-open").st_mode & 0o777 == expected
    assert os.stat(tmp_path / "new" / "part.parquet").st_mode & 0o777 == expected
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o777 & ~umask
    assert sorted(os.listdir(tmp_path / "new")) == ["part.parquet"]  # no temporary file left behind
