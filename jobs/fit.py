"""Fit a PatchCore memory bank: ``python -m jobs.fit --normal URI --bank URI``."""

from __future__ import annotations

import sys

from jobs.cli import run_config_job
from pipeline.config import FitConfig, load_config

FLAGS = [
    ("--frame-stride", "video.frame_stride", int),
    ("--fps", "video.fps", float),
    ("--normal", "normal", str),
    ("--bank", "bank", str),
    ("--backbone", "patchcore.backbone", str),
    ("--weights", "patchcore.weights", str),
    ("--coreset-ratio", "patchcore.coreset_ratio", float),
    ("--image-size", "patchcore.image_size", int),
    ("--embed-dim", "patchcore.embed_dim", int),
    ("--calibration-fraction", "patchcore.calibration_fraction", float),
    ("--seed", "patchcore.seed", int),
    ("--precision", "patchcore.precision", str),
    ("--index-dtype", "patchcore.index_dtype", str),
    ("--shard-vectors", "patchcore.shard_vectors", int),
    ("--update-from", "update_from", str),
    ("--images-per-shard", "patchcore.images_per_shard", int),
]


def _run(config: str | None, flags: dict) -> dict:
    from pipeline.fit import run_fit

    return run_fit(load_config(FitConfig, config, flags))


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
