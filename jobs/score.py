"""Score an archive: ``python -m jobs.score --input URI --bank URI --output URI`` (PatchCore), ``--detector
dmad|anomalyclip|inctrl --model URI`` (a checkpoint from jobs.train), or ``--detector saa --gdino-weights W
--sam-weights W [--product NAME] [--prompts-config FILE.yaml]`` (zero-shot, no training)."""

from __future__ import annotations

import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import ScoreConfig

FLAGS = [
    Flag("--input", "input", "URI"),
    Flag("--output", "output", "URI"),
    Flag("--run-name", "run_name", "NAME"),
    Flag("--detector", "detector"),
    Flag("--bank", "bank", "URI"),
    Flag("--bank-version", "bank_version", "VERSION"),
    Flag("--model", "model", "URI"),
    Flag("--clip-arch", "clip_arch", "ARCH"),
    Flag("--clip-weights", "clip_weights", "WEIGHTS"),
    Flag("--shots", "shots"),
    Flag("--prompts", "prompts", "URI"),
    Flag("--gdino-weights", "saa.gdino_weights", "PATH|URI|NAME|none"),
    Flag("--sam-weights", "saa.sam_weights", "PATH|URI|NAME|none"),
    Flag("--gdino-arch", "saa.gdino_arch"),
    Flag("--sam-arch", "saa.sam_arch"),
    Flag("--prompts-config", "saa.prompts_config", "FILE.yaml"),
    Flag("--product", "saa.product", "NAME"),
    Flag("--threshold", "threshold"),
    Flag("--heatmaps", "heatmaps"),
    Flag("--heatmap-format", "overlay.format"),
    Flag("--maps", "maps"),
    Flag("--frame-stride", "video.frame_stride"),
    Flag("--fps", "video.fps"),
    Flag("--images-per-unit", "images_per_unit"),
    Flag("--batch-size", "batch_size"),
    Flag("--knn-engine", "knn_engine"),
    Flag("--knn-precision", "knn_precision"),
]


def _run(cfg: ScoreConfig) -> dict[str, Any]:
    from pipeline.score import run_score  # imports torch: only once the config is known to be valid

    return run_score(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.score", __doc__, ScoreConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
