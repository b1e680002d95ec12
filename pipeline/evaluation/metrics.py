"""Evaluation metrics where labels exist: ROC/PR curves, AUROC, AP, F1-max and AUPRO.

Conventions (the same as scikit-learn's): an input is predicted anomalous at threshold ``t`` when its
score is ``>= t``; the curves have one point per distinct score. Every function raises ``ValueError``
when the metric is undefined (a single class), so callers never see a silent NaN.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    return labels, scores, n_pos, n_neg


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); labels are 0/1."""
    labels, scores, n_pos, n_neg = _check(labels, scores)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank within runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    run_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _cumulative(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """True and false positives at each distinct score, highest score first (predicted: score >= t)."""
    labels, scores, n_pos, n_neg = _check(labels, scores)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the curve needs both positive and negative labels")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps, s[last], n_pos, n_neg


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf."""
    tps, fps, thresholds, n_pos, n_neg = _cumulative(labels, scores)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, thresholds]


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` at each distinct score, highest threshold first."""
    tps, fps, thresholds, n_pos, _ = _cumulative(labels, scores)
    return tps / (tps + fps), tps / n_pos, thresholds


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP = sum over thresholds of (R_n - R_{n-1}) * P_n (no interpolation; scikit-learn's definition)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 over all thresholds and the threshold ``t`` that gives it (anomalous: score >= t)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# 8-connectivity, as the MVTec AD evaluation code labels ground-truth regions
REGION_STRUCTURE = np.ones((3, 3), dtype=int)


def pro_curve(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve of the MVTec AD benchmark: ``(fpr, pro)`` at every distinct score.

    Each connected region (8-connectivity) of every ground-truth mask is one region. At threshold ``t``
    (anomalous: map value >= t) a region's overlap is the fraction of its pixels at or above ``t``; PRO is
    the mean overlap over all regions of all images (each region weighs the same, whatever its size);
    FPR is the fraction of all normal pixels (mask 0, in every image) at or above ``t``. The curve starts
    at (0, 0) and ends at (1, 1).
    """
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    values, fp_weight, pro_weight = [], [], []
    n_regions, n_normal = 0, 0
    for mask, amap in zip(masks, maps, strict=True):
        mask = np.asarray(mask).astype(bool)
        amap = np.asarray(amap, dtype=np.float64)
        if mask.shape != amap.shape:
            raise ValueError(f"mask {mask.shape} and map {amap.shape} differ in size")
        regions, count = ndimage.label(mask, structure=REGION_STRUCTURE)
        sizes = np.bincount(regions.ravel(), minlength=count + 1).astype(np.float64)
        values.append(amap.ravel())
        fp_weight.append((~mask).ravel().astype(np.float64))
        # a region pixel carries 1 / its region's size; divided by the region count below
        pro_weight.append(np.where(regions.ravel() > 0, 1.0 / sizes[regions.ravel()], 0.0))
        n_regions += count
        n_normal += int((~mask).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("PRO needs at least one anomalous region and one normal pixel")
    v, fp, pro = np.concatenate(values), np.concatenate(fp_weight), np.concatenate(pro_weight)
    if not np.isfinite(v).all():
        raise ValueError("anomaly maps hold NaN or infinite values")
    order = np.argsort(-v, kind="mergesort")
    v, fp, pro = v[order], fp[order], pro[order]
    last = np.r_[np.flatnonzero(np.diff(v)), len(v) - 1]
    fpr = np.cumsum(fp)[last] / n_normal
    pros = np.cumsum(pro)[last] / n_regions
    return np.clip(np.r_[0.0, fpr], 0, 1), np.clip(np.r_[0.0, pros], 0, 1)


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to FPR ``max_fpr``, normalised to 0..1 (the MVTec AD benchmark's AUPRO).

    Integration, exactly: take the points ``(fpr_i, pro_i)`` of :func:`pro_curve` (one per distinct map
    value, from (0, 0) to (1, 1)); keep those with ``fpr_i <= max_fpr``; if the curve passes ``max_fpr``
    between two points, add the point at ``fpr = max_fpr`` with PRO linearly interpolated between them;
    sum the trapezoids ``(fpr_{i+1} - fpr_i) * (pro_i + pro_{i+1}) / 2``; divide by ``max_fpr``.
    A perfect map gives 1.0; a map whose regions are found only above ``max_fpr`` gives 0.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= max_fpr
    x, y = fpr[keep], pro[keep]
    if x[-1] < max_fpr:
        after = int(np.argmax(~keep))  # first point past max_fpr (fpr ends at 1.0, so one exists)
        x0, x1, y0, y1 = fpr[after - 1], fpr[after], pro[after - 1], pro[after]
        x, y = np.r_[x, max_fpr], np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / max_fpr)


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` resized to ``shape`` by nearest neighbour (pixel centres), values unchanged."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(int), w - 1)
    return mask[rows[:, None], cols[None, :]]
