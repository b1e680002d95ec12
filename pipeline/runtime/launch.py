"""How the trainers start their Ray work: one task, or a gang of data-parallel actors placed together.

Every trainer goes through here, so a training failure reaches the driver the same way: a ``ValueError`` raised
in a task (bad data or settings, a message for the user) as itself, anything else as one ``RuntimeError`` line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayTaskError

from pipeline.config import RuntimeSettings
from pipeline.errors import SetupError
from pipeline.runtime.cluster import describe, fitting_workers, worker_resources


@contextmanager
def training_errors() -> Iterator[None]:
    """Re-raise a task's failure as the trainer's own error (see the module docstring)."""
    try:
        yield
    except RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ValueError) else None
        raise (cause or RuntimeError(f"training failed: {exc}")) from exc


def run_task(task: Callable[..., dict[str, Any]], settings: RuntimeSettings, local: bool, *args: Any
             ) -> dict[str, Any]:
    """Run ``task(*args)`` once as a Ray task with one worker's resources; adds its ``train_s``."""
    if local:
        fitting_workers(settings, 1, local)
    else:
        wait_for_gang(settings, 1)
    remote = ray.remote(task).options(num_cpus=settings.num_cpus_per_worker, num_gpus=settings.num_gpus_per_worker,
                                      max_retries=0)
    start = time.perf_counter()
    with training_errors():
        result = ray.get(remote.remote(*args))
    return result | {"startup_s": 0.0, "train_s": time.perf_counter() - start}


def start_gang(actor_class: type, settings: RuntimeSettings, local: bool, args: Callable[[int, int], Sequence[Any]]
               ) -> list[Any]:
    """Start as many ``actor_class`` workers as can run at once (all of ``settings.workers`` on a cluster);
    worker ``rank`` of ``world`` is built with ``args(rank, world)``."""
    world = fitting_workers(settings, settings.workers, local)
    if not local:
        wait_for_gang(settings, world)
    remote = ray.remote(actor_class).options(num_cpus=settings.num_cpus_per_worker,
                                             num_gpus=settings.num_gpus_per_worker)
    return [remote.remote(*args(rank, world)) for rank in range(world)]


def wait_for_gang(settings: RuntimeSettings, n: int) -> None:
    """Data-parallel training needs all ``n`` workers at once: wait for a placement group of
    them up to ``placement_timeout_s``, or fail naming what is missing."""
    from ray.util.placement_group import placement_group, remove_placement_group

    need = worker_resources(settings)
    group = placement_group([need] * n, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=settings.placement_timeout_s)
    except GetTimeoutError as exc:
        raise SetupError(f"runtime.workers={n}: data-parallel training needs {n} workers of {describe(need)} at "
                         f"once; none could be placed within runtime.placement_timeout_s="
                         f"{settings.placement_timeout_s:g} (cluster: {describe(ray.cluster_resources())})") from exc
    finally:
        remove_placement_group(group)
