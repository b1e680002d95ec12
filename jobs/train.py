"""Train a detector: ``python -m jobs.train --detector dmad --variant video --normal URI --model-out URI
--steps N``, or ``--detector anomalyclip|inctrl --aux URI --clip-arch NAME --clip-weights W``."""

from __future__ import annotations

import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import TrainConfig

FLAGS = [
    Flag("--detector", "detector", help="detector to train"),
    Flag("--variant", "dmad.variant", help="dmad: train on video clips or on still images"),
    Flag("--normal", "normal", "URI"),
    Flag("--aux", "aux", "URI"),
    Flag("--clip-arch", "clip_arch", "ARCH"),
    Flag("--clip-weights", "clip_weights", "WEIGHTS"),
    Flag("--shots", "inctrl.shots"),
    Flag("--model-out", "model_out", "URI", help="where the trained checkpoint is written: path or s3:// URI"),
    Flag("--steps", "steps", help="optimiser steps"),
    Flag("--batch-size", "batch_size"),
    Flag("--image-size", "dmad.image_size"),
    Flag("--frame-stride", "video.frame_stride"),
    Flag("--fps", "video.fps"),
    Flag("--seed", "seed", help="random seed: dmad initial weights, and the training batches"),
]


def _run(cfg: TrainConfig) -> dict[str, Any]:
    from pipeline.train import run_train

    return run_train(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.train", __doc__, TrainConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
