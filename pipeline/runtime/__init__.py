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
from pipeline.runtime.placement import NodeCounts, Placement, here, node_metrics
from pipeline.runtime.pool import Outcome, WorkerPool, start_error_line

__all__ = ["NodeCounts", "Outcome", "Placement", "WorkerPool", "decode_threads", "describe", "fitting_workers",
           "here", "init_ray", "node_metrics", "run_task", "setup_worker_threads", "start_error_line", "start_gang",
           "training_errors", "wait_for_gang", "worker_resources"]
