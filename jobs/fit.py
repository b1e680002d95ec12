"""Fit a PatchCore memory bank: ``python -m jobs.fit --normal URI --bank URI``."""

from __future__ import annotations

import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import FitConfig

FLAGS = [
    Flag("--normal", "normal", "URI"),
    Flag("--bank", "bank", "URI"),
    Flag("--update-from", "update_from", "VERSION"),
    Flag("--frame-stride", "video.frame_stride"),
    Flag("--fps", "video.fps"),
    Flag("--backbone", "patchcore.backbone"),
    Flag("--weights", "patchcore.weights", "WEIGHTS"),
    Flag("--coreset-ratio", "patchcore.coreset_ratio"),
    Flag("--image-size", "patchcore.image_size"),
    Flag("--crop-fraction", "patchcore.crop_fraction"),
    Flag("--interpolation", "patchcore.interpolation"),
    Flag("--embed-dim", "patchcore.embed_dim"),
    Flag("--patchsize", "patchcore.patchsize"),
    Flag("--anomaly-scorer-num-nn", "patchcore.anomaly_scorer_num_nn"),
    Flag("--calibration-fraction", "patchcore.calibration_fraction"),
    Flag("--seed", "patchcore.seed"),
    Flag("--precision", "patchcore.precision"),
    Flag("--index-dtype", "patchcore.index_dtype"),
    Flag("--shard-vectors", "patchcore.shard_vectors"),
    Flag("--coreset-engine", "patchcore.coreset_engine"),
    Flag("--coreset-mode", "patchcore.coreset_mode"),
    Flag("--bn-shift", "patchcore.bn_shift"),
    Flag("--merge-max-vectors", "patchcore.merge_max_vectors"),
    Flag("--images-per-shard", "patchcore.images_per_shard"),
]


def _run(cfg: FitConfig) -> dict[str, Any]:
    from pipeline.detectors.patchcore.fit import run_fit  # imports torch: only once the config is known to be valid

    return run_fit(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.fit", __doc__, FitConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
