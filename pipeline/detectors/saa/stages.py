"""SAA+'s hybrid-prompt stages as plain tensor functions, one job each (the detector chains them).

Boxes are ``[N,4]`` ``(x0, y0, x1, y1)`` in pixels of the working resolution unless said otherwise; masks are
boolean ``[N,H,W]`` at that resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor, size: int) -> Tensor:
    """GroundingDINO's normalised ``(cx, cy, w, h)`` to pixel corners at ``size``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1) * size


def box_area_fraction(boxes: Tensor, size: int) -> Tensor:
    """Area of each box as a fraction of the ``size x size`` image."""
    return ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)) / (size * size)


def keep_small(boxes: Tensor, size: int, max_area: float) -> Tensor:
    """Area prompt: which boxes cover less than ``max_area`` of the image (the caller scales it by the object)."""
    return box_area_fraction(boxes, size) < max_area


def inside_fraction(boxes: Tensor, region: Tensor) -> Tensor:
    """The fraction of each box's pixels that lie on ``region`` (``[H,W]`` bool); 0 for an empty box."""
    if len(boxes) == 0:
        return torch.zeros(0, device=region.device)
    h, w = region.shape
    ys = torch.arange(h, device=region.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=region.device).view(1, 1, w) + 0.5
    b = boxes.view(-1, 4, 1, 1)
    in_box = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
    pixels = in_box.flatten(1).sum(1)
    on_region = (in_box & region).flatten(1).sum(1)
    return torch.where(pixels > 0, on_region / pixels.clamp(min=1), torch.zeros_like(pixels, dtype=torch.float))


def keep_inside(boxes: Tensor, region: Tensor, min_inside: float) -> Tensor:
    """Location prompt: which boxes have at least ``min_inside`` of their pixels on the object ``region``."""
    return inside_fraction(boxes, region) >= min_inside


def find_objects(boxes: Tensor, scores: Tensor, threshold: float, instances: int, size: int, limit: int) -> Tensor:
    """Object property prompt: the boxes of the object-name caption above ``threshold`` and smaller than
    ``1 / instances`` of the image, at most ``limit``, the most confident."""
    keep = (scores > threshold) & keep_small(boxes, size, 1.0 / instances)
    return boxes[keep][top_k(scores[keep], limit)]


def regularise_proposals(proposals: list[tuple[Tensor, Tensor, Tensor]], threshold: float, object_boxes: Tensor,
                         region: Tensor, max_area: float, min_inside: float, limit: int) -> tuple[Tensor, Tensor]:
    """One image's candidate boxes and confidences from every caption's ``(boxes [Q,4], scores [Q], is_object
    [Q])``: above ``threshold``, not the object itself, smaller than ``max_area`` of the object's (largest) box, or
    of the image if no object was found, and with ``min_inside`` of their pixels on the object ``region`` (when it
    is not empty); at most ``limit``, the most confident (each one costs a SAM decoding and a mask)."""
    size = region.shape[-1]
    object_area = float(box_area_fraction(object_boxes, size).max()) if len(object_boxes) else 1.0
    kept_boxes, kept_scores = [], []
    for boxes, scores, is_object in proposals:
        keep = (scores > threshold) & ~is_object & keep_small(boxes, size, max_area * object_area)
        if region.any():
            keep &= keep_inside(boxes, region, min_inside)
        kept_boxes.append(boxes[keep])
        kept_scores.append(scores[keep])
    boxes, scores = torch.cat(kept_boxes), torch.cat(kept_scores)
    best = top_k(scores, limit)
    return boxes[best], scores[best]


def top_k(scores: Tensor, k: int) -> Tensor:
    """Confidence prompt: indices of the ``k`` highest scores (all, if fewer), best first."""
    return torch.argsort(scores, descending=True)[:k]


def _distances(features: Tensor) -> Tensor:
    """``[C,h,w]`` L2-normalised features -> ``[h*w, h*w]`` cosine distances ``(1 - cos) / 2``."""
    flat = features.flatten(1)
    return (1 - flat.T @ flat).clamp(min=0) / 2


def single_instance_saliency(features: Tensor, neighbors: int) -> Tensor:
    """``[h,w]``: each position's mean distance to its ``neighbors`` nearest *other* positions. A region unlike
    the rest of the image has no close neighbours and stands out; a repeated texture does not."""
    _, h, w = features.shape
    dist = _distances(features)
    dist.fill_diagonal_(float("inf"))
    k = max(1, min(neighbors, h * w - 1))
    return dist.topk(k, dim=1, largest=False).values.mean(1).view(h, w)


def multi_instance_saliency(features: Tensor, instances: Tensor) -> Tensor:
    """``[h,w]``: for positions on object instance ``i`` (``instances`` ``[n,h,w]`` bool, n >= 2), the distance
    to the nearest position on any *other* instance; the maximum over instances; 0 off the objects. The odd one
    out among similar objects stands out."""
    _, h, w = features.shape
    flat = features.flatten(1)
    masks = instances.flatten(1)
    out = torch.zeros(h * w, device=features.device)
    for i in range(len(masks)):
        own, others = masks[i], masks.clone()
        others[i] = False
        others = others.any(0) & ~own
        if not own.any() or not others.any():
            continue
        sim = flat[:, own].T @ flat[:, others]
        out[own] = torch.maximum(out[own], (1 - sim.max(1).values).clamp(min=0) / 2)
    return out.view(h, w)


def rescore(scores: Tensor, masks: Tensor, saliency: Tensor, gain: float) -> Tensor:
    """Image-context prompt: each mask's confidence times ``exp(gain * mean saliency on the mask)``; an empty
    mask keeps its confidence."""
    area = masks.flatten(1).sum(1)
    mean = (masks.flatten(1).float() @ saliency.flatten()) / area.clamp(min=1)
    return scores * torch.where(area > 0, torch.exp(gain * mean), torch.ones_like(mean))


def fuse(masks: Tensor, scores: Tensor) -> Tensor:
    """``[H,W]`` anomaly map: at each pixel the mean confidence of the masks covering it, 0 where none does."""
    m = masks.float()
    covered = m.sum(0)
    return torch.where(covered > 0, (m * scores.view(-1, 1, 1)).sum(0) / covered.clamp(min=1), covered)


def resize_map(x: Tensor, size: int) -> Tensor:
    """``[..., h, w]`` float to ``[..., size, size]`` (bilinear)."""
    lead = x.shape[:-2]
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=(size, size), mode="bilinear",
                        align_corners=False)
    return out.view(*lead, size, size)
