"""Where work ran: the Ray node and worker of each unit, written into every row and counted per node.

An operator looks for a bad GPU or a slow node in the results long after the cluster is gone, so a worker is
named by what outlives it: its host (the pod name on Kubernetes), process id and GPU ids.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass(frozen=True)
class Placement:
    node_id: str  # Ray's node id (hex), as in Ray's logs and state API
    worker: str  # "<host>:<pid>", and ":gpu<ids>" when the worker holds GPUs

    @property
    def host(self) -> str:
        return self.worker.split(":", 1)[0]


def here() -> Placement:
    """The placement of the calling Ray worker (an actor or a task)."""
    gpus = ray.get_gpu_ids()
    worker = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{','.join(str(g) for g in gpus)}" if gpus else "")
    return Placement(ray.get_runtime_context().get_node_id(), worker)


@dataclass
class NodeCount:
    host: str
    units: int = 0
    rows: int = 0
    seconds: float = 0.0  # summed wall time of this node's units
    first_unit_at: float | None = None  # unix time its first unit was handed out: when a late node joined in
    workers: set[str] = field(default_factory=set)


class NodeCounts:
    """Units, rows and seconds per node over a run."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeCount] = {}

    def add(self, where: Placement, started_at: float, seconds: float, rows: int) -> None:
        count = self._nodes.setdefault(where.node_id, NodeCount(where.host))
        count.units += 1
        count.rows += rows
        count.seconds += seconds
        count.first_unit_at = started_at if count.first_unit_at is None else min(count.first_unit_at, started_at)
        count.workers.add(where.worker)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """node_id -> its counts, for summary.json."""
        return {node: {"host": c.host, "units": c.units, "rows": c.rows, "seconds": round(c.seconds, 3),
                       "first_unit_at": c.first_unit_at, "workers": sorted(c.workers)}
                for node, c in sorted(self._nodes.items())}



def node_metrics(nodes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """MLflow metrics of :meth:`NodeCounts.as_dict`: ``n_nodes`` and
    ``node.<first 8 hex of the node id>.{units,rows,seconds}``."""
    out: dict[str, float] = {"n_nodes": float(len(nodes))}
    for node, count in nodes.items():
        out |= {f"node.{node[:8]}.{key}": float(count[key]) for key in ("units", "rows", "seconds")}
    return out
