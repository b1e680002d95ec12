"""Score an archive: ``python -m jobs.score --input URI --bank URI --output URI``."""

from __future__ import annotations

import sys

from jobs.cli import run_config_job
from pipeline.config import ScoreConfig, load_config

FLAGS = [
    ("--frame-stride", "video.frame_stride", int),
    ("--fps", "video.fps", float),
    ("--input", "input", str),
    ("--bank", "bank", str),
    ("--bank-version", "bank_version", str),
    ("--model", "model", str),
    ("--clip-arch", "clip_arch", str),
    ("--clip-weights", "clip_weights", str),
    ("--shots", "shots", int),
    ("--prompts", "prompts", str),
    ("--output", "output", str),
    ("--detector", "detector", str),
    ("--run-name", "run_name", str),
    ("--threshold", "threshold", float),
    ("--heatmaps", "heatmaps", str),
    ("--images-per-unit", "images_per_unit", int),
    ("--batch-size", "batch_size", int),
]


def _run(config: str | None, flags: dict) -> dict:
    from pipeline.score import run_score

    return run_score(load_config(ScoreConfig, config, flags))


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
