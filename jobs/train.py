"""Train a detector: ``python -m jobs.train --detector dmad --variant video --normal URI --model-out URI
--steps N``, or ``--detector anomalyclip|inctrl --aux URI --clip-arch NAME --clip-weights W``."""

from __future__ import annotations

import sys

from jobs.cli import run_config_job
from pipeline.config import load_config

FLAGS = [
    ("--detector", "detector", str),
    ("--variant", "dmad.variant", str),
    ("--normal", "normal", str),
    ("--aux", "aux", str),
    ("--clip-arch", "clip_arch", str),
    ("--clip-weights", "clip_weights", str),
    ("--shots", "inctrl.shots", int),
    ("--model-out", "model_out", str),
    ("--steps", "steps", int),
    ("--batch-size", "batch_size", int),
    ("--image-size", "dmad.image_size", int),
    ("--frame-stride", "video.frame_stride", int),
    ("--fps", "video.fps", float),
    ("--seed", "seed", int),
]


def _run(config: str | None, flags: dict) -> dict:
    from pipeline.train import TrainConfig, run_train

    return run_train(load_config(TrainConfig, config, flags))


def main(argv: list[str] | None = None) -> int:
    return run_config_job(__doc__, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
