"""SAA+'s hybrid-prompt stages as plain tensor functions, one job each (the detector chains them).

Each stage computes what the official code (caoyunkang/Segment-Any-Anomaly, ``SAA/model.py``) computes at that
point, unless a setting asks for one of our variants; ``tests/detectors/saa/test_official_saa.py`` holds them to
the official outputs. GroundingDINO boxes are ``[Q,4]`` normalised ``(cx, cy, w, h)``; pixel boxes are ``(x0, y0,
x1, y1)``; masks are boolean ``[N,H,W]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

SaliencyRule = Literal["farthest", "nearest"]
Fusion = Literal["official", "mean"]


def box_scores(token_probs: Tensor) -> Tensor:
    """A box's score: its highest token probability over the whole caption, special tokens ([CLS], [SEP], full
    stops) included, as the official ``logits.max(dim=1)``. ``token_probs``: ``[Q, n]`` sigmoid of
    GroundingDINO's logits over the caption's ``n`` tokens."""
    return token_probs.max(-1).values


def box_area(boxes: Tensor) -> Tensor:
    """``w * h`` of normalised ``(cx, cy, w, h)`` boxes: the fraction of the image, unclamped, as officially."""
    return boxes[:, 2] * boxes[:, 3]


def names_the_object(token_probs: Tensor, input_ids: list[int], tokenizer, text_threshold: float,
                     filter_word: str | None) -> Tensor:
    """``[Q]`` bool: the official phrase filter. A box's phrase is the tokenizer's decoding of every caption token
    above ``text_threshold`` (``get_phrases_from_posmap``); the box is the object, not a defect, when
    ``filter_word`` occurs in that phrase (``pred_phrase.count(filtered_phrase) > 0``)."""
    if not filter_word:
        return torch.zeros(len(token_probs), dtype=torch.bool, device=token_probs.device)
    above = (token_probs > text_threshold).cpu()
    return torch.tensor([filter_word in tokenizer.decode([input_ids[i] for i in torch.nonzero(row).flatten().tolist()])
                         for row in above], dtype=torch.bool, device=token_probs.device)


def filter_proposals(boxes: Tensor, token_probs: Tensor, input_ids: list[int], tokenizer, filter_word: str | None,
                     box_threshold: float, text_threshold: float, max_area: float, min_area: float = 0.0
                     ) -> tuple[Tensor, Tensor]:
    """One caption's surviving proposals (official ``bbox_suppression``): indices into ``boxes`` and their box
    scores. A box survives with a score above ``box_threshold``, an area strictly between ``min_area`` and
    ``max_area`` (fractions of the image) and a phrase that does not name the object (``filter_word``)."""
    scores = box_scores(token_probs)
    area = box_area(boxes)
    keep = torch.nonzero((scores > box_threshold) & (area < max_area) & (area > min_area)).flatten()
    if len(keep):
        keep = keep[~names_the_object(token_probs[keep], input_ids, tokenizer, text_threshold, filter_word)]
    return keep, scores[keep]


def gdino_input_size(height: int, width: int, shorter: int = 800, longest: int = 1333) -> tuple[int, int]:
    """``(h, w)`` GroundingDINO sees an image at: the shorter side ``shorter`` and the other in proportion
    (truncated), unless that makes the longer side exceed ``longest`` (official ``RandomResize([800], 1333)``)."""
    small, large = min(height, width), max(height, width)
    if large / small * shorter > longest:
        shorter = int(round(longest * small / large))
    if small == shorter:
        return height, width
    if width < height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def to_pixels(boxes: Tensor, height: int, width: int) -> Tensor:
    """Normalised ``(cx, cy, w, h)`` to pixel ``(x0, y0, x1, y1)`` on a ``height x width`` image (unclamped)."""
    cx, cy, w, h = (boxes * boxes.new_tensor([width, height, width, height])).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def inside_fraction(boxes: Tensor, region: Tensor) -> Tensor:
    """The fraction of each pixel box's pixels that lie on ``region`` (``[H,W]`` bool); 0 for an empty box."""
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
    """Location prompt (the paper's; not in the official code): which pixel boxes have at least ``min_inside`` of
    their pixels on the object ``region``."""
    return inside_fraction(boxes, region) >= min_inside


def top_k(scores: Tensor, k: int) -> Tensor:
    """Confidence prompt: indices of the ``k`` highest scores (all, if fewer), best first."""
    return torch.argsort(scores, descending=True)[:k]


def _distances(flat: Tensor) -> Tensor:
    """``[C,n]`` L2-normalised features -> ``[n, n]`` distances ``(1 - cos) / 2``."""
    return 0.5 * (1 - flat.T @ flat)


def single_instance_saliency(features: Tensor, neighbors: int, rule: SaliencyRule = "farthest") -> Tensor:
    """``[h,w]``: each position's mean distance to ``neighbors`` other positions of the image. ``farthest``
    (official: the distances sorted in descending order, the first ``neighbors`` averaged): a region unlike most
    of the image scores high. ``nearest`` (the paper's wording): its nearest other positions, so a region with no
    close match anywhere stands out and a repeated texture does not."""
    _, h, w = features.shape
    dist = _distances(features.flatten(1))
    k = max(1, min(neighbors, h * w - (rule == "nearest")))
    if rule == "nearest":
        dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=rule == "farthest").values.mean(1).view(h, w)


def multi_instance_saliency(features: Tensor, instances: Tensor) -> Tensor:
    """``[h,w]`` (official multi-instance strategy): for positions on object instance ``i`` (``instances``
    ``[n,h,w]`` bool at the feature grid), ``(1 - s) / 2`` with ``s`` the highest similarity to a position on any
    *other* instance, where positions of instance ``i`` count as zero vectors (the official code zeroes them
    before gathering the others); the maximum over instances; 0 off the objects. The odd one out among similar
    objects stands out. An empty instance, or one with no other instance, is skipped (the official code fails)."""
    _, h, w = features.shape
    flat = features.flatten(1)
    masks = instances.flatten(1)
    out = torch.zeros(len(masks), h * w, dtype=features.dtype, device=features.device)
    for i in range(len(masks)):
        own, others = masks[i], masks.clone()
        others[i] = False
        others = others.any(0)
        if not own.any() or not others.any():
            continue
        gathered = flat[:, others] * ~own[others]
        out[i, own] = 0.5 * (1 - (flat[:, own].T @ gathered).max(1).values)
    return out.max(0).values.view(h, w)


def rescore(scores: Tensor, masks: Tensor, saliency: Tensor, gain: float) -> Tensor:
    """Image-context prompt: each mask's confidence times ``exp(gain * mean saliency on the mask)``; an empty
    mask keeps its confidence."""
    area = masks.flatten(1).sum(1)
    mean = (masks.flatten(1).to(saliency.dtype) @ saliency.flatten()) / area.clamp(min=1)
    return scores * torch.where(area > 0, torch.exp(gain * mean), torch.ones_like(mean))


def fuse(masks: Tensor, scores: Tensor, fusion: Fusion = "official") -> Tensor:
    """``[H,W]`` anomaly map from the kept masks and confidences. ``official``: the summed confidences of the
    masks covering a pixel over ``1 +`` their count (the official weight map starts at one), so one mask at 0.5
    scores 0.25 and three overlapping masks at 0.4 score 0.3; ``mean``: the mean confidence of the covering
    masks (0.5 and 0.4). 0 where no mask is."""
    m = masks.to(scores.dtype)
    covered = m.sum(0)
    total = (m * scores.view(-1, 1, 1)).sum(0)
    if fusion == "official":
        return total / (1 + covered)
    return torch.where(covered > 0, total / covered.clamp(min=1), covered)


def resize_map(x: Tensor, height: int, width: int | None = None) -> Tensor:
    """``[..., h, w]`` float to ``[..., height, width]`` (bilinear, half-pixel centres: OpenCV's INTER_LINEAR)."""
    lead = x.shape[:-2]
    width = height if width is None else width
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).to(torch.float64 if x.dtype == torch.float64 else
                                                              torch.float32),
                        size=(height, width), mode="bilinear", align_corners=False)
    return out.view(*lead, height, width)


def resize_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """``[N,H,W]`` bool to ``[N,height,width]`` by nearest neighbour (OpenCV's INTER_NEAREST: ``floor(i * H /
    height)``), as the official code brings object masks to the saliency grid."""
    if masks.shape[-2:] == (height, width):
        return masks
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest")[:, 0] > 0.5


def saliency_features(taps: dict[str, Tensor], layers: list[str]) -> Tensor:
    """``[B,C,h,w]``: the saliency network's taps, later layers brought to the first one's grid by nearest
    neighbour (the official ``F.interpolate`` default), concatenated and L2-normalised over channels."""
    first = taps[layers[0]]
    maps = [first] + [F.interpolate(taps[name], size=first.shape[-2:], mode="nearest") for name in layers[1:]]
    return F.normalize(torch.cat(maps, dim=1), dim=1)
