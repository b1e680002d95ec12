"""Ground truth for a scored run: which rows are anomalous, and their masks.

Labels (``--labels``, several separated by commas):

- an MVTec AD / VisA-style folder: ``.../test/good/NAME`` normal, ``.../test/<defect>/NAME`` anomalous,
  masks in ``.../ground_truth/<defect>/STEM_mask.png`` (``NAME`` accepted too). A row matches a label by
  the longest common tail of their paths of at least two parts (``test/<defect>/<name>``, else
  ``<defect>/<name>``: a tar member's path is ``TAR/MEMBER``), and only where that tail is unique.
- a CSV ``source,label`` (images: ``source`` matches the end of a row's path), or ``source,frame_index,label``
  / ``frame_index,label`` (video frames, as before);
- a CSV or Parquet of per-row labels: ``source_uri,label`` (+ ``member_index``, ``frame_index``), exact keys.

Pixel metrics need the run's raw maps (``jobs.score --maps``); each mask is checked against the image size
of its row, then resized to the map's size by nearest neighbour (the maps are at the scored resolution).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.io.sources import IMAGE_EXTENSIONS


def parse_labels(text: str) -> dict[tuple[str | None, int], int]:
    """Frame labels from CSV ``frame_index,label`` (one video) or ``source,frame_index,label``."""
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or [])
    if not {"frame_index", "label"} <= fields:
        raise ValueError(f"labels: need columns frame_index,label (and optionally source); got {sorted(fields)}")
    labels = {}
    for line, row in enumerate(reader, start=2):
        try:
            labels[(row.get("source") or None, int(row["frame_index"]))] = int(row["label"])
        except ValueError as exc:
            raise ValueError(f"labels line {line}: {exc}") from exc
    return labels


@dataclass
class ImageLabel:
    label: int
    group: str
    mask_uri: str | None = None  # anomalous image with a mask; normal images have an all-zero mask


@dataclass
class Labels:
    """Ground truth, from one or more label sources."""

    by_tail: dict[str, list[tuple[str, ImageLabel]]] = field(default_factory=lambda: defaultdict(list))
    by_suffix: dict[str, ImageLabel] = field(default_factory=dict)  # CSV source,label
    by_key: dict[tuple, ImageLabel] = field(default_factory=dict)  # per-row (source_uri, member_index, frame)
    frames: dict[tuple[str | None, int], int] = field(default_factory=dict)
    masks_available: bool = False

    @property
    def n_image_labels(self) -> int:
        return len({k for items in self.by_tail.values() for k, _ in items}) + len(self.by_suffix) + len(self.by_key)


def row_path(row: dict[str, Any]) -> str:
    """A row's path: its source, or ``TAR/MEMBER`` for a tar member."""
    return f"{row['source_uri']}/{row['member']}" if row.get("member") else row["source_uri"]


def _parts(path: str) -> list[str]:
    return [p for p in path.replace("\\", "/").split("/") if p]


def _load_folder(storage: Any, uri: str, labels: Labels) -> int:
    files = storage.list_files(uri)
    present = set(files)
    from pipeline.io.labelled import _mask_uri

    n = 0
    for path in files:
        parts = _parts(path)
        if len(parts) < 3 or parts[-3] != "test" or not path.lower().endswith(IMAGE_EXTENSIONS):
            continue
        kind = parts[-2]
        item = ImageLabel(int(kind != "good"), kind, _mask_uri(path, present) if kind != "good" else None)
        labels.masks_available |= item.mask_uri is not None
        for length in range(2, len(parts) + 1):
            labels.by_tail["/".join(parts[-length:])].append((path, item))
        n += 1
    return n


def _read_table(storage: Any, uri: str) -> list[dict[str, Any]]:
    data = storage.read_bytes(uri)
    if uri.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def _load_table(storage: Any, uri: str, labels: Labels) -> int:
    table = _read_table(storage, uri)
    fields = set(table[0]) if table else set()
    if "label" not in fields:
        raise ValueError(f"{uri}: need a label column; got {sorted(fields)}")
    for line, row in enumerate(table, start=2):
        try:
            label = int(row["label"])
            if label not in (0, 1):
                raise ValueError(f"label must be 0 or 1, got {label}")
            group = str(row.get("group") or ("anomalous" if label else "good"))
            if "source_uri" in fields:
                key = (row["source_uri"], _int(row.get("member_index")), _int(row.get("frame_index")))
                labels.by_key[key] = ImageLabel(label, group)
            elif "frame_index" in fields:
                labels.frames[(row.get("source") or None, int(row["frame_index"]))] = label
            elif "source" in fields:
                labels.by_suffix[row["source"]] = ImageLabel(label, group)
            else:
                raise ValueError(f"need source, source_uri or frame_index; got {sorted(fields)}")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{uri} line {line}: {exc}") from exc
    return len(table)


def load_labels(storage: Any, spec: str) -> Labels:
    labels = Labels()
    for uri in [u.strip() for u in spec.split(",") if u.strip()]:
        if uri.lower().endswith((".csv", ".parquet")):
            n = _load_table(storage, uri, labels)
        else:
            n = _load_folder(storage, uri, labels)
        if n == 0:
            raise ValueError(f"{uri}: no labels found (want test/<defect>/ images, or rows of a CSV/Parquet)")
    return labels


def image_label(row: dict[str, Any], labels: Labels) -> ImageLabel | None:
    key = (row["source_uri"], row.get("member_index"), row.get("frame_index"))
    if key in labels.by_key:
        return labels.by_key[key]
    if row.get("frame_index") is not None:
        return None
    path = row_path(row)
    for source, item in labels.by_suffix.items():
        if path == source or path.endswith("/" + source.lstrip("/")):
            return item
    parts = _parts(path)
    for length in range(len(parts), 1, -1):
        found = labels.by_tail.get("/".join(parts[-length:]))
        if found:
            return found[0][1] if len({p for p, _ in found}) == 1 else None
    return None


def load_mask(storage: Any, uri: str) -> np.ndarray:
    from pipeline.io.decode import decode_image

    return decode_image(storage.read_bytes(uri), 1 << 31)[..., 0] > 127


