"""Threaded decoding and batch prefetching keep order, bound memory, and pass errors through."""

import threading
import time

import pytest

from pipeline.io.prefetch import ordered_map, prefetched


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_ordered_map_keeps_input_order_under_uneven_work(threads):
    def slow_for_small(x):
        time.sleep(0.002 * (7 - x % 7))
        return x * x

    assert list(ordered_map(slow_for_small, range(50), threads)) == [x * x for x in range(50)]


def test_ordered_map_runs_at_most_a_bounded_window_ahead():
    started = []

    def record(x):
        started.append(x)
        return x

    results = ordered_map(record, iter(range(1000)), 3)
    assert next(results) == 0
    time.sleep(0.05)
    assert len(started) <= 2 * 3 + 1  # not the whole input


def test_prefetched_runs_ahead_in_another_thread_and_keeps_order():
    produced_by = []

    def source():
        for i in range(5):
            produced_by.append(threading.current_thread().name)
            yield i

    assert list(prefetched(source(), depth=2)) == [0, 1, 2, 3, 4]
    assert set(produced_by) == {"prefetch"}


def test_prefetched_raises_the_error_at_its_place():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(source()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_producer():
    produced = []

    def source():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = prefetched(source(), depth=1)
    assert next(stream) == 0
    stream.close()
    time.sleep(0.3)
    count = len(produced)
    time.sleep(0.2)
    assert len(produced) == count < 10


def test_threaded_batches_equal_sequential_batches(dataset, tmp_path):
    """Decoding a unit on several threads gives the same batches, rows and failures, in the same order."""
    import torch

    from pipeline.config import DecodeSettings, StorageSettings
    from pipeline.demo_data import make_archive
    from pipeline.features.preprocess import Preprocess
    from pipeline.io.batches import iter_batches
    from pipeline.io.sources import list_inputs, plan_units
    from pipeline.io.storage import Storage

    storage = Storage(StorageSettings())
    archive = make_archive(dataset, tmp_path / "archive")
    units, _ = plan_units(list_inputs(storage, str(archive)), 100)

    def run(threads):
        out = []
        for unit in units:
            for b in iter_batches(storage, unit, DecodeSettings(), Preprocess(32), 3, threads):
                items = [(i.source_uri, i.member_index) for i in b.items]
                out.append((items, [(f.source_uri, f.status) for f in b.failed], b.tensor))
        return out

    one, three = run(1), run(3)
    assert [x[:2] for x in one] == [x[:2] for x in three] and sum(len(x[1]) for x in one) >= 3
    assert all((a is None and b is None) or torch.equal(a, b) for (_, _, a), (_, _, b) in zip(one, three, strict=True))
