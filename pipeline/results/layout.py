"""Every name under a run's folder ``{output}/{run_id}/``, in one place::

    run.json                    the run's manifest (input, model, bucket count) for resume
    scores/part-{unit}.parquet  one part per work unit, every input of the unit, one row each
    _markers/{unit}.json        written after the part: the unit is complete (with its counts)
    heatmaps/{unit}/{key}.png   colour overlays, referenced by the rows' ``heatmap_uri``
    heatmaps/{unit}/{key}.npy   raw maps (float16, ``--maps``), referenced by ``map_uri``
    summary.json                counts and timings of the whole run
    videos.json                 per-video peaks and anomalous segments (runs with videos)
    tracking.json               the MLflow run that holds this run
    evaluation.json             metrics from ``jobs.evaluate``
    evaluation/report.html      the evaluation report
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.io.storage import join


@dataclass(frozen=True)
class RunLayout:
    root: str  # ``{output}/{run_id}``

    @classmethod
    def of(cls, output: str, run_id: str) -> RunLayout:
        return cls(join(output, run_id))

    @property
    def manifest(self) -> str:
        return join(self.root, "run.json")

    @property
    def scores(self) -> str:
        return join(self.root, "scores")

    def part(self, unit_id: str) -> str:
        return join(self.scores, f"part-{unit_id}.parquet")

    @property
    def markers(self) -> str:
        return join(self.root, "_markers")

    def marker(self, unit_id: str) -> str:
        return join(self.markers, f"{unit_id}.json")

    def heatmap(self, unit_id: str, key: str, suffix: str) -> str:
        """An overlay (``.png``) or raw map (``.npy``) of the row with heatmap key ``key``."""
        return join(self.root, "heatmaps", unit_id, key + suffix)

    @property
    def summary(self) -> str:
        return join(self.root, "summary.json")

    @property
    def videos(self) -> str:
        return join(self.root, "videos.json")

    @property
    def tracking(self) -> str:
        return join(self.root, "tracking.json")

    @property
    def evaluation(self) -> str:
        return join(self.root, "evaluation.json")

    @property
    def report(self) -> str:
        return join(self.root, "evaluation", "report.html")


def heatmap_key(source_uri: str, member_index: int | None, frame_index: int | None) -> str:
    """A file name unique per row key (never derived from a member's own name)."""
    return hashlib.sha1(f"{source_uri}\0{member_index}\0{frame_index}".encode()).hexdigest()[:20]
