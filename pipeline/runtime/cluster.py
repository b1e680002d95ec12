"""Connecting to Ray and sizing work to what it can place: the runtime every job starts with."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import ray

from pipeline.config import RuntimeSettings
from pipeline.errors import SetupError

log = logging.getLogger(__name__)


def init_ray(settings: RuntimeSettings) -> bool:
    """Connect to ``ray_address`` (or ``RAY_ADDRESS``), else start a local Ray runtime.

    Returns True when the runtime is local (this machine only), so the pool can be sized to it.
    """
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return not address
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    log.info("starting Ray (%s)", f"cluster at {address}" if address else "local runtime")
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", include_dashboard=False, **kwargs)  # never a `ray start` cluster found here
    except Exception as exc:  # noqa: BLE001
        raise SetupError(f"runtime.ray_address={address or '(local)'}: cannot start or reach Ray: {exc}") from exc
    return not address


def worker_resources(settings: RuntimeSettings) -> dict[str, float]:
    """What one worker asks Ray for."""
    need = {"CPU": settings.num_cpus_per_worker}
    if settings.num_gpus_per_worker > 0:
        need["GPU"] = settings.num_gpus_per_worker
    return need


def describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")) or "nothing"


def fitting_workers(settings: RuntimeSettings, wanted: int, local: bool) -> int:
    """How many workers to start: on a local runtime, as many of ``wanted`` as the machine holds
    (one line when fewer; :class:`SetupError` when none); on a cluster, ``wanted`` (it may grow)."""
    if not local:
        return wanted
    total = ray.cluster_resources()
    need = worker_resources(settings)
    fits = min(math.floor(total.get(name, 0.0) / amount + 1e-9) for name, amount in need.items())
    if fits <= 0:
        flag = "--num-gpus-per-worker" if "GPU" in need and total.get("GPU", 0) < need["GPU"] else \
            "--num-cpus-per-worker"
        raise SetupError(f"runtime: one worker needs {describe(need)} but this machine (local Ray) has "
                         f"{describe(total)}; lower {flag} or run on a cluster (--ray-address)")
    if fits < wanted:
        log.warning("runtime.workers=%d: this machine (local Ray, %s) fits %d workers of %s each; using %d",
                    wanted, describe(total), fits, describe(need), fits)
    return min(wanted, fits)


def decode_threads(settings: RuntimeSettings) -> int:
    """Threads a worker decodes with: its CPU share (a GPU worker takes the node's cores for this)."""
    return max(1, int(settings.num_cpus_per_worker))


def setup_worker_threads(settings: RuntimeSettings) -> str:
    """Size torch's thread pool to the worker's CPU share; return the torch device to use."""
    import torch

    torch.set_num_threads(max(1, int(settings.num_cpus_per_worker)))
    return "cuda" if settings.num_gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
