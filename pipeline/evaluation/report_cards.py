"""The report's pictures of single inputs: thumbnails with their captions, and the heatmap colour bar.

A caption names its input so that no two inputs read the same: the path below the run's input
(``good/0003.png`` and ``defect/0003.png`` stay apart), the tar member (a loose file and its copy
in a tar stay apart), the video frame and time, and the score.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

import pipeline.evaluation.metrics as metrics
from pipeline.evaluation.labels import ImageLabel, load_mask
from pipeline.io.decode import decode_image
from pipeline.results.heatmaps import RAMP, SCALE_SPAN

THUMB = 224
MAX_SOURCE_BYTES = 16 * 1024 * 1024  # an input without a heatmap is shown from its file only below this size
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def clean_error(text: str | None) -> str:
    """An error text as a reader needs it: without Python object reprs, whose address changes every run."""
    return _OBJECT_REPR.sub("", text or "").strip()


@dataclass(frozen=True)
class Place:
    """How the report names where an input came from, relative to the run's input."""

    input_uri: str | None

    def path(self, source_uri: str) -> str:
        root = (self.input_uri or "").rstrip("/")
        if root and source_uri.startswith(root + "/"):
            return source_uri[len(root) + 1:]
        if root and source_uri == root:
            return source_uri.rsplit("/", 1)[-1]
        return source_uri

    def caption(self, row: dict[str, Any]) -> str:
        """The caption lines naming ``row``'s input: path, tar member, frame and time."""
        lines = [f'<span class="path" title="{html.escape(row["source_uri"])}">'
                 f'{html.escape(self.path(row["source_uri"]))}</span>']
        if row.get("member"):
            lines.append(f'<span class="member">tar member {html.escape(row["member"])}</span>')
        if row.get("frame_index") is not None:
            when = f" · {row['timestamp_s']:.2f} s" if row.get("timestamp_s") is not None else ""
            lines.append(f'<span class="frame">frame {row["frame_index"]}{when}</span>')
        return "<br>".join(lines)

    def name(self, row: dict[str, Any]) -> str:
        """One line for ``alt`` texts and lists."""
        text = self.path(row["source_uri"])
        if row.get("member"):
            text += f" › {row['member']}"
        if row.get("frame_index") is not None:
            text += f" frame {row['frame_index']}"
        return text


def data_uri(image: Image.Image) -> str:
    image = image.convert("RGB")
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def picture(storage: Any, row: dict[str, Any]) -> tuple[Image.Image | None, str]:
    """The heatmap overlay of ``row``, else its loose source file; and what the picture is."""
    if row.get("heatmap_uri"):
        try:
            image = Image.open(io.BytesIO(storage.read_bytes(row["heatmap_uri"])))
            image.load()
            return image, "heatmap"
        except Exception:  # noqa: BLE001 - a missing heatmap leaves a card without a picture, not a broken img
            return None, "heatmap unreadable"
    if row.get("member") is None and row.get("frame_index") is None:
        try:
            if storage.size(row["source_uri"]) <= MAX_SOURCE_BYTES:
                return Image.fromarray(decode_image(storage.read_bytes(row["source_uri"]), 1 << 26)), "input"
        except Exception:  # noqa: BLE001 - the input is gone or unreadable now: no picture
            pass
    return None, "no heatmap in this run"


def outline_mask(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The mask's outline drawn in green over ``image``."""
    m = metrics.resize_nearest(mask, (image.height, image.width))
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[m & ~inner] = (0, 255, 0)
    return Image.fromarray(pixels)


def frame_inspected(image: Image.Image, inspected_fraction: float) -> Image.Image:
    """A dashed white frame around the centred part the model scored; outside it nothing was inspected."""
    image = image.convert("RGB")
    w, h = image.size
    x0, y0 = round(w * (1 - inspected_fraction) / 2), round(h * (1 - inspected_fraction) / 2)
    x1, y1 = w - 1 - x0, h - 1 - y0
    draw = ImageDraw.Draw(image)
    dash = max(2, w // 40)
    for x in range(x0, x1, 2 * dash):
        draw.line([(x, y0), (min(x + dash, x1), y0)], fill="white")
        draw.line([(x, y1), (min(x + dash, x1), y1)], fill="white")
    for y in range(y0, y1, 2 * dash):
        draw.line([(x0, y), (x0, min(y + dash, y1))], fill="white")
        draw.line([(x1, y), (x1, min(y + dash, y1))], fill="white")
    return image


@dataclass(frozen=True)
class CardMaker:
    """Builds the figure for one input: its picture with the mask outline and inspected frame, and its caption."""

    storage: Any
    place: Place
    inspected_fraction: float | None

    def card(self, row: dict[str, Any], label: ImageLabel | None = None, note: str = "") -> str:
        image, kind = picture(self.storage, row)
        extra = []
        if label is not None:
            extra.append(f'<span class="label">labelled {"defect" if label.label else "normal"} '
                         f'({html.escape(label.group)})</span>')
            if label.mask_uri and image is not None:
                try:
                    image = outline_mask(image, load_mask(self.storage, label.mask_uri))
                    extra.append('<span class="note">green: the labelled defect</span>')
                except Exception:  # noqa: BLE001 - an unreadable mask: the card without its outline
                    extra.append('<span class="note">mask unreadable</span>')
        if image is not None and self.inspected_fraction is not None and self.inspected_fraction < 1:
            image = frame_inspected(image, self.inspected_fraction)
        flag = ' <span class="flag">flagged</span>' if row.get("is_anomaly") else ""
        score = f'<span class="score">{row["score"]:.4f}</span>{flag}'
        body = (f'<img src="{data_uri(image)}" alt="{html.escape(self.place.name(row))}">' if image is not None
                else f'<div class="nopic">{html.escape(kind)}</div>')
        lines = [score, self.place.caption(row), *extra] + ([note] if note else [])
        return f'<figure class="card">{body}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def colour_bar(threshold: float | None, inspected_fraction: float | None) -> str:
    """The heatmap colour scale as the score job draws it (``heatmaps.blend``), threshold marked."""
    stops = ", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f}) {100 * i / (len(RAMP) - 1):.0f}%"
                      for i, (r, g, b) in enumerate(RAMP))
    mid = 100 / SCALE_SPAN
    if threshold is not None:
        ticks = (f'<span style="left:0">0</span>'
                 f'<span class="threshold-mark" style="left:{mid:.0f}%">threshold {threshold:.4g}</span>'
                 f'<span style="left:100%">{SCALE_SPAN * threshold:.4g} and above</span>')
        text = (f"Heatmap colour: a pixel's anomaly score, on one scale for every image: from 0 (dark blue) to "
                f"{SCALE_SPAN * threshold:.4g} (yellow), the run's threshold {threshold:.4g} in the middle (red). "
                "The colours are blended over the image.")
    else:
        ticks = '<span style="left:0">0</span><span class="threshold-mark" style="left:50%">the image\'s maximum</span>'
        text = ("Heatmap colour: a pixel's anomaly score. The run has no threshold, so each heatmap is scaled to its "
                "own maximum (drawn in the middle, red): colours compare places within one image, not across images.")
    if inspected_fraction is not None and inspected_fraction < 1:
        text += " The dashed white frame is the part the model inspected; outside it nothing was scored."
    return (f'<div id="colour-bar"><div class="ramp" style="background:linear-gradient(to right, {stops})">'
            f'<div class="tick-line" style="left:{mid if threshold is not None else 50:.0f}%"></div></div>'
            f'<div class="ticks">{ticks}</div><p>{html.escape(text)}</p></div>')
