"""Ray plumbing: connect or start Ray, size the worker pool to what can be placed, and run work
units on long-lived actors without ever waiting silently.

Actors load their model once (the fixed cost is paid per worker, not per unit). A unit goes to
whichever actor has started and is free, never to a slot whose actor does not exist yet. Ray
restarts an actor that dies and retries its in-flight call (``max_restarts``/``max_task_retries``);
when retries run out the unit is reported as failed, the actor replaced, and the rest go on. A
unit that runs past ``unit_timeout_s`` is failed and its actor replaced (a read that blocks
cannot hold the job). On a local runtime the pool is sized to the machine; on a cluster, actors
that cannot be placed within ``placement_timeout_s`` are given up, with one line naming the
resources they needed (and the job fails if none started).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.config import RuntimeSettings
from pipeline.errors import SetupError
from pipeline.runtime.cluster import describe, worker_resources

log = logging.getLogger(__name__)


def _guarded(actor_class: type) -> type:
    """``actor_class`` whose constructor failure is kept and raised by ``ready()`` as a
    :class:`SetupError`: one clean line for the driver, and no restarts of a deterministic failure."""

    class Guarded(actor_class):
        def __init__(self, *args: Any):
            self._start_error = None
            try:
                super().__init__(*args)
            except Exception as exc:  # noqa: BLE001 - reported by ready()
                log.debug("worker start-up failed", exc_info=True)
                self._start_error = f"{type(exc).__name__}: {exc}"

        def ready(self) -> Any:
            if self._start_error:
                raise SetupError(self._start_error)
            return super().ready()

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


@dataclass
class _Running:
    actor: Any
    unit: Any
    started: float


class WorkerPool:
    """Actors of one class, fed work units until none are left.

    ``start`` creates the actors and returns at once; :meth:`wait_ready` returns when at least
    one has started (its constructor ran) and raises :class:`SetupError` when an actor's
    constructor fails or none can be placed in time.
    """

    def __init__(self, actor_class: type, init_args: Sequence[Any], settings: RuntimeSettings, size: int):
        self._remote = ray.remote(_guarded(actor_class)).options(
            num_cpus=settings.num_cpus_per_worker,
            num_gpus=settings.num_gpus_per_worker,
            max_restarts=settings.max_restarts,
            max_task_retries=settings.max_restarts,
        )
        self._init_args = tuple(init_args)
        self._settings = settings
        self._name = actor_class.__name__
        self.size = size
        self.ready: list[Any] = []  # started and free
        self._starting: dict[ray.ObjectRef, tuple[Any, float]] = {}
        self._all: list[Any] = []
        self.ready_results: list[Any] = []  # what each actor's ``ready()`` returned
        self._n_busy = 0  # actors running a unit
        for _ in range(size):
            self._spawn()
        log.info("starting %d %s workers (%s each)", size, self._name, describe(worker_resources(settings)))

    def _spawn(self) -> None:
        actor = self._remote.remote(*self._init_args)
        self._all.append(actor)
        self._starting[actor.ready.remote()] = (actor, time.monotonic())

    def _collect_started(self, timeout: float) -> None:
        """Move actors whose ``ready()`` returned into :attr:`ready`; give up on overdue ones."""
        if self._starting:
            done, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=max(0.0, timeout))
            for ref in done:
                actor, _ = self._starting.pop(ref)
                try:
                    self.ready_results.append(ray.get(ref))
                except (RayActorError, RayTaskError) as exc:
                    raise SetupError(f"{self._name} could not start: {start_error_line(exc)}") from exc
                self.ready.append(actor)
        overdue = [ref for ref, (_, t) in self._starting.items()
                   if time.monotonic() - t > self._settings.placement_timeout_s]
        if not overdue:
            return
        for ref in overdue:
            ray.kill(self._starting.pop(ref)[0], no_restart=True)
        message = (f"{len(overdue)} {self._name} workers could not be placed within runtime.placement_timeout_s="
                   f"{self._settings.placement_timeout_s:g}: each needs {describe(worker_resources(self._settings))}"
                   f"; the cluster has {describe(ray.available_resources())} free of "
                   f"{describe(ray.cluster_resources())}")
        if not self.ready and not self._n_busy:
            raise SetupError(message)
        log.warning("%s; going on with %d", message, len(self.ready) + self._n_busy)

    def wait_ready(self) -> list[Any]:
        """Block until at least one actor has started; return the ``ready()`` results so far."""
        start = time.monotonic()
        while not self.ready:
            self._collect_started(timeout=1.0)
        self._collect_started(timeout=0.0)
        log.info("%d of %d %s workers ready after %.1f s", len(self.ready), self.size, self._name,
                 time.monotonic() - start)
        return self.ready_results

    def call_any(self, method: str, *args: Any) -> Any:
        """Call ``method`` on one started actor and wait for the result."""
        if not self.ready:
            self.wait_ready()
        return ray.get(getattr(self.ready[0], method).remote(*args))

    def map(self, method: str, units: Sequence[Any], extra: Callable[[Any], tuple] = lambda u: ()
            ) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield ``(unit, result, None)`` or ``(unit, None, error)`` in completion order."""
        pending = deque(units)
        running: dict[ray.ObjectRef, _Running] = {}
        limit = self._settings.unit_timeout_s
        while pending or running:
            while pending and self.ready:
                actor, unit = self.ready.pop(), pending.popleft()
                running[getattr(actor, method).remote(unit, *extra(unit))] = _Running(actor, unit, time.monotonic())
            self._n_busy = len(running)
            if not running:  # units wait for an actor to start
                self._collect_started(timeout=1.0)
                continue
            now = time.monotonic()
            next_deadline = min(r.started for r in running.values()) + limit - now
            wait_s = max(0.0, min(1.0, next_deadline))
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            for ref in done:
                job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    log.warning("worker for %s died after retries: %s; replacing it", job.unit, start_error_line(exc))
                    self._spawn()
                    yield job.unit, None, exc
                    continue
                except RayTaskError as exc:
                    self.ready.append(job.actor)
                    yield job.unit, None, exc
                    continue
                self.ready.append(job.actor)
                yield job.unit, result, None
            for ref, job in list(running.items()):
                if time.monotonic() - job.started > limit:
                    running.pop(ref)
                    ray.kill(job.actor, no_restart=True)
                    self._spawn()
                    yield job.unit, None, TimeoutError(f"unit ran past runtime.unit_timeout_s={limit:g}")
            self._n_busy = len(running)
            self._collect_started(timeout=0.0)

    def shutdown(self) -> None:
        for actor in self._all:
            ray.kill(actor)
        self._all, self.ready, self._starting = [], [], {}
