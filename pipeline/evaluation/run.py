"""Driver of ``jobs.evaluate``: read a scored run's rows, match its labels, write the metrics and the report, log
them to MLflow."""

from __future__ import annotations

import json
from typing import Any

from pipeline.config import EvaluateConfig
from pipeline.errors import ConfigError, StorageError
from pipeline.evaluation.labels import load_labels
from pipeline.evaluation.report import build_report
from pipeline.evaluation.run_metrics import evaluate, numeric_metrics
from pipeline.io.storage import Storage
from pipeline.results import RunLayout, read_rows
from pipeline.tracking import check_tracking, random_weights_tags, start_run


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Metrics and the report of a scored run; see :mod:`jobs.evaluate` for what it writes."""

    storage = Storage(cfg.storage)
    storage.check_reachable(cfg.output, "output")
    check_tracking(cfg.tracking)  # before anything is read or written: a store that is down fails in seconds
    layout = RunLayout(cfg.output)
    _keep_labelled_evaluation(storage, cfg, layout)
    rows = read_rows(storage, cfg.output, columns=None)
    if not rows:
        raise ConfigError(f"output={cfg.output}: no scored rows (scores/*.parquet) under it")
    videos_uri = layout.videos
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
    summary = json.loads(storage.read_bytes(layout.summary)) if storage.exists(layout.summary) else {}
    result = {"output": cfg.output, "labels": cfg.labels, "random_weights": summary.get("random_weights")} | result
    report_uri = layout.report
    report = build_report(storage, cfg.output, rows, videos, result, labels, cfg.top_k, summary).encode()
    storage.write_bytes(layout.evaluation, json.dumps(result, indent=2).encode())
    storage.write_bytes(report_uri, report)

    tracking_uri = layout.tracking
    scoring = json.loads(storage.read_bytes(tracking_uri)) if storage.exists(tracking_uri) else {}
    with start_run(cfg.tracking, "evaluate-" + cfg.output.rstrip("/").rsplit("/", 1)[-1], "evaluate") as run:
        run.params({"output": cfg.output, "labels": cfg.labels, "top_k": cfg.top_k, "max_fpr": cfg.max_fpr})
        run.tags(random_weights_tags(summary.get("random_weights") or []))
        if scoring.get("mlflow_run_id"):
            run.tags({"scoring_run_id": scoring["mlflow_run_id"]})
        run.metrics(numeric_metrics(result))
        run.json_artifact("evaluation.json", result)
        run.file_artifact("report.html", report, folder="evaluation")
        result["mlflow_run_id"] = run.run_id
    if result["errors"]:
        raise ConfigError(f"evaluation of {cfg.output}: " + "; ".join(result["errors"])
                          + f" (details in {layout.evaluation})")
    return result | {"report": report_uri}


def _keep_labelled_evaluation(storage: Storage, cfg: EvaluateConfig, layout: RunLayout) -> None:
    """An evaluation without labels would overwrite a labelled one's metrics with none: refused unless
    ``replace`` says so (re-running with labels updates it as before)."""
    if cfg.labels or cfg.replace or not storage.exists(layout.evaluation):
        return
    try:
        earlier = json.loads(storage.read_bytes(layout.evaluation)).get("labels")
    except (ValueError, AttributeError):
        return  # not an evaluation this product wrote: nothing worth keeping
    if earlier:
        raise ConfigError(f"{layout.evaluation} holds an evaluation with labels={earlier}; give --labels {earlier} to "
                          f"update it, or --replace to replace it with a report without metrics")
