"""Ray plumbing: starting or joining Ray, the worker pool that runs work units, and how trainers launch."""

from pipeline.runtime.cluster import (
    decode_threads,
    describe,
    fitting_workers,
    init_ray,
    setup_worker_threads,
    worker_resources,
)
from pipeline.runtime.launch import run_task, start_gang, training_errors, wait_for_gang
from pipeline.runtime.pool import WorkerPool, start_error_line

__all__ = ["WorkerPool", "decode_threads", "describe", "fitting_workers", "init_ray", "run_task",
           "setup_worker_threads", "start_error_line", "start_gang", "training_errors", "wait_for_gang",
           "worker_resources"]
