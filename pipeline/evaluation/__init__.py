"""Evaluating a scored run: its labels, the metrics, per-video segments, the report, and the driver."""

from pipeline.evaluation.labels import Labels, load_labels, load_mask
from pipeline.evaluation.run import run_evaluate
from pipeline.evaluation.run_metrics import evaluate, numeric_metrics
from pipeline.evaluation.segments import moving_average, summarize_videos

__all__ = ["Labels", "evaluate", "load_labels", "load_mask", "moving_average", "numeric_metrics", "run_evaluate",
           "summarize_videos"]
