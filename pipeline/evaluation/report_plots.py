"""The report's charts (matplotlib, Agg): score histograms, ROC and PR curves, a video's score over time."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import pipeline.evaluation.metrics as metrics  # noqa: E402


def _img(fig: Any, alt: str) -> str:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}" alt="{html.escape(alt)}">'


def histograms(series: dict[str, list[float]], title: str, threshold: float | None) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    values = [v for s in series.values() for v in s]
    bins = np.linspace(min(values), max(values) + 1e-9, 30)
    for name, scores in series.items():
        ax.hist(scores, bins=bins, alpha=0.55, label=f"{name} ({len(scores)})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", lw=1, label="threshold")
    ax.set(xlabel="score", ylabel="inputs", title=title)
    ax.legend(fontsize=7)
    return _img(fig, title)


def roc_and_pr(y: np.ndarray, s: np.ndarray) -> str:
    fpr, tpr, _ = metrics.roc_curve(y, s)
    precision, recall, _ = metrics.precision_recall_curve(y, s)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.plot(fpr, tpr)
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (images)")
    b.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall (images)", ylim=(0, 1.02))
    return _img(fig, "ROC and PR curves")


def score_over_time(name: str, frames: list[int], scores: list[float], segments: list[dict[str, Any]],
                    labelled: list[int], threshold: float | None) -> str:
    """One video: its frames' scores, the anomalous segments shaded, labelled anomalous frames ticked."""
    fig, ax = plt.subplots(figsize=(8, 2.4))
    ax.plot(frames, scores, lw=1.2, label="score")
    for i, seg in enumerate(segments):
        ax.axvspan(seg["start_frame"] - 0.5, seg["end_frame"] + 0.5, color="tab:red", alpha=0.2,
                   label="anomalous segment" if i == 0 else None)
    if labelled:
        ax.plot(labelled, [ax.get_ylim()[0]] * len(labelled), "|", color="k", ms=10, label="labelled anomalous")
    if threshold is not None:
        ax.axhline(threshold, color="k", ls=":", lw=0.8, label="threshold")
    ax.set(xlabel="frame", ylabel="score", title=name)
    ax.legend(fontsize=7)
    return _img(fig, f"score over time: {name}")
