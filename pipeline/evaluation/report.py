"""``evaluation/report.html``: one self-contained HTML file (every image a base64 data URI, no network).

Metric table, warnings, score histograms (normal vs anomalous, or per source without labels), ROC and PR
curves, a gallery of the top-K most anomalous inputs (heatmap overlay, score, mask outline where
labelled) and, for videos, each video's score over time with its anomalous segments shaded.
"""

from __future__ import annotations

import base64
import html
import io
import posixpath
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import pipeline.evaluation.metrics as metrics  # noqa: E402
from pipeline.evaluation.labels import Labels, image_label, row_path  # noqa: E402

THUMB = 224


def _png(fig: Any) -> str:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def metric_table(result: dict[str, Any]) -> str:
    rows = "".join(f'<tr><th>{html.escape(k)}</th><td data-key="{html.escape(k)}">{_fmt(v)}</td></tr>'
                   for k, v in result.items() if not isinstance(v, dict | list))
    confusion = result.get("confusion_at_run_threshold")
    if confusion:
        rows += "".join(f'<tr><th>confusion {k}</th><td data-key="confusion.{k}">{v}</td></tr>'
                        for k, v in confusion.items())
    return f'<table id="metrics">{rows}</table>'


def group_table(groups: dict[str, dict[str, Any]]) -> str:
    if not groups:
        return ""
    keys = sorted({k for g in groups.values() for k in g})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(g.get(k))}</td>" for k in keys) + "</tr>"
                   for name, g in groups.items())
    return f'<h2>Per group</h2><table id="groups"><tr><th>group</th>{head}</tr>{body}</table>'


def _histograms(series: dict[str, list[float]], title: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    values = [v for s in series.values() for v in s]
    bins = np.linspace(min(values), max(values) + 1e-9, 30)
    for name, scores in series.items():
        ax.hist(scores, bins=bins, alpha=0.55, label=f"{name} ({len(scores)})")
    ax.set_xlabel("score")
    ax.set_ylabel("inputs")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _img(_png(fig), title)


def _curves(y: np.ndarray, s: np.ndarray) -> str:
    fpr, tpr, _ = metrics.roc_curve(y, s)
    precision, recall, _ = metrics.precision_recall_curve(y, s)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.plot(fpr, tpr)
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (images)")
    b.step(np.r_[0, recall], np.r_[precision[0], precision], where="pre")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall (images)", ylim=(0, 1.02))
    return _img(_png(fig), "ROC and PR curves")


def _outline(overlay: Image.Image, mask: np.ndarray) -> Image.Image:
    m = metrics.resize_nearest(mask, (overlay.height, overlay.width))
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    edge = m & ~inner
    pixels = np.asarray(overlay.convert("RGB")).copy()
    pixels[edge] = (0, 255, 0)
    return Image.fromarray(pixels)


def _thumb(image: Image.Image) -> str:
    image = image.convert("RGB")
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def gallery(storage: Any, rows: list[dict[str, Any]], labels: Labels | None, top_k: int) -> str:
    from pipeline.evaluation.labels import load_mask

    scored = sorted((r for r in rows if r["status"] == "ok" and r.get("heatmap_uri")), key=lambda r: -r["score"])
    cards = []
    for row in scored[:top_k]:
        try:
            overlay = Image.open(io.BytesIO(storage.read_bytes(row["heatmap_uri"])))
            overlay.load()
        except Exception:  # noqa: BLE001 - a missing heatmap leaves a card without a picture, not a broken img
            continue
        lab = image_label(row, labels) if labels else None
        note = ""
        if lab is not None:
            note = f"label: {'anomalous' if lab.label else 'normal'} ({html.escape(lab.group)})"
            if lab.mask_uri:
                try:
                    overlay = _outline(overlay, load_mask(storage, lab.mask_uri))
                    note += ", mask outlined in green"
                except Exception:  # noqa: BLE001 - an unreadable mask: the card without its outline
                    note += ", mask unreadable"
        where = posixpath.basename(row_path(row)) + (f" frame {row['frame_index']}" if row.get("frame_index")
                                                     is not None else "")
        flag = "above threshold" if row.get("is_anomaly") else ""
        cards.append(f'<figure class="card">{_img(_thumb(overlay), where)}<figcaption><b>{row["score"]:.4f}</b> '
                     f'{flag}<br>{html.escape(where)}<br>{note}</figcaption></figure>')
    if not cards:
        return "<p>No heatmaps in this run (scored with --heatmaps none?).</p>"
    return '<div class="gallery">' + "".join(cards) + "</div>"


def video_curves(rows: list[dict[str, Any]], videos: list[dict[str, Any]], labels: Labels | None,
                 threshold: float | None) -> str:
    frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r.get("frame_index") is not None:
            frames[r["source_uri"]].append(r)
    segments = {v["source_uri"]: v["segments"] for v in videos}
    parts = []
    for uri, items in sorted(frames.items()):
        items.sort(key=lambda r: r["frame_index"])
        x = [r["frame_index"] for r in items]
        fig, ax = plt.subplots(figsize=(8, 2.6))
        ax.plot(x, [r["score"] for r in items], lw=1.2, label="score")
        for i, seg in enumerate(segments.get(uri, [])):
            ax.axvspan(seg["start_frame"] - 0.5, seg["end_frame"] + 0.5, color="tab:red", alpha=0.2,
                       label="anomalous segment" if i == 0 else None)
        if labels and labels.frames:
            truth = [f for (src, f), lab in labels.frames.items() if lab and (src is None or uri.endswith(src))]
            if truth:
                ax.plot(truth, [ax.get_ylim()[0]] * len(truth), "|", color="k", ms=10, label="labelled anomalous")
        if threshold is not None:
            ax.axhline(threshold, color="k", ls=":", lw=0.8, label="threshold")
        ax.set(xlabel="frame", ylabel="score", title=posixpath.basename(uri))
        ax.legend(fontsize=7)
        parts.append(_img(_png(fig), f"score over time: {posixpath.basename(uri)}"))
    return "".join(parts)


def _source_group(row: dict[str, Any]) -> str:
    return posixpath.basename(posixpath.dirname(row_path(row))) or "(root)"


def build_report(storage: Any, run_uri: str, rows: list[dict[str, Any]], videos: list[dict[str, Any]],
                 result: dict[str, Any], labels: Labels | None, top_k: int) -> str:
    images = [r for r in rows if r["status"] == "ok" and r.get("frame_index") is None]
    threshold = next((r.get("threshold") for r in rows if r.get("threshold") is not None), None)
    sections = [f"<h1>Evaluation of {html.escape(run_uri)}</h1>", "<h2>Metrics</h2>", metric_table(result)]
    for kind in ("errors", "warnings"):
        if result.get(kind):
            items = "".join(f"<li>{html.escape(w)}</li>" for w in result[kind])
            sections.append(f'<h2>{kind.capitalize()}</h2><ul id="{kind}">{items}</ul>')
    sections.append(group_table(result.get("groups", {})))
    matched = [(r, lab) for r in images if labels and (lab := image_label(r, labels)) is not None]
    if matched:
        y = np.array([lab.label for _, lab in matched])
        s = np.array([r["score"] for r, _ in matched], dtype=np.float64)
        series = {"normal": s[y == 0].tolist(), "anomalous": s[y == 1].tolist()}
        sections += ["<h2>Scores</h2>", _histograms({k: v for k, v in series.items() if v}, "labelled images")]
        if 0 < y.sum() < len(y):
            sections.append(_curves(y, s))
    elif images:
        per_source: dict[str, list[float]] = defaultdict(list)
        for r in images:
            per_source[_source_group(r)].append(r["score"])
        sections += ["<h2>Scores</h2>", _histograms(dict(sorted(per_source.items())), "images per source folder")]
    sections += [f"<h2>Top {top_k} most anomalous</h2>", gallery(storage, rows, labels, top_k)]
    curves = video_curves(rows, videos, labels, threshold)
    if curves:
        sections += ["<h2>Videos</h2>", curves]
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:left}.gallery{display:flex;flex-wrap:wrap;gap:8px}.card{margin:0;"
             "width:230px;font-size:12px}#errors{color:#b00}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>evaluation</title><style>{style}</style>'
            f"</head><body>{''.join(sections)}</body></html>")
