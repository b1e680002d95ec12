"""``evaluation/report.html``: one self-contained HTML file (every image a base64 data URI, no network),
laid out as an inspector reads it:

1. a banner when any model of the run used random weights (``summary.json`` ``random_weights``);
2. a summary card: inputs, flagged, errors, threshold, the part of each image inspected, and the
   headline metrics when labels exist;
3. the most anomalous images, each captioned with its path, tar member and score, under a colour bar
   that states the heatmap scale with the threshold marked;
4. one card per anomalous video event (``videos.json`` segments), and each video's score over time;
5. with labels: the missed defects (false negatives) and false alarms (false positives);
6. the inputs that could not be scored, grouped by reason;
7. score distributions, the metrics under readable names, and last every number of ``evaluation.json``.
"""

from __future__ import annotations

import html
import posixpath
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.evaluation.labels import Labels, image_label
from pipeline.evaluation.report_cards import CardMaker, Place, clean_error, colour_bar
from pipeline.evaluation.report_plots import histograms, roc_and_pr, score_over_time

# readable name and meaning of the metrics an inspector looks at, in this order
METRICS = {
    "image_auroc": ("Image AUROC", "chance that a defective image scores above a normal one (0.5: guessing)"),
    "image_ap": ("Image average precision", "area under the precision-recall curve of the images"),
    "image_f1_max": ("Best image F1", "F1 at the best possible threshold (image_f1_threshold)"),
    "pixel_auroc": ("Pixel AUROC", "chance that a defect pixel scores above a normal pixel"),
    "pixel_f1_max": ("Best pixel F1", "F1 of the pixels at the best possible map threshold"),
    "aupro": ("AUPRO", "how much of each defect region the maps cover, up to aupro_max_fpr false positive pixels"),
    "frame_auc": ("Video frame AUROC", "chance that a labelled anomalous frame scores above a normal one"),
    "segment_event_hit_rate": ("Video events found", "labelled events that an anomalous segment overlaps"),
    "segment_precision": ("Segments on a real event", "anomalous segments that overlap a labelled event"),
}
HEADLINE = ("image_auroc", "pixel_auroc", "aupro", "frame_auc")
MAX_ERRORS_LISTED = 50  # inputs listed under one error reason; the count says how many there are

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1250px;color:#222}
h1{margin-bottom:.2em}.sub{color:#555;margin-top:0}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
.banner{background:#b00020;color:#fff;padding:.8em 1em;border-radius:6px;margin:1em 0;font-size:1.05em}
.banner ul{margin:.3em 0 0}
#summary{display:flex;flex-wrap:wrap;gap:10px;margin:1em 0;padding:0}
#summary>div{border:1px solid #ccc;border-radius:6px;padding:.5em .9em;min-width:130px;background:#fafafa}
#summary dt{font-size:12px;color:#555}#summary dd{margin:0;font-size:1.35em;font-weight:600}
#summary dd small{font-size:12px;font-weight:normal;color:#555;display:block}
.problems{border-left:4px solid #b00020;padding:.2em 1em;background:#fff4f4}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{margin:0;width:230px;font-size:12px}
.card img{display:block;width:224px;height:auto}.nopic{width:224px;height:60px;background:#eee;color:#666;padding:4px}
.score{font-weight:700;font-size:14px}.flag{color:#fff;background:#b00020;border-radius:3px;padding:0 4px}
.path{font-family:monospace;word-break:break-all}.member,.frame{font-family:monospace}
#colour-bar{max-width:520px;margin:.5em 0 1em}#colour-bar .ramp{position:relative;height:16px;border:1px solid #999}
#colour-bar .tick-line{position:absolute;top:-4px;bottom:-4px;border-left:2px solid #000}
#colour-bar .ticks{position:relative;height:1.4em;font-size:12px}
#colour-bar .ticks span{position:absolute;transform:translateX(-50%);white-space:nowrap}
#colour-bar .ticks span:first-child{transform:none}#colour-bar .ticks span:last-child{transform:translateX(-100%)}
#colour-bar .threshold-mark{font-weight:700}#colour-bar p{font-size:12px;color:#444}
.reason h3{margin:.6em 0 .2em;font-size:1em}.count{background:#eee;border-radius:8px;padding:0 6px}
.explain{color:#555;font-size:12px}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _field(key: str, name: str, value: str, note: str = "") -> str:
    small = f"<small>{note}</small>" if note else ""
    return f'<div data-field="{key}"><dt>{name}</dt><dd>{value}{small}</dd></div>'


def random_weights_banner(summary: dict[str, Any]) -> str:
    notes = summary.get("random_weights") or []
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f'<div id="random-weights" class="banner" role="alert"><strong>Random weights: the scores and metrics '
            f"in this report say nothing about real anomalies.</strong> They show the pipeline working, not a "
            f"model's quality.<ul>{items}</ul></div>")


def inspected_text(inspected_fraction: float | None) -> tuple[str, str]:
    """How much of each image the model scored, as a card value and its note."""
    if inspected_fraction is None:
        return "not recorded", "the run predates this record"
    if inspected_fraction >= 1:
        return "whole image", ""
    edge = (1 - inspected_fraction) / 2
    return (f"{_percent(inspected_fraction ** 2)} of the area",
            f"the centred {_percent(inspected_fraction)} of each side; the outer {_percent(edge)} of every edge is not "
            f"inspected")


def summary_card(rows: list[dict[str, Any]], videos: list[dict[str, Any]], result: dict[str, Any],
                 summary: dict[str, Any], threshold: float | None, decisions: dict[str, list]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    frames = [r for r in ok if r.get("frame_index") is not None]
    n_videos = len({r["source_uri"] for r in frames})
    not_scored = [r for r in rows if r["status"] != "ok"]
    flagged = [r for r in ok if r.get("is_anomaly")]
    n_events = sum(len(v.get("segments", [])) for v in videos)
    parts = [_field("inputs", "Inputs", str(len(rows)),
                    f"{_count(len(ok) - len(frames), 'image')}, {_count(len(frames), 'video frame')} of "
                    f"{_count(n_videos, 'video')}"),
             _field("flagged", "Flagged", str(len(flagged)) if threshold is not None else "–",
                    f"{_count(sum(r.get('frame_index') is None for r in flagged), 'image')}, "
                    f"{_count(n_events, 'video event')}"
                    if threshold is not None else "no threshold: nothing is flagged"),
             _field("errors", "Not scored", f'<a href="#errors">{len(not_scored)}</a>' if not_scored else "0",
                    "grouped by reason below" if not_scored else ""),
             _field("threshold", "Threshold", f"{threshold:.4g}" if threshold is not None else "none",
                    "score above it: flagged")]
    inspected, note = inspected_text(summary.get("inspected_fraction"))
    parts.append(_field("inspected", "Inspected", inspected, note))
    for key in HEADLINE:
        if result.get(key) is not None:
            parts.append(_field(key, METRICS[key][0], f"{result[key]:.3f}"))
    if decisions:
        fn, fp = decisions["missed"], decisions["false_alarms"]
        n_def = sum(lab.label for _, lab in decisions["all"])
        parts.append(_field("missed", "Missed defects", f'<a href="#missed">{len(fn)}</a>', f"of {n_def} defective"))
        parts.append(_field("false_alarms", "False alarms", f'<a href="#false-alarms">{len(fp)}</a>',
                            f"of {len(decisions['all']) - n_def} normal"))
    detector = summary.get("detector") or next((r.get("detector") for r in rows if r.get("detector")), None)
    version = summary.get("model_version") or next((r.get("model_version") for r in rows if r.get("model_version")),
                                                   None)
    if detector:
        parts.append(_field("model", "Model", html.escape(detector), html.escape(version or "")))
    return f'<dl id="summary">{"".join(parts)}</dl>'


def problems(result: dict[str, Any]) -> str:
    out = []
    for kind, title in (("errors", "The evaluation failed"), ("warnings", "Warnings")):
        if result.get(kind):
            items = "".join(f"<li>{html.escape(w)}</li>" for w in result[kind])
            out.append(f'<div class="problems"><h3>{title}</h3><ul id="evaluation-{kind}">{items}</ul></div>')
    return "".join(out)


def decisions_of(images: list[dict[str, Any]], labels: Labels | None) -> dict[str, list]:
    """Labelled images and, where the run has a threshold, its missed defects and false alarms."""
    matched = [(r, lab) for r in images if labels and (lab := image_label(r, labels)) is not None]
    if not matched or any(r.get("is_anomaly") is None for r, _ in matched):
        return {}
    return {"all": matched,
            "missed": sorted(((r, lab) for r, lab in matched if lab.label and not r["is_anomaly"]),
                             key=lambda x: x[0]["score"]),
            "false_alarms": sorted(((r, lab) for r, lab in matched if not lab.label and r["is_anomaly"]),
                                   key=lambda x: -x[0]["score"])}


def gallery(cards: CardMaker, images: list[dict[str, Any]], labels: Labels | None, top_k: int) -> str:
    ranked = sorted(images, key=lambda r: -r["score"])[:top_k]
    if not ranked:
        return "<p>No scored images in this run.</p>"
    items = [cards.card(r, image_label(r, labels) if labels else None) for r in ranked]
    return f'<div class="gallery" id="gallery">{"".join(items)}</div>'


def _labelled_events(result: dict[str, Any], uri: str) -> list[list[int]] | None:
    video = (result.get("videos") or {}).get(posixpath.basename(uri))
    return video["events"] if video and video.get("source_uri") == uri else None


def video_events(cards: CardMaker, rows: list[dict[str, Any]], videos: list[dict[str, Any]], result: dict[str, Any],
                 labels: Labels | None, threshold: float | None) -> str:
    """One card per anomalous segment of ``videos.json`` (its peak frame), then each video's score over time."""
    frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r.get("frame_index") is not None:
            frames[r["source_uri"]].append(r)
    if not frames:
        return ""
    segments = {v["source_uri"]: v.get("segments", []) for v in videos}
    event_cards, quiet, charts = [], [], []
    for uri, items in sorted(frames.items()):
        items.sort(key=lambda r: r["frame_index"])
        truth = _labelled_events(result, uri)
        for seg in segments.get(uri, []):
            inside = [r for r in items if seg["start_frame"] <= r["frame_index"] <= seg["end_frame"]]
            if not inside:
                continue
            peak = max(inside, key=lambda r: r["score"])
            when = (f' ({seg["start_s"]:.2f}–{seg["end_s"]:.2f} s)' if seg.get("start_s") is not None
                    and seg.get("end_s") is not None else "")
            note = (f'<span class="event">event: frames {seg["start_frame"]}–{seg["end_frame"]}{when}, '
                    f'{_count(len(inside), "scored frame")}; the peak frame is shown</span>')
            if truth is not None:
                hit = any(a <= seg["end_frame"] and seg["start_frame"] <= b for a, b in truth)
                note += f'<br><span class="label">{"on a labelled event" if hit else "no labelled event here"}</span>'
            event_cards.append(cards.card(peak, note=note))
        if not segments.get(uri):
            peak = max(items, key=lambda r: r["score"])
            quiet.append(f"<li>{html.escape(cards.place.path(uri))}: no anomalous segment "
                         f"(peak score {peak['score']:.4g} at frame {peak['frame_index']})</li>")
        labelled = [f for (src, f), lab in (labels.frames.items() if labels else [])
                    if lab and (src is None or uri.endswith(src))]
        charts.append(score_over_time(cards.place.path(uri), [r["frame_index"] for r in items],
                                      [r["score"] for r in items], segments.get(uri, []), labelled, threshold))
    out = ["<h2>Video events</h2>",
           f'<div class="gallery" id="video-events">{"".join(event_cards)}</div>' if event_cards
           else "<p>No anomalous video event.</p>"]
    if quiet:
        out.append(f'<ul id="quiet-videos">{"".join(quiet)}</ul>')
    return "".join(out + charts)


def labelled_mistakes(cards: CardMaker, decisions: dict[str, list], top_k: int) -> str:
    if not decisions:
        return ""
    out = []
    for key, anchor, title, empty in (
            ("missed", "missed", "Missed defects (false negatives)", "No labelled defect was missed."),
            ("false_alarms", "false-alarms", "False alarms (false positives)", "No normal image was flagged.")):
        found = decisions[key]
        more = f"<p>… and {len(found) - top_k} more.</p>" if len(found) > top_k else ""
        body = (f'<div class="gallery">{"".join(cards.card(r, lab) for r, lab in found[:top_k])}</div>{more}'
                if found else f"<p>{empty}</p>")
        out.append(f'<section id="{anchor}"><h2>{title}: {len(found)}</h2>{body}</section>')
    return "".join(out)


def _reason(row: dict[str, Any]) -> tuple[str, str]:
    """An unscored row's reason (the error text up to its first colon) and the rest of the text."""
    text = clean_error(row.get("error")) or "no reason recorded"
    head, sep, detail = text.partition(": ")
    reason, detail = (head, detail) if sep and len(head) <= 80 else (text, "")
    return (reason if row["status"] == "error" else f"{row['status']}: {reason}"), detail


def errors_by_reason(place: Place, rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if r["status"] != "ok"]
    if not failed:
        return '<section id="errors"><h2>Not scored: none</h2><p>Every input was scored.</p></section>'
    groups: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for r in failed:
        reason, detail = _reason(r)
        groups[reason].append((r, detail))
    parts = []
    for reason, items in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        listed = "".join(f'<li><span class="path">{html.escape(place.name(r))}</span>'
                         + (f" — {html.escape(detail)}" if detail else "") + "</li>"
                         for r, detail in items[:MAX_ERRORS_LISTED])
        more = f"<li>… and {len(items) - MAX_ERRORS_LISTED} more</li>" if len(items) > MAX_ERRORS_LISTED else ""
        parts.append(f'<div class="reason" data-reason="{html.escape(reason)}"><h3>{html.escape(reason)} '
                     f'<span class="count">{len(items)}</span></h3><ul>{listed}{more}</ul></div>')
    return (f'<section id="errors"><h2>Not scored: {len(failed)} inputs, {len(groups)} reasons</h2>'
            f'{"".join(parts)}</section>')


def scores_section(images: list[dict[str, Any]], decisions: dict[str, list], labels: Labels | None,
                   threshold: float | None) -> str:
    matched = decisions.get("all") or [(r, lab) for r in images if labels and (lab := image_label(r, labels))]
    if matched:
        y = np.array([lab.label for _, lab in matched])
        s = np.array([r["score"] for r, _ in matched], dtype=np.float64)
        series = {"normal": s[y == 0].tolist(), "defective": s[y == 1].tolist()}
        out = histograms({k: v for k, v in series.items() if v}, "labelled images", threshold)
        return out + (roc_and_pr(y, s) if 0 < y.sum() < len(y) else "")
    if images:
        per_folder: dict[str, list[float]] = defaultdict(list)
        for r in images:
            per_folder[posixpath.basename(posixpath.dirname(r["source_uri"])) or "(root)"].append(r["score"])
        return histograms(dict(sorted(per_folder.items())), "images per source folder", threshold)
    return ""


def metric_summary(result: dict[str, Any]) -> str:
    rows = "".join(f'<tr data-key="{key}"><th>{name}</th><td>{_fmt(result[key])}</td><td class="explain">'
                   f"{html.escape(meaning)}</td></tr>" for key, (name, meaning) in METRICS.items()
                   if key in result)
    confusion = result.get("confusion_at_run_threshold")
    if confusion:
        n_def, n_norm = confusion["tp"] + confusion["fn"], confusion["fp"] + confusion["tn"]
        rows += (f'<tr data-key="confusion"><th>At the run\'s threshold</th><td>{confusion["tp"]} of {n_def} '
                 f'defective flagged, {confusion["fp"]} of {n_norm} normal flagged</td><td class="explain">'
                 f"true positives and false alarms of the labelled images</td></tr>")
    return f'<table id="metric-summary">{rows}</table>' if rows else ""


def group_table(groups: dict[str, dict[str, Any]]) -> str:
    if not groups:
        return ""
    keys = sorted({k for g in groups.values() for k in g})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(g.get(k))}</td>" for k in keys) + "</tr>"
                   for name, g in groups.items())
    return f'<h3>Per label group</h3><table id="groups"><tr><th>group</th>{head}</tr>{body}</table>'


def raw_table(result: dict[str, Any]) -> str:
    rows = "".join(f'<tr><th>{html.escape(k)}</th><td data-key="{html.escape(k)}">{_fmt(v)}</td></tr>'
                   for k, v in result.items() if not isinstance(v, dict | list))
    confusion = result.get("confusion_at_run_threshold")
    if confusion:
        rows += "".join(f'<tr><th>confusion {k}</th><td data-key="confusion.{k}">{v}</td></tr>'
                        for k, v in confusion.items())
    return f'<h2>Every number of evaluation.json</h2><table id="metrics">{rows}</table>'


def build_report(storage: Any, run_uri: str, rows: list[dict[str, Any]], videos: list[dict[str, Any]],
                 result: dict[str, Any], labels: Labels | None, top_k: int, summary: dict[str, Any] | None = None
                 ) -> str:
    """The page; ``summary`` is the run's ``summary.json`` (input root, random weights, inspected fraction)."""
    summary = summary or {}
    threshold = next((r.get("threshold") for r in rows if r.get("threshold") is not None), summary.get("threshold"))
    images = [r for r in rows if r["status"] == "ok" and r.get("frame_index") is None]
    decisions = decisions_of(images, labels)
    place = Place(summary.get("input_uri") or summary.get("input"))  # input_uri: absolute, as the rows' URIs
    cards = CardMaker(storage, place, summary.get("inspected_fraction"))
    name = run_uri.rstrip("/").rsplit("/", 1)[-1]
    sections = [
        f"<h1>Anomaly report: {html.escape(name)}</h1>",
        f'<p class="sub">run {html.escape(run_uri)}'
        + (f" · input {html.escape(summary['input'])}" if summary.get("input") else "") + "</p>",
        random_weights_banner(summary),
        summary_card(rows, videos, result, summary, threshold, decisions),
        problems(result),
        f"<h2>Most anomalous images (top {min(top_k, len(images))} of {len(images)})</h2>",
        colour_bar(threshold, summary.get("inspected_fraction")),
        gallery(cards, images, labels, top_k),
        video_events(cards, rows, videos, result, labels, threshold),
        labelled_mistakes(cards, decisions, top_k),
        errors_by_reason(place, rows),
    ]
    charts = scores_section(images, decisions, labels, threshold)
    if charts:
        sections += ["<h2>Scores</h2>", charts]
    readable = metric_summary(result)
    if readable:
        sections += ["<h2>Metrics</h2>", readable, group_table(result.get("groups", {}))]
    sections.append(raw_table(result))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>anomaly report {html.escape(name)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
