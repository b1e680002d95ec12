"""Auxiliary labelled data in MVTec-style folders, for training the CLIP-based detectors.

Layout (one category, or several side by side under the root)::

    {category}/train/good/*.png                 normal
    {category}/test/good/*.png                  normal
    {category}/test/{defect}/NAME.png           anomalous
    {category}/ground_truth/{defect}/NAME_mask.png   its mask (NAME.png is accepted too)
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DecodeSettings
from pipeline.errors import DecodeError
from pipeline.features.preprocess import Preprocess
from pipeline.io.decode import decode_image
from pipeline.io.sources import is_image
from pipeline.io.storage import Storage


@dataclass
class LabelledSet:
    uris: list[str]
    images: torch.Tensor  # [N,3,S,S] in 0..1
    labels: torch.Tensor  # [N] 0 normal, 1 anomalous
    masks: torch.Tensor  # [N,S,S] in {0,1}; zeros for normal images


def _split_kind(uri: str) -> tuple[str, str] | None:
    """``(split, kind)`` for ``.../{train|test}/{kind}/file``, else None (masks, other files)."""
    parts = uri.split("/")
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2]
    return None


def _mask_uri(uri: str, files: set[str]) -> str | None:
    head, name = posixpath.split(uri)
    kind_dir, kind = posixpath.split(head)
    category = posixpath.dirname(kind_dir)
    stem, ext = posixpath.splitext(name)
    for candidate in (f"{stem}_mask{ext}", name, f"{stem}_mask.png"):
        path = posixpath.join(category, "ground_truth", kind, candidate)
        if path in files:
            return path
    return None


def load_labelled(storage: Storage, uri: str, preprocess: Preprocess, decode: DecodeSettings = DecodeSettings()
                  ) -> LabelledSet:
    files = storage.list_files(uri)
    present = set(files)
    uris, images, labels, masks = [], [], [], []
    for path in files:
        where = _split_kind(path)
        if where is None or not is_image(path):
            continue
        try:
            rgb = decode_image(storage.read_bytes(path), decode.max_pixels)
        except DecodeError:
            continue  # an unreadable training image is skipped, not fatal
        anomalous = where[1] != "good"
        size = preprocess.size
        mask = torch.zeros(preprocess.input_size, preprocess.input_size)
        mask_path = _mask_uri(path, present) if anomalous else None
        if mask_path:
            grey = decode_image(storage.read_bytes(mask_path), decode.max_pixels)[..., 0]
            grey_t = torch.from_numpy((grey > 127).astype(np.float32))[None, None]
            resized = F.interpolate(grey_t, size=(size, size), mode="nearest")[0, 0]
            mask = (preprocess.crop_square(resized) > 0.5).float()
        uris.append(path)
        images.append(preprocess(rgb))
        labels.append(int(anomalous))
        masks.append(mask)
    if not uris or all(labels) or not any(labels):
        raise ValueError(f"aux={uri}: need normal (…/good/) and anomalous (…/test/<defect>/) images, "
                         f"found {len(uris) - sum(labels)} normal and {sum(labels)} anomalous")
    return LabelledSet(uris, torch.stack(images), torch.tensor(labels), torch.stack(masks))
