"""Object storage used in parallel: reads and writes keep many requests in flight (bounded), against a real
S3 server (moto) behind the tests' relay holding every request for 100 ms, as a distant store does."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import pytest

from pipeline.config import StorageSettings
from pipeline.errors import StorageError
from pipeline.io.storage import Storage
from pipeline.io.uploads import Uploader
from tests.helpers.relay import Relay
from tests.helpers.runs import s3_buckets

BUCKET = "concurrency"
DELAY_S = 0.1
N = 24


@pytest.fixture()
def far(s3_endpoint):
    """(moto's filesystem, a relay that holds each request DELAY_S) with N objects of distinct sizes."""
    fs = s3_buckets(s3_endpoint, BUCKET)
    fs.pipe({f"{BUCKET}/obj{i:02d}": bytes([i]) * (100 + i) for i in range(N)})
    target = urlparse(s3_endpoint)
    relay = Relay(target.hostname, target.port, delay_s=DELAY_S)
    yield fs, relay
    relay.close()


def storage(relay: Relay, **settings) -> Storage:
    return Storage(StorageSettings(endpoint_url=relay.url, key="testing", secret="testing", **settings))


def test_reads_are_concurrent_bounded_and_in_input_order(far):
    _, relay = far
    uris = [f"s3://{BUCKET}/obj{i:02d}" for i in range(N)]
    uris.insert(5, f"s3://{BUCKET}/missing")
    wide, narrow = storage(relay, max_concurrency=32), storage(relay, max_concurrency=3)
    list(wide.read_many(uris[:2], 10))  # connect once: both runs below start warm
    start = time.perf_counter()
    got = list(wide.read_many(uris, 1000))
    wide_s = time.perf_counter() - start
    assert isinstance(got.pop(5), StorageError)  # a missing object is its own error, in its place
    assert got == [bytes([i]) * (100 + i) for i in range(N)]
    start = time.perf_counter()
    assert len(list(narrow.read_many(uris, 1000))) == N + 1
    narrow_s = time.perf_counter() - start
    assert narrow_s >= (N + 1) // 3 * DELAY_S, f"{narrow_s:.2f} s: more than 3 reads were in flight"
    assert wide_s < narrow_s * 0.6, f"{wide_s:.2f} s with 32 in flight, {narrow_s:.2f} s with 3: not concurrent"


def test_uploads_run_concurrently_with_backpressure_and_wait_reports_failures(far):
    fs, relay = far
    seconds = {}
    for limit in (2, 16):
        uploader = Uploader(storage(relay, max_concurrency=limit))
        start = time.perf_counter()
        for i in range(N):
            uploader.put(f"s3://{BUCKET}/up{limit}/{i:02d}", bytes([i]) * 10)
        put_s = time.perf_counter() - start
        uploader.wait()
        seconds[limit] = time.perf_counter() - start
        fs.invalidate_cache()
        assert sorted(fs.ls(f"{BUCKET}/up{limit}")) == [f"{BUCKET}/up{limit}/{i:02d}" for i in range(N)]
        # each PUT is at least one held request: with `limit` in flight, the puts past them had to wait
        assert put_s >= (N - limit) // limit * DELAY_S, f"put returned after {put_s:.2f} s: no backpressure"
    assert seconds[16] < seconds[2] * 0.6, f"{seconds}: writes are not concurrent"
    uploader.put(f"s3://no-such-bucket-{N}/x", b"x")
    with pytest.raises(StorageError, match="no-such-bucket"):
        uploader.wait()
    uploader.wait()  # the failure was reported once; nothing is pending


def test_reads_are_capped_in_bytes_with_one_ranged_get(far):
    _, relay = far
    (head,) = storage(relay).read_many([f"s3://{BUCKET}/obj10"], 7)
    assert head == bytes([10]) * 8  # limit + 1 bytes: the caller sees that the object is larger


def test_a_slow_store_blocks_put_and_a_slow_consumer_stops_new_reads(tmp_path, monkeypatch):
    """Backpressure, with a disk that holds every write (and read) until told: put() blocks once max_concurrency
    writes are in flight; reads stop being started once max_concurrency are done but not consumed."""
    release, started = threading.Event(), []
    local = Storage(StorageSettings(max_concurrency=3))

    def held_write(self, uri, data):
        started.append(uri)
        release.wait(10)

    monkeypatch.setattr(Storage, "write_bytes", held_write)
    uploader = Uploader(local)
    putter = threading.Thread(target=lambda: [uploader.put(str(tmp_path / f"w{i}"), b"x") for i in range(10)])
    putter.start()
    putter.join(0.5)
    assert putter.is_alive() and len(started) == 3, started  # the 4th put waits for room
    release.set()
    putter.join(10)
    uploader.wait()
    assert len(started) == 10
    monkeypatch.undo()

    size = 256 * 1024
    for i in range(50):
        (tmp_path / f"r{i}").write_bytes(bytes([i]) * size)
    calls, first_done, at_release = [], threading.Event(), []
    real_open = Storage.open_read

    def slow_first(self, uri):
        calls.append(uri)
        if uri.endswith("/r0"):
            first_done.wait(10)  # a slow object at the head: the others go on, as far as the budgets allow
        return real_open(self, uri)

    monkeypatch.setattr(Storage, "open_read", slow_first)
    threading.Timer(0.5, lambda: (at_release.append(len(calls)), first_done.set())).start()
    bounded = Storage(StorageSettings(max_concurrency=3, max_inflight_mb=1))
    got = list(bounded.read_many([str(tmp_path / f"r{i}") for i in range(50)], size))
    assert got == [bytes([i]) * size for i in range(50)]
    assert at_release[0] <= 1 + 4 + 2, f"{at_release[0]} reads started while the first was held (1 MiB: 4 files)"
