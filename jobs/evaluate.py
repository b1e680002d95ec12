"""Evaluate a scored run: ``python -m jobs.evaluate --output RUN_URI [--labels FOLDER|FILE[,...]]``.

Writes ``RUN_URI/evaluation.json`` (metrics, ``null`` where undefined, ``warnings``, ``errors``) and
``RUN_URI/evaluation/report.html``, and logs both to MLflow. Without ``--labels``: the report only (an
earlier evaluation with labels is kept: this is refused unless ``--replace``). The MLflow store is checked
first: unreachable, it fails in seconds with exit 2 and no file changed.
Labels that match nothing, or a headline metric that is undefined (one class only), still write both
files, then exit 2 with one line.
"""

from __future__ import annotations

import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import EvaluateConfig

FLAGS = [Flag("--output", "output", "URI"), Flag("--labels", "labels", "URI"), Flag("--top-k", "top_k"),
         Flag("--max-fpr", "max_fpr"), Flag("--replace", "replace")]


def _run(cfg: EvaluateConfig) -> dict[str, Any]:
    from pipeline.evaluation import run_evaluate

    return run_evaluate(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.evaluate", __doc__, EvaluateConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
