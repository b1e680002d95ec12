"""Evaluate a scored run: ``python -m jobs.evaluate --output RUN_URI [--labels FOLDER|FILE[,...]]``.

Writes ``RUN_URI/evaluation.json`` (metrics, ``null`` where undefined, ``warnings``, ``errors``) and
``RUN_URI/evaluation/report.html``, and logs both to MLflow. Without ``--labels``: the report only.
Labels that match nothing, or a headline metric that is undefined (one class only), still write both
files, then exit 2 with one line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from jobs.cli import Flag, run_config_job
from pipeline.config import ConfigError, EvaluateConfig

FLAGS = [Flag("--output", "output", "URI"), Flag("--labels", "labels", "URI"), Flag("--top-k", "top_k"),
         Flag("--max-fpr", "max_fpr")]


def _run(cfg: EvaluateConfig) -> dict[str, Any]:
    from pipeline.evaluate import evaluate, load_labels, numeric_metrics
    from pipeline.io.storage import Storage, StorageError, join
    from pipeline.report import build_report
    from pipeline.tracking import start_run
    from pipeline.video_summary import read_rows

    storage = Storage(cfg.storage)
    storage.check_reachable(cfg.output, "output")
    rows = read_rows(storage, cfg.output, columns=None)
    if not rows:
        raise ConfigError(f"output={cfg.output}: no scored rows (scores/*.parquet) under it")
    videos_uri = join(cfg.output, "videos.json")
    videos = json.loads(storage.read_bytes(videos_uri)) if storage.exists(videos_uri) else []
    labels = None
    if cfg.labels:
        try:
            labels = load_labels(storage, cfg.labels)
        except (ValueError, StorageError) as exc:  # the labels are the user's input, not a bug
            raise ConfigError(f"--labels {cfg.labels}: {exc}") from exc
        result = evaluate(storage, rows, labels, videos, cfg.max_fpr)
    else:
        result = {"n_rows": len(rows), "warnings": ["no --labels: report only, no metrics"], "errors": []}
    result = {"output": cfg.output, "labels": cfg.labels} | result
    report_uri = join(cfg.output, "evaluation", "report.html")
    report = build_report(storage, cfg.output, rows, videos, result, labels, cfg.top_k).encode()
    storage.write_bytes(join(cfg.output, "evaluation.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(report_uri, report)

    tracking_uri = join(cfg.output, "tracking.json")
    scoring = json.loads(storage.read_bytes(tracking_uri)) if storage.exists(tracking_uri) else {}
    with start_run(cfg.tracking, "evaluate-" + cfg.output.rstrip("/").rsplit("/", 1)[-1], "evaluate") as run:
        run.params({"output": cfg.output, "labels": cfg.labels, "top_k": cfg.top_k, "max_fpr": cfg.max_fpr})
        if scoring.get("mlflow_run_id"):
            run.tags({"scoring_run_id": scoring["mlflow_run_id"]})
        run.metrics(numeric_metrics(result))
        run.json_artifact("evaluation.json", result)
        run.file_artifact("report.html", report, folder="evaluation")
        result["mlflow_run_id"] = run.run_id
    if result["errors"]:
        raise ConfigError(f"evaluation of {cfg.output}: " + "; ".join(result["errors"])
                          + f" (details in {join(cfg.output, 'evaluation.json')})")
    return result | {"report": report_uri}


def main(argv: list[str] | None = None) -> int:
    return run_config_job("python -m jobs.evaluate", __doc__, EvaluateConfig, FLAGS, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
