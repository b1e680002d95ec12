"""Evaluate a scored run against per-frame labels: ``python -m jobs.evaluate --output RUN_URI --labels FILE``."""

from __future__ import annotations

import json
import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import ConfigError, EvaluateConfig

FLAGS = [Flag("--output", "output", "URI"), Flag("--labels", "labels", "URI")]


def _run(cfg: EvaluateConfig) -> dict[str, Any]:
    from pipeline.evaluate import frame_auc, parse_labels
    from pipeline.io.storage import Storage, join
    from pipeline.tracking import start_run
    from pipeline.video_summary import read_rows

    storage = Storage(cfg.storage)
    try:
        result = frame_auc(read_rows(storage, cfg.output), parse_labels(storage.read_bytes(cfg.labels).decode()))
    except ValueError as exc:  # the labels do not fit the run: the user's input, not a bug
        raise ConfigError(f"--labels {cfg.labels}: {exc}") from exc
    storage.write_bytes(join(cfg.output, "evaluation.json"), json.dumps(result, indent=2).encode())
    with start_run(cfg.tracking, "evaluate-" + cfg.output.rstrip("/").rsplit("/", 1)[-1], "evaluate") as run:
        run.params({"output": cfg.output, "labels": cfg.labels})
        run.metrics(dict(result))
    return result


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.evaluate", __doc__, EvaluateConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
