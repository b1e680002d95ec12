"""Ray plumbing: run work units on long-lived actors that come and go with the cluster's nodes, without
ever waiting silently.

Actors load their model once (the fixed cost is paid per worker, not per unit). A unit goes to whichever
actor has started and is free, never to a slot whose actor does not exist yet. The pool is elastic: it
starts as soon as one worker is ready; workers that cannot be placed yet stay queued in Ray and join when
the cluster grows (an autoscaler sees them as demand), up to the size asked for. ``placement_timeout_s``
bounds only the wait for a place when there is no worker at all: with none running, starting or placed by
then, the job fails naming the resources one worker needs. (A placed worker's model loading is not
placement; one that takes longer than that is reported, once.)

The pool replaces lost workers itself (Ray restarts nothing): when a worker dies, its unit goes back to
the queue and a new worker is asked for. A worker lost with its node (the node died or was preempted)
costs the unit nothing; a worker that died on a node that is still up counts against the unit, which
fails (error rows, no marker) after ``max_restarts`` such retries, so an input that kills its worker
cannot loop forever. A unit still running after ``unit_timeout_s`` fails and its worker is replaced.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.config import RuntimeSettings
from pipeline.errors import SetupError
from pipeline.runtime.cluster import describe, worker_resources
from pipeline.runtime.placement import Placement, here

log = logging.getLogger(__name__)


def _guarded(actor_class: type) -> type:
    """``actor_class`` whose constructor failure is kept and raised by ``ready()`` as a
    :class:`SetupError` (one clean line for the driver, and no retries of a deterministic failure);
    ``ready()`` also says where the actor runs."""

    class Guarded(actor_class):
        def __init__(self, *args: Any):
            self._start_error = None
            try:
                super().__init__(*args)
            except Exception as exc:  # noqa: BLE001 - reported by ready()
                log.debug("worker start-up failed", exc_info=True)
                self._start_error = f"{type(exc).__name__}: {exc}"

        def ready(self) -> tuple[Any, Placement]:
            if self._start_error:
                raise SetupError(self._start_error)
            return super().ready(), here()

    Guarded.__name__ = Guarded.__qualname__ = actor_class.__name__
    return Guarded


def start_error_line(exc: BaseException) -> str:
    """The one line that says why a unit or an actor failed (the original exception, not Ray's wrapping)."""
    cause = getattr(exc, "cause", None)
    while isinstance(cause, RayTaskError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if isinstance(cause, SetupError):
        return str(cause).splitlines()[0][:500]
    if isinstance(cause, BaseException) and not isinstance(cause, (RayActorError, RayTaskError)):
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):  # Ray's text ends with the constructor's "Type: message"
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return line[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]


def node_is_alive(node_id: str) -> bool:
    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())


def actor_placed(actor: Any) -> bool:
    """Whether Ray gave the actor a worker process on some node (its constructor may still be running).
    Ray has no public call for this without its dashboard; the GCS actor table shows a pid once placed."""
    try:
        info = ray._private.state.state.actor_table(actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - unknown counts as not placed yet
        return False
    return bool(info and info.get("Pid"))


@dataclass
class _Worker:
    actor: Any
    asked_at: float  # monotonic time the actor was asked for
    placed_at: float | None = None  # when Ray was seen to have placed it (its constructor then runs)
    placement: Placement | None = None  # known once it started
    told_slow: bool = False


@dataclass
class _Running:
    worker: _Worker
    unit: Any
    retries: int  # deaths of its workers on nodes that stayed up
    started: float  # monotonic
    started_at: float  # unix time


class Outcome(NamedTuple):
    """One finished unit: its result or its error, and where and when it ran."""

    unit: Any
    result: Any
    error: BaseException | None
    placement: Placement | None
    started_at: float
    seconds: float


class WorkerPool:
    """Up to ``size`` actors of one class, fed work units until none are left.

    ``start`` asks Ray for the actors and returns at once; :meth:`wait_ready` returns when at least
    one has started (its constructor ran) and raises :class:`SetupError` when an actor's
    constructor fails or none can be placed in time.
    """

    def __init__(self, actor_class: type, init_args: Sequence[Any], settings: RuntimeSettings, size: int):
        self._remote = ray.remote(_guarded(actor_class)).options(
            num_cpus=settings.num_cpus_per_worker, num_gpus=settings.num_gpus_per_worker,
            max_restarts=0, max_task_retries=0)  # the pool replaces workers and re-queues their units
        self._init_args = tuple(init_args)
        self._settings = settings
        self._name = actor_class.__name__
        self.size = size
        self.ready: list[_Worker] = []  # started and free
        self._starting: dict[ray.ObjectRef, _Worker] = {}
        self._all: list[_Worker] = []
        self.ready_results: list[Any] = []  # what each actor's ``ready()`` returned
        self._n_busy = 0  # actors running a unit
        self._lost_at_start = 0
        self._told_unplaced = False
        self._next_placement_check = 0.0
        for _ in range(size):
            self._spawn()
        log.info("starting %d %s workers (%s each)", size, self._name, describe(worker_resources(settings)))

    def _spawn(self) -> None:
        worker = _Worker(self._remote.remote(*self._init_args), time.monotonic())
        self._all.append(worker)
        self._starting[worker.actor.ready.remote()] = worker

    def _discard(self, worker: _Worker) -> None:
        ray.kill(worker.actor, no_restart=True)
        self._all = [w for w in self._all if w is not worker]

    def _collect_started(self, timeout: float) -> None:
        """Move actors whose ``ready()`` returned into :attr:`ready`; replace those that died starting."""
        if self._starting:
            done, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=max(0.0, timeout))
            for ref in done:
                worker = self._starting.pop(ref)
                try:
                    result, worker.placement = ray.get(ref)
                except RayTaskError as exc:  # its constructor failed: the same would happen again
                    raise SetupError(f"{self._name} could not start: {start_error_line(exc)}") from exc
                except RayActorError as exc:  # died before it started (its node went away, or it was killed)
                    self._replace_lost_at_start(worker, exc)
                    continue
                self.ready_results.append(result)
                self.ready.append(worker)
                if self._n_busy:  # a worker that joins a running pool: a node joined, or a replacement
                    now = time.monotonic()
                    placed = f"placed {now - worker.placed_at:.1f} s ago, " if worker.placed_at is not None else ""
                    log.info("%s worker %s joined on node %s (%sasked for %.1f s ago)", self._name,
                             worker.placement.worker, worker.placement.node_id[:8], placed, now - worker.asked_at)
        self._check_placement()

    def _check_placement(self) -> None:
        """At most once a second: fail when no worker is running, starting or placed and one has waited
        ``placement_timeout_s`` for a place; otherwise say once that some wait, and go on."""
        now = time.monotonic()
        if not self._starting or now < self._next_placement_check:
            return
        self._next_placement_check = now + 1.0
        limit = self._settings.placement_timeout_s
        unplaced = []
        for worker in self._starting.values():
            if worker.placed_at is None and actor_placed(worker.actor):
                worker.placed_at = now
            if worker.placed_at is None:
                if now - worker.asked_at > limit:
                    unplaced.append(worker)
            elif now - worker.placed_at > limit and not worker.told_slow:
                worker.told_slow = True
                log.warning("a %s worker placed %.0f s ago is still starting (loading its model)", self._name,
                            now - worker.placed_at)
        if not unplaced:
            return
        message = (f"{len(unplaced)} {self._name} workers could not be placed within runtime.placement_timeout_s="
                   f"{limit:g}: each needs {describe(worker_resources(self._settings))}; the cluster has "
                   f"{describe(ray.available_resources())} free of {describe(ray.cluster_resources())}")
        if not self.ready and not self._n_busy and all(w.placed_at is None for w in self._starting.values()):
            for worker in self._starting.values():
                self._discard(worker)
            self._starting = {}
            raise SetupError(message)
        if not self._told_unplaced:
            self._told_unplaced = True
            placed = len(self.ready) + self._n_busy + sum(w.placed_at is not None for w in self._starting.values())
            log.warning("%s; going on with the %d placed, the rest start when the cluster has room", message, placed)

    def _replace_lost_at_start(self, worker: _Worker, exc: BaseException) -> None:
        self._discard(worker)
        self._lost_at_start += 1
        if self._lost_at_start > self.size * (self._settings.max_restarts + 1):
            raise SetupError(f"{self._lost_at_start} {self._name} workers died while starting; the last: "
                             f"{start_error_line(exc)}")
        log.warning("a %s worker died while starting (%s); asking for another", self._name, start_error_line(exc))
        self._spawn()

    def wait_ready(self) -> list[Any]:
        """Block until at least one actor has started; return the ``ready()`` results so far."""
        start = time.monotonic()
        while not self.ready:
            self._collect_started(timeout=1.0)
        self._collect_started(timeout=0.0)
        log.info("%d of %d %s workers ready after %.1f s", len(self.ready), self.size, self._name,
                 time.monotonic() - start)
        return self.ready_results

    def _lost(self, job: _Running, exc: RayActorError) -> bool:
        """A worker died running ``job``: replace it; True when the unit should go back to the queue."""
        self._discard(job.worker)
        self._spawn()
        node = job.worker.placement.node_id if job.worker.placement else None
        with_node = node is not None and not node_is_alive(node)
        retries = job.retries + (0 if with_node else 1)
        if retries > self._settings.max_restarts:
            log.warning("worker for %s died (%s), %d times on nodes that stayed up; the unit fails", job.unit,
                        start_error_line(exc), retries)
            return False
        log.warning("worker %s for %s lost %s; the unit goes back to the queue",
                    job.worker.placement.worker if job.worker.placement else "?", job.unit,
                    f"with its node {node}" if with_node else f"({start_error_line(exc)})")
        job.retries = retries
        return True

    def call_any(self, method: str, *args: Any) -> Any:
        """Call ``method`` on one started actor and wait for the result (on another one if it is lost)."""
        for outcome in self.map(method, [args], call=lambda unit: unit):
            if outcome.error is not None:
                raise outcome.error
            return outcome.result
        raise AssertionError("unreachable: map yields one outcome per unit")

    def map(self, method: str, units: Sequence[Any], extra: Callable[[Any], tuple] = lambda u: (),
            call: Callable[[Any], tuple] | None = None) -> Iterator[Outcome]:
        """Yield one :class:`Outcome` per unit, in completion order. ``method`` gets ``(unit, *extra(unit))``,
        or ``call(unit)`` as its arguments when given."""
        arguments = call or (lambda unit: (unit, *extra(unit)))
        pending: deque[tuple[Any, int]] = deque((unit, 0) for unit in units)
        running: dict[ray.ObjectRef, _Running] = {}
        limit = self._settings.unit_timeout_s
        while pending or running:
            while pending and self.ready:
                worker, (unit, retries) = self.ready.pop(), pending.popleft()
                ref = getattr(worker.actor, method).remote(*arguments(unit))
                running[ref] = _Running(worker, unit, retries, time.monotonic(), time.time())
            self._n_busy = len(running)
            if not running:  # units wait for an actor to start
                self._collect_started(timeout=1.0)
                continue
            next_deadline = min(r.started for r in running.values()) + limit - time.monotonic()
            done, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, min(1.0, next_deadline)))
            for ref in done:
                job = running.pop(ref)
                seconds = time.monotonic() - job.started
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    if self._lost(job, exc):
                        pending.appendleft((job.unit, job.retries))
                    else:
                        yield Outcome(job.unit, None, exc, job.worker.placement, job.started_at, seconds)
                    continue
                except RayTaskError as exc:
                    self.ready.append(job.worker)
                    yield Outcome(job.unit, None, exc, job.worker.placement, job.started_at, seconds)
                    continue
                self.ready.append(job.worker)
                yield Outcome(job.unit, result, None, job.worker.placement, job.started_at, seconds)
            for ref, job in list(running.items()):
                if time.monotonic() - job.started > limit:
                    running.pop(ref)
                    self._discard(job.worker)
                    self._spawn()
                    yield Outcome(job.unit, None, TimeoutError(f"unit ran past runtime.unit_timeout_s={limit:g}"),
                                  job.worker.placement, job.started_at, time.monotonic() - job.started)
            self._n_busy = len(running)
            self._collect_started(timeout=0.0)

    def shutdown(self) -> None:
        for worker in self._all:
            ray.kill(worker.actor)
        self._all, self.ready, self._starting = [], [], {}
