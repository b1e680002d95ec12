"""Metrics of a scored run against its labels: image, pixel and video metrics, with warnings, never NaN.

Pixel metrics need the run's raw maps (``jobs.score --maps``); each mask is checked against the image size
of its row, then resized to the map's size by nearest neighbour (the maps are at the scored resolution).
"""

from __future__ import annotations

import io
import posixpath
from collections import defaultdict
from typing import Any

import numpy as np

import pipeline.evaluation.metrics as metrics
from pipeline.evaluation.labels import ImageLabel, Labels, image_label, load_mask, row_path
from pipeline.evaluation.metrics import roc_auc


def frame_auc(rows: list[dict[str, Any]], labels: dict[tuple[str | None, int], int]) -> dict[str, Any]:
    y, s, _ = match_frames(rows, labels)
    if not y:
        raise ValueError("no scored frame matches a labelled frame")
    videos = {r["source_uri"] for r in rows if r["status"] == "ok" and r["frame_index"] is not None}
    return {"frame_auc": roc_auc(np.array(y), np.array(s)), "n_frames": len(y), "n_positive": int(sum(y)),
            "n_videos": len(videos)}



def match_frames(rows: list[dict[str, Any]], labels: dict[tuple[str | None, int], int]
                 ) -> tuple[list[int], list[float], list[dict[str, Any]]]:
    """Labels, scores and rows of the scored frames that have a label."""
    scored = [r for r in rows if r["status"] == "ok" and r["frame_index"] is not None]
    videos = sorted({r["source_uri"] for r in scored})
    sources = {s for s, _ in labels}
    if sources == {None} and len(videos) != 1:
        raise ValueError(f"labels have no source column but the run has {len(videos)} videos")
    y, s, matched = [], [], []
    for r in scored:
        if sources == {None}:
            key = (None, r["frame_index"])
        else:
            match = [src for src in sources if src and r["source_uri"].endswith(src)]
            key = (match[0], r["frame_index"]) if match else None
        if key in labels:
            y.append(labels[key])
            s.append(r["score"])
            matched.append(r)
    return y, s, matched



def _safe(name: str, fn: Any, warnings: list[str], *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        warnings.append(f"{name}: undefined ({exc})")
        return None



def _confusion(y: np.ndarray, flagged: list[bool | None]) -> dict[str, int] | None:
    if any(f is None for f in flagged):
        return None
    f = np.array(flagged, dtype=bool)
    y = y.astype(bool)
    return {"tp": int((f & y).sum()), "fp": int((f & ~y).sum()), "tn": int((~f & ~y).sum()), "fn": int((~f & y).sum())}



def _load_map(storage: Any, uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False).astype(np.float32)



def pixel_metrics(storage: Any, matched: list[tuple[dict[str, Any], ImageLabel]], max_fpr: float,
                  warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"pixel_auroc": None, "pixel_f1_max": None, "aupro": None, "n_pixel_images": 0}
    with_map = [(r, lab) for r, lab in matched if r.get("map_uri")]
    if not with_map:
        warnings.append("pixel metrics: the run has no raw maps (score with --maps); pixel_auroc and aupro are null")
        return out
    masks, maps, wrong = [], [], []
    for row, lab in with_map:
        amap = _load_map(storage, row["map_uri"])
        if lab.mask_uri is None:
            if lab.label:  # anomalous without a mask: no pixel truth
                continue
            masks.append(np.zeros(amap.shape, dtype=bool))
        else:
            mask = load_mask(storage, lab.mask_uri)
            if (row.get("width"), row.get("height")) != (mask.shape[1], mask.shape[0]):
                wrong.append(f"{lab.mask_uri} is {mask.shape[1]}x{mask.shape[0]}, its image "
                             f"{row.get('width')}x{row.get('height')}")
                continue
            masks.append(metrics.resize_nearest(mask, amap.shape))
        maps.append(amap)
    if wrong:
        warnings.append(f"pixel metrics: {len(wrong)} masks of another size than their image were left out, e.g. "
                        + "; ".join(wrong[:3]))
    out["n_pixel_images"] = len(masks)
    if not masks:
        warnings.append("pixel metrics: no usable mask; pixel_auroc and aupro are null")
        return out
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([m.ravel() for m in maps])
    out["pixel_auroc"] = _safe("pixel_auroc", metrics.roc_auc, warnings, y, s)
    f1 = _safe("pixel_f1_max", metrics.f1_max, warnings, y, s)
    out["pixel_f1_max"], out["pixel_f1_threshold"] = f1 if f1 else (None, None)
    out["aupro"] = _safe("aupro", metrics.aupro, warnings, masks, maps, max_fpr)
    out["aupro_max_fpr"] = max_fpr
    return out



def image_metrics(matched: list[tuple[dict[str, Any], ImageLabel]], warnings: list[str]) -> dict[str, Any]:
    y = np.array([lab.label for _, lab in matched])
    s = np.array([r["score"] for r, _ in matched], dtype=np.float64)
    out: dict[str, Any] = {"n_images": len(y), "n_anomalous_images": int(y.sum()),
                           "n_normal_images": int((1 - y).sum())}
    out["image_auroc"] = _safe("image_auroc", metrics.roc_auc, warnings, y, s)
    out["image_ap"] = _safe("image_ap", metrics.average_precision, warnings, y, s)
    f1 = _safe("image_f1_max", metrics.f1_max, warnings, y, s)
    out["image_f1_max"], out["image_f1_threshold"] = f1 if f1 else (None, None)
    out["confusion_at_run_threshold"] = _confusion(y, [r.get("is_anomaly") for r, _ in matched])
    if out["confusion_at_run_threshold"] is None:
        warnings.append("confusion counts: the run has no threshold (is_anomaly unset); set --threshold at scoring")
    out["run_threshold"] = next((r.get("threshold") for r, _ in matched if r.get("threshold") is not None), None)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (_, lab) in enumerate(matched):
        groups[lab.group].append(i)
    normal = np.flatnonzero(y == 0)
    breakdown = {}
    for name, idx in sorted(groups.items()):
        idx = np.array(idx)
        entry: dict[str, Any] = {"n": len(idx), "n_anomalous": int(y[idx].sum()),
                                 "mean_score": float(s[idx].mean())}
        flagged = [matched[i][0].get("is_anomaly") for i in idx]
        entry["n_flagged"] = None if any(f is None for f in flagged) else int(sum(flagged))
        if y[idx].all() and len(normal):  # a defect type against all normal images
            both = np.r_[idx, normal]
            entry["auroc_vs_good"] = metrics.roc_auc(y[both], s[both])
        breakdown[name] = entry
    out["groups"] = breakdown
    return out



def _events(frames: list[int], flags: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive labelled-anomalous frames: (first, last) frame index."""
    events, start, prev = [], None, None
    for f, lab in sorted(zip(frames, flags, strict=True)):
        if lab and start is not None and f == prev + 1:
            prev = f
            continue
        if start is not None:
            events.append((start, prev))
            start = None
        if lab:
            start = prev = f
    if start is not None:
        events.append((start, prev))
    return events



def segment_hits(videos: list[dict[str, Any]], matched: list[dict[str, Any]], y: list[int]) -> dict[str, Any]:
    """Per video: labelled events (runs of anomalous frames) found by at least one segment of
    ``videos.json``, and segments that overlap an event."""
    by_video: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for row, lab in zip(matched, y, strict=True):
        by_video[row["source_uri"]][0].append(row["frame_index"])
        by_video[row["source_uri"]][1].append(lab)
    segments = {v["source_uri"]: [(s["start_frame"], s["end_frame"]) for s in v["segments"]] for v in videos}
    per_video, n_events, n_hit, n_seg, n_seg_hit = {}, 0, 0, 0, 0
    for uri, (frames, flags) in sorted(by_video.items()):
        events, segs = _events(frames, flags), segments.get(uri, [])
        hit = [any(a <= e1 and e0 <= b for a, b in segs) for e0, e1 in events]
        seg_hit = [any(a <= e1 and e0 <= b for e0, e1 in events) for a, b in segs]
        per_video[posixpath.basename(uri)] = {
            "source_uri": uri, "n_frames": len(frames), "n_anomalous_frames": int(sum(flags)),
            "events": [list(e) for e in events], "segments": [list(s) for s in segs],
            "n_events_hit": int(sum(hit)), "n_segments_on_event": int(sum(seg_hit))}
        n_events, n_hit, n_seg, n_seg_hit = n_events + len(events), n_hit + sum(hit), n_seg + len(segs), \
            n_seg_hit + sum(seg_hit)
    return {"segment_event_hit_rate": n_hit / n_events if n_events else None,
            "segment_precision": n_seg_hit / n_seg if n_seg else None,
            "n_events": n_events, "n_segments": n_seg, "videos": per_video}



def evaluate(storage: Any, rows: list[dict[str, Any]], labels: Labels, videos: list[dict[str, Any]],
             max_fpr: float = 0.3) -> dict[str, Any]:
    """``evaluation.json``: metrics (``null`` where undefined), ``warnings``, and ``errors`` (fatal: the
    labels match nothing, or a headline metric is undefined)."""
    warnings: list[str] = []
    errors: list[str] = []
    ok_images = [r for r in rows if r["status"] == "ok" and r.get("frame_index") is None]
    matched = [(r, lab) for r in ok_images if (lab := image_label(r, labels)) is not None]
    result: dict[str, Any] = {"n_rows": len(rows), "n_scored_images": len(ok_images)}
    if labels.n_image_labels:
        unlabelled = len(ok_images) - len(matched)
        result["n_unlabelled_images"] = unlabelled
        if unlabelled:
            example = next(row_path(r) for r in ok_images if image_label(r, labels) is None)
            warnings.append(f"{unlabelled} scored images have no label (left out), e.g. {example}")
        n_labels_matched = len({id(lab) for _, lab in matched})
        if n_labels_matched < labels.n_image_labels:
            warnings.append(f"{labels.n_image_labels - n_labels_matched} of {labels.n_image_labels} image labels "
                            f"match no scored row")
        if not matched:
            errors.append(f"none of the {labels.n_image_labels} image labels matches a scored image "
                          f"({len(ok_images)} in the run)")
        else:
            result |= image_metrics(matched, warnings)
            if result["image_auroc"] is None:
                errors.append(f"image_auroc is undefined: the matched images are all "
                              f"{'anomalous' if result['n_normal_images'] == 0 else 'normal'} "
                              f"({result['n_images']} images)")
            if labels.masks_available:
                result |= pixel_metrics(storage, matched, max_fpr, warnings)
    if labels.frames:
        try:
            y, s, frames = match_frames(rows, labels.frames)
        except ValueError as exc:
            y, s, frames = [], [], []
            errors.append(f"frame labels: {exc}")
        if frames:
            result |= {"frame_auc": _safe("frame_auc", roc_auc, warnings, np.array(y), np.array(s)),
                       "n_frames": len(y), "n_positive": int(sum(y)),
                       "n_videos": len({r["source_uri"] for r in rows if r["frame_index"] is not None
                                        and r["status"] == "ok"})}
            result |= segment_hits(videos, frames, y)
            if result["frame_auc"] is None:
                errors.append(f"frame_auc is undefined: the {len(y)} labelled frames are all one class")
        elif not errors:
            errors.append(f"none of the {len(labels.frames)} frame labels matches a scored frame")
    result["warnings"] = warnings
    result["errors"] = errors
    return result



def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of ``evaluation.json`` (for MLflow), nulls left out."""
    return {k: float(v) for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v is not None}
