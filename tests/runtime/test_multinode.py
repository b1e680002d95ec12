"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, as Ray's own fault tests use):
nodes die, join and get SIGTERM while jobs run. Every scenario asserts exactly one row per input and no
duplicate row key, and prints its timings.

The head runs only the driver (0 CPUs); each worker node has 1 CPU, so it holds one worker, and a custom
resource naming it (``node_a``, ...), so the test can tell from a row's ``node_id`` which node scored it.
Node failure detection is shortened (Ray's defaults take about 15 s to declare a silent node dead).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from pipeline.config import FitConfig, ScoreConfig
from pipeline.demo_data import make_dataset
from pipeline.detectors.patchcore.fit import run_fit
from pipeline.score import run_score
from tests.helpers.faults import assert_complete, loose_keys, wait_for
from tests.helpers.runs import small_patchcore

pytestmark = pytest.mark.multinode

FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                          "health_check_failure_threshold": 3}
N_IMAGES = 120
JOIN_COPIES = 12  # the join scenario scores each image this many times (under other names): its run must outlast
# a joining node's start (add_node, then its worker imports torch and loads the model)


@dataclass
class Harness:
    cluster: Cluster
    names: dict[str, str] = field(default_factory=dict)  # node_id -> node_a, node_b, ...
    handles: dict[str, Any] = field(default_factory=dict)  # name -> the cluster's node handle

    def add(self, name: str) -> str:
        """Start a worker node with 1 CPU and the resource ``name``; return its node id."""
        handle = self.cluster.add_node(num_cpus=1, resources={name: 1})
        node_id = handle.node_id
        self.names[node_id], self.handles[name] = name, handle
        return node_id

    def kill(self, name: str) -> None:
        """The node dies: its raylet, object store and workers are SIGKILLed at once."""
        handle = self.handles.pop(name)
        raylet = psutil.Process(handle.all_processes["raylet"][0].process.pid)
        for proc in [*raylet.children(recursive=True), raylet]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.cluster.remove_node(handle, allow_graceful=False)

    def sigterm(self, name: str) -> None:
        """What a preempted spot node's Ray gets: SIGTERM to the raylet (it stops its workers and leaves)."""
        self.handles[name].all_processes["raylet"][0].process.send_signal(signal.SIGTERM)

    def remove(self, name: str) -> None:
        self.cluster.remove_node(self.handles.pop(name), allow_graceful=False)

    def alive(self) -> list[str]:
        return sorted(self.names.get(n["NodeID"], "head") for n in ray.nodes() if n["Alive"])


@pytest.fixture(scope="module")
def harness():
    session_ray = ray.is_initialized()
    if session_ray:  # one Ray at a time on this machine: the session's local runtime makes way
        ray.shutdown()
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION})
    h = Harness(cluster)
    h.add("node_a")
    h.add("node_b")
    ray.init(address=cluster.address, logging_level="WARNING")
    cluster.wait_for_nodes()
    print(f"\ncluster: head + {h.alive()} up in {time.monotonic() - t0:.1f} s")
    try:
        yield h
    finally:
        ray.shutdown()
        cluster.shutdown()
        if session_ray:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # as conftest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    made = make_dataset(root / "made", n_train=16, n_test_good=N_IMAGES // 2, n_test_defect=N_IMAGES // 2, size=64)
    images = root / "images"
    images.mkdir()
    many = root / "many"
    many.mkdir()
    for sub in ("good", "defect"):
        for src in sorted((made / "test" / sub).glob("*.png")):
            shutil.copyfile(src, images / f"{sub}-{src.name}")
            for copy in range(JOIN_COPIES):
                shutil.copyfile(src, many / f"{copy}-{sub}-{src.name}")
    return root


def fit_cfg(harness: Harness, data: Path, bank: Path) -> FitConfig:
    return FitConfig.model_validate({
        "normal": str(data / "made" / "train" / "good"), "bank": str(bank),
        "patchcore": small_patchcore(images_per_shard=2),
        "runtime": {"workers": 2, "ray_address": harness.cluster.address}, "tracking": {"enabled": False}})


@pytest.fixture(scope="module")
def fitted(harness, data) -> dict[str, Any]:
    """The undisturbed fit on nodes a and b: the bank every score run uses, and the fingerprint to match."""
    t0 = time.monotonic()
    summary = run_fit(fit_cfg(harness, data, data / "bank"))
    summary["wall_s"] = time.monotonic() - t0
    print(f"fit, undisturbed: {summary['n_feature_shards']} shards on {len(summary['nodes'])} nodes, "
          f"bank {summary['fingerprint'][:19]}, {summary['wall_s']:.1f} s")
    return summary


def score_cfg(harness: Harness, data: Path, run: str, workers: int, images: str = "images", **runtime: Any
              ) -> ScoreConfig:
    return ScoreConfig.model_validate({
        "input": str(data / images), "bank": str(data / "bank"), "output": str(data / "out"), "run_name": run,
        "images_per_unit": 2, "batch_size": 2, "heatmaps": "none", "tracking": {"enabled": False},
        "runtime": {"workers": workers, "ray_address": harness.cluster.address, "placement_timeout_s": 60}
        | runtime})


def rows_by_node(harness: Harness, rows: list[dict[str, Any]]) -> Counter:
    return Counter(harness.names.get(r["node_id"], r["node_id"]) for r in rows)


def parts_from(run_dir: Path, harness: Harness, name: str) -> int:
    """Parts written so far whose rows were scored on node ``name``."""
    count = 0
    for path in sorted((run_dir / "scores").glob("part-*.parquet")):
        try:
            rows = read_parts_file(path)
        except OSError:
            continue
        count += any(harness.names.get(r["node_id"]) == name for r in rows)
    return count


def read_parts_file(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["node_id"]).to_pylist()


class Job(threading.Thread):
    """A job run in the background, so that the test thread (the only one that may start Ray nodes) can
    inject the fault while it runs."""

    def __init__(self, run, cfg):
        super().__init__(daemon=True)
        self._run, self._cfg, self.summary, self.error = run, cfg, None, None
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.start()

    def run(self) -> None:
        try:
            self.summary = self._run(self._cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self.error = exc
        self.wall_s = time.monotonic() - self.t0

    def running(self) -> bool:
        if not self.is_alive() and self.error is not None:
            raise self.error
        assert self.is_alive(), "the job ended before the fault"
        return True

    def result(self, timeout: float = 300) -> dict[str, Any]:
        self.join(timeout)
        assert not self.is_alive(), f"the job is still running after {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.summary


@pytest.fixture(scope="module")
def baseline(harness, data, fitted) -> dict[str, Any]:
    """The same score run without a fault, on nodes a and b: the wall time each scenario is compared with."""
    t0 = time.monotonic()
    summary = run_score(score_cfg(harness, data, "baseline", workers=2))
    summary["wall_s"] = time.monotonic() - t0
    return summary


def test_units_spread_over_the_nodes(harness, data, baseline):
    rows = assert_complete(baseline["output"], loose_keys(data / "images"))
    per_node = rows_by_node(harness, rows)
    assert set(per_node) == {"node_a", "node_b"}, per_node
    assert all(r["worker"] and r["node_id"] for r in rows)
    nodes = baseline["nodes"]
    assert {harness.names[n] for n in nodes} == {"node_a", "node_b"}
    assert sum(c["rows"] for c in nodes.values()) == N_IMAGES
    assert sum(c["units"] for c in nodes.values()) == baseline["n_units"]
    assert all(c["rows"] == per_node[harness.names[n]] and c["seconds"] > 0 for n, c in nodes.items())
    print(f"spread: {dict(per_node)} rows per node, {baseline['n_units']} units, {baseline['wall_s']:.1f} s")


def test_a_node_that_dies_mid_run_loses_nothing(harness, data, baseline, caplog):
    harness.add("node_c")
    run_dir = data / "out" / "killed"
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        job = Job(run_score, score_cfg(harness, data, "killed", workers=3))
        wait_for(lambda: job.running() and parts_from(run_dir, harness, "node_c"), 120, "a part scored on node_c")
        killed_at = time.monotonic() - job.t0
        harness.kill("node_c")
        summary = job.result()
    rows = assert_complete(run_dir, loose_keys(data / "images"))
    assert all(r["status"] == "ok" for r in rows) and summary["failed_units"] == []
    requeued = [r.getMessage() for r in caplog.records if "goes back to the queue" in r.getMessage()]
    # the pool names the node when Ray already reports it dead, else the lost connection: either way the unit is back
    assert requeued and all("with its node" in line or "Socket closed" in line or "unavailable" in line
                            for line in requeued), requeued
    per_node = rows_by_node(harness, rows)
    assert per_node["node_a"] and per_node["node_b"] and per_node["node_c"]
    print(f"node_c SIGKILLed (raylet, object store, workers) {killed_at:.1f} s into the run: "
          f"{len(rows)} rows / {N_IMAGES} inputs, 0 duplicates, {len(requeued)} units back in the queue, "
          f"rows per node {dict(per_node)}; {job.wall_s:.1f} s vs {baseline['wall_s']:.1f} s undisturbed")


def test_a_node_that_joins_mid_run_gets_units(harness, data, baseline, caplog):
    run_dir = data / "out" / "joined"
    with caplog.at_level(logging.INFO, logger="pipeline.runtime"):   # 3 workers, room for 2 until d joins
        job = Job(run_score, score_cfg(harness, data, "joined", workers=3, images="many",
                                                 placement_timeout_s=3))
        wait_for(lambda: job.running() and [r for r in caplog.records if "could not be placed" in r.getMessage()],
                 120, "the pool saying a worker could not be placed")
        asked_at = time.time()
        harness.add("node_d")
        joined_at = time.time()
        summary = job.result()
    rows = assert_complete(run_dir, loose_keys(data / "many"))
    assert summary["failed_units"] == []
    waited = [r.getMessage() for r in caplog.records if "could not be placed" in r.getMessage()]
    assert len(waited) == 1 and "the rest start when the cluster has room" in waited[0], waited
    per_node = rows_by_node(harness, rows)
    assert per_node["node_d"] > 0, per_node
    node_d = next(c for n, c in summary["nodes"].items() if harness.names.get(n) == "node_d")
    first_unit_s = node_d["first_unit_at"] - joined_at
    assert first_unit_s > 0
    started = [r.getMessage() for r in caplog.records if "joined on node" in r.getMessage()]
    print(f"node_d added {asked_at - job.t0_wall:.1f} s into the run (add_node took {joined_at - asked_at:.1f} s); "
          f"its first unit {first_unit_s:.1f} s after it joined ({started}); "
          f"{len(rows)} rows / {N_IMAGES * JOIN_COPIES} inputs, 0 duplicates, rows per node {dict(per_node)}; "
          f"{job.wall_s:.1f} s")


def test_a_node_that_gets_sigterm_returns_its_units(harness, data, baseline, caplog):
    run_dir = data / "out" / "sigterm"
    if "node_d" not in harness.handles:
        harness.add("node_d")
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        job = Job(run_score, score_cfg(harness, data, "sigterm", workers=3))
        wait_for(lambda: job.running() and parts_from(run_dir, harness, "node_d"), 120, "a part scored on node_d")
        termed_at = time.time()
        harness.sigterm("node_d")
        summary = job.result()
    harness.remove("node_d")
    rows = assert_complete(run_dir, loose_keys(data / "images"))
    assert all(r["status"] == "ok" for r in rows) and summary["failed_units"] == []
    returned = [r for r in caplog.records if "goes back to the queue" in r.getMessage()]
    assert returned and all("with its node" in r.getMessage() for r in returned)
    grace_s = max(r.created for r in returned) - termed_at
    assert grace_s < 30, f"node_d's units came back {grace_s:.1f} s after SIGTERM"   # Kubernetes' default grace
    print(f"node_d SIGTERMed: its {len(returned)} in-flight units back in the queue {grace_s:.1f} s later; "
          f"{len(rows)} rows / {N_IMAGES} inputs, 0 duplicates, rows per node {dict(rows_by_node(harness, rows))}; "
          f"{job.wall_s:.1f} s vs {baseline['wall_s']:.1f} s undisturbed")


def test_fit_losing_a_node_in_round_one_gives_the_same_bank(harness, data, fitted, caplog):
    harness.add("node_e")

    def extracting() -> str | None:
        """A node whose worker is embedding and reducing a shard right now."""
        for name, handle in harness.handles.items():
            raylet = psutil.Process(handle.all_processes["raylet"][0].process.pid)
            for proc in raylet.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "extract_and_reduce" in " ".join(proc.cmdline()):
                        return name
        return None

    cfg = fit_cfg(harness, data, data / "bank-disturbed")
    cfg.runtime.workers = 3
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        job = Job(run_fit, cfg)
        victim = wait_for(lambda: job.running() and extracting(), 120, "a node extracting a shard", interval=0.02)
        lost_at = time.monotonic() - job.t0
        harness.kill(victim)
        summary = job.result()
    requeued = [r.getMessage() for r in caplog.records if "goes back to the queue" in r.getMessage()]
    # the pool names the node when Ray already reports it dead, else the lost connection: either way the unit is back
    assert requeued and all("with its node" in line or "Socket closed" in line or "unavailable" in line
                            for line in requeued), requeued
    assert summary["n_train_images"] == fitted["n_train_images"]
    assert summary["fingerprint"] == fitted["fingerprint"]
    print(f"fit: {victim} SIGKILLed {lost_at:.1f} s in, during round 1: {len(requeued)} shards recomputed "
          f"elsewhere, same bank {summary['fingerprint'][:19]}; {job.wall_s:.1f} s vs {fitted['wall_s']:.1f} s "
          f"undisturbed")
