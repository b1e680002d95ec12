"""Ray plumbing: connect or start Ray, and run work units on a pool of long-lived actors.

Actors load their model once (the fixed cost is paid per worker, not per unit). Ray restarts
an actor that dies and retries its in-flight call (``max_restarts``/``max_task_retries``);
when retries run out the unit is reported as failed, the actor replaced, and the rest go on.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from pipeline.config import RuntimeSettings

log = logging.getLogger(__name__)


def init_ray(settings: RuntimeSettings) -> None:
    """Connect to ``ray_address`` (or ``RAY_ADDRESS``), else start a local Ray runtime."""
    if ray.is_initialized():
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"runtime.ray_address={address or '(local)'}: cannot start or reach Ray: {exc}") from exc


class WorkerPool:
    """A fixed number of actors of one class, fed work units until none are left."""

    def __init__(self, actor_class: type, init_args: Sequence[Any], settings: RuntimeSettings, size: int):
        self._remote = ray.remote(actor_class).options(
            num_cpus=settings.num_cpus_per_worker,
            num_gpus=settings.num_gpus_per_worker,
            max_restarts=settings.max_restarts,
            max_task_retries=settings.max_restarts,
        )
        self._init_args = tuple(init_args)
        self.actors = [self._remote.remote(*self._init_args) for _ in range(size)]

    def call(self, index: int, method: str, *args: Any) -> Any:
        """Call ``method`` on one actor and wait for the result."""
        return ray.get(getattr(self.actors[index], method).remote(*args))

    def map(self, method: str, units: Sequence[Any], label: str, extra: Callable[[Any], tuple] = lambda u: ()
            ) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield ``(unit, result, None)`` or ``(unit, None, error)`` in completion order."""
        pending = deque(units)
        inflight: dict[ray.ObjectRef, tuple[int, Any]] = {}

        def submit(slot: int) -> None:
            if pending:
                unit = pending.popleft()
                ref = getattr(self.actors[slot], method).remote(unit, *extra(unit))
                inflight[ref] = (slot, unit)

        for slot in range(len(self.actors)):
            submit(slot)
        with tqdm(total=len(units), desc=label, unit="unit", disable=None) as bar:
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                slot, unit = inflight.pop(ref)
                try:
                    yield unit, ray.get(ref), None
                except RayActorError as exc:
                    log.warning("worker for %s died after retries: %s; replacing it", unit, exc)
                    self.actors[slot] = self._remote.remote(*self._init_args)
                    yield unit, None, exc
                except RayTaskError as exc:
                    yield unit, None, exc
                bar.update(1)
                submit(slot)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def setup_worker_threads(settings: RuntimeSettings) -> str:
    """Size torch's thread pool to the worker's CPU share; return the torch device to use."""
    import torch

    torch.set_num_threads(max(1, int(settings.num_cpus_per_worker)))
    return "cuda" if settings.num_gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
