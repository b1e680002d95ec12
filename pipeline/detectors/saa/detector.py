"""SAA+ (Cao et al., "Segment Any Anomaly without Training via Hybrid Prompt Regularization"): zero-shot anomaly
segmentation with GroundingDINO and SAM (Hugging Face ``transformers``), regularised by hybrid prompts.

For each image, with the product's :class:`~pipeline.detectors.saa.prompts.PromptSet`:

1. object property prompts: GroundingDINO finds the object with its own name as the caption (boxes above
   ``box_threshold``, smaller than ``1 / instances`` of the image); SAM turns those boxes into the object masks;
   the object's area is its largest box;
2. anomaly region generator: GroundingDINO with every language prompt (the generic captions for this object, then
   the product's defect captions) proposes boxes above ``box_threshold``; a box whose best-matching caption token
   is part of the object's name is the object, not a defect, and is dropped; the area prompt drops boxes of
   ``max_area`` of the object's area or more; the location prompt drops boxes with less than ``min_inside`` of their
   pixels on the object masks (when an object was found);
3. anomaly region refiner: SAM turns the remaining boxes into masks;
4. image-context prompts: a saliency map from the self-similarity of CNN features (``pipeline/features/backbones``,
   layers 1-3 upsampled to layer 1 and L2-normalised; single instance: mean distance to the nearest
   ``saliency_neighbors`` other positions; several instances: distance to the nearest position on another
   instance) multiplies each mask's confidence by ``exp(saliency_gain x its mean saliency)``; the confidence
   prompt keeps the ``max_anomalies`` best masks;
5. the anomaly map is, at each pixel, the mean confidence of the kept masks covering it, Gaussian-smoothed
   (``sigma``); the image score is its maximum.

Slips of the official code (github.com/caoyunkang/Segment-Any-Anomaly, ``SAA/model.py``) fixed here:

- colour order: the official code reads images with OpenCV (BGR) and converts them to RGB for GroundingDINO only;
  SAM (which expects RGB) and the ImageNet saliency backbone (RGB mean/std) get BGR. Here every model gets RGB;
- prompt words picked by position: the official code parses its property sentence by word index
  (``split(' ')[7]`` is the object, ``[12]`` is K, ``[19]`` the area limit), so any rewording silently changes the
  settings (and object names come out as identifiers like ``printed_circuit_board``). Here the prompt sets are a
  validated YAML file with named fields;
- map averaging: the official map starts its per-pixel weight at 1 instead of 0, so a pixel covered by one mask
  gets half that mask's confidence (``sum / (1 + count)``). Here it is the mean of the covering masks;
- saliency neighbours: the official single-instance saliency sorts the distances in descending order and averages
  the 400 *farthest* positions; the paper (and the issue) define it over the nearest ones, as here;
- the location prompt the paper describes (candidates must lie on the object) is not in the official code (its
  docstring says so); it is applied here.

Simplifications: the pipeline feeds square images at the working resolution ``image_size`` (SAM's input size
unless set), GroundingDINO sees them at ``min(gdino_size, image_size)`` (the official code resizes the shorter side
to 800), so nothing is padded; the object-name filter uses each box's best-matching token instead of all tokens
above a text threshold; the official code min-max normalises maps over the whole test set, a batch job scores each
image on its own, so maps and scores are raw confidences (comparable within a run for a fixed prompt set); the
object is searched once per image with the union of its masks as the location region; at most ``max_candidates``
object boxes and region proposals per image (the most confident) go to SAM, where the official code refines every
box above the threshold (with random weights that is every one of GroundingDINO's 900 queries per caption).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.detectors.base import ModelRef, ScoreBatch
from pipeline.detectors.saa.models import load_gdino, load_sam, locate_weights
from pipeline.detectors.saa.prompts import PromptSet, load_prompts, packaged_text
from pipeline.detectors.saa.settings import SAASettings
from pipeline.detectors.saa.stages import (
    cxcywh_to_xyxy,
    find_objects,
    fuse,
    multi_instance_saliency,
    regularise_proposals,
    rescore,
    resize_map,
    single_instance_saliency,
    top_k,
)
from pipeline.errors import SetupError
from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from pipeline.features.preprocess import Preprocess, gaussian_blur
from pipeline.io.storage import Storage

if TYPE_CHECKING:
    from pipeline.config import ScoreConfig

SALIENCY_LAYERS = ["layer1", "layer2", "layer3"]
SAM_CHUNK = 16  # boxes per SAM mask-decoder call


def read_prompts(storage: Storage, settings: SAASettings) -> PromptSet:
    """The product's prompt set from ``prompts_config`` (path or ``s3://``) or the packaged file."""
    text = storage.read_bytes(settings.prompts_config).decode() if settings.prompts_config else packaged_text()
    return load_prompts(text, settings.prompts_config, settings.product)


def _short(fingerprint: str) -> str:
    return fingerprint[:23] if fingerprint.startswith("sha256:") else fingerprint


def _weights(storage: Storage, s: SAASettings) -> dict[str, tuple]:
    """``{"gdino": (folder or None, fingerprint), "sam": ...}`` for the two weights settings."""
    found = {}
    for model, weights, arch in (("gdino", s.gdino_weights, s.gdino_arch), ("sam", s.sam_weights, s.sam_arch)):
        folder, fingerprint = locate_weights(storage, weights, f"saa.{model}_weights", s.weights_cache)
        found[model] = (folder, fingerprint if folder else f"random:{arch}:seed={s.seed}")
    return found


def resolve_saa(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """On the driver: the prompt set (an unknown product fails here, before any work) and both weights located
    and fingerprinted. ``model_version`` = both fingerprints and the prompt set's digest."""
    s = cfg.saa
    if s.prompts_config:
        storage.check_reachable(s.prompts_config, "saa.prompts_config")
    prompts = read_prompts(storage, s)
    weights = _weights(storage, s)
    gdino, sam = weights["gdino"][1], weights["sam"][1]
    version = f"gdino={_short(gdino)};sam={_short(sam)};prompts={prompts.digest()}"
    uri = (f"gdino={s.gdino_weights};sam={s.sam_weights};prompts={s.prompts_config or 'packaged'}:"
           f"{s.product or 'generic'}")
    params = {"saa.gdino_fingerprint": gdino, "saa.sam_fingerprint": sam, "saa.prompts_digest": prompts.digest()}
    random = [name for name, (folder, _) in weights.items() if folder is None]
    warning = (f"SAA+ runs with randomly initialised {' and '.join(random)} weights: its scores mean nothing about "
               "real anomalies") if random else None
    metadata = json.dumps({"prompts": prompts.model_dump(), "gdino": gdino, "sam": sam}, indent=2).encode()
    return ModelRef(uri, version, None, params, metadata, metadata_name="saa.json", warning=warning)


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> SAADetector:
    """In a worker: the same weights and prompts the driver resolved (refused if they changed since)."""
    s = cfg.saa
    prompts = read_prompts(storage, s)
    weights = _weights(storage, s)
    found = {"saa.gdino_fingerprint": weights["gdino"][1], "saa.sam_fingerprint": weights["sam"][1],
             "saa.prompts_digest": prompts.digest()}
    for key, value in found.items():
        if model.params[key] != value:
            raise SetupError(f"{key}: {value} on this worker, {model.params[key]} when the run started; the weights "
                             "or prompts changed during the run")
    gdino, tokenizer = load_gdino(weights["gdino"][0], s.gdino_arch, s.seed, "saa.gdino_weights")
    sam = load_sam(weights["sam"][0], s.sam_arch, s.seed, "saa.sam_weights")
    saliency, _, _ = build_backbone(s.saliency_backbone, SALIENCY_LAYERS, s.saliency_weights, s.seed, storage)
    return SAADetector(gdino, tokenizer, sam, saliency, prompts, s, model.version, device)


def caption_text(caption: str) -> str:
    """GroundingDINO's caption form: lower case, ending with a full stop."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class SAADetector:
    """SAA+ behind the :class:`~pipeline.detectors.base.Detector` protocol; every image is scored on its own."""

    name = "saa"
    context_frames = 0  # scores images one by one

    def __init__(self, gdino: nn.Module, tokenizer, sam: nn.Module, saliency: nn.Module, prompts: PromptSet,
                 settings: SAASettings, version: str, device: str = "cpu"):
        self.gdino, self.sam, self.saliency = gdino.to(device), sam.to(device), saliency.to(device)
        self.tokenizer = tokenizer
        self.prompts, self.settings = prompts, settings
        self.version, self.device = version, device
        self.threshold: float | None = None
        self.sam_size = int(sam.config.vision_config.image_size)
        self.image_size = settings.image_size or self.sam_size
        self.gdino_size = min(settings.gdino_size, self.image_size)
        self.preprocess = Preprocess(self.image_size)  # a square, bilinear resize (as both HF processors), no crop
        self.max_text = int(gdino.config.max_text_len)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.object_caption = self._encode(prompts.object, object_words=False)
        self.defect_captions = [self._encode(c, object_words=True) for c in prompts.captions]

    def _encode(self, caption: str, object_words: bool) -> dict[str, Tensor]:
        """Token ids of one caption, and which tokens are words of the object's name (``object_words``)."""
        text = caption_text(caption)
        enc = self.tokenizer(text, return_tensors="pt", return_offsets_mapping=True, truncation=True,
                             max_length=self.max_text)
        offsets = enc.pop("offset_mapping")[0]
        spans = [m.span() for m in re.finditer(rf"\b{re.escape(self.prompts.object.lower())}\b", text)]
        is_object = torch.tensor([object_words and any(a <= s and e <= b for a, b in spans) and e > s
                                  for s, e in offsets.tolist()])
        special = torch.tensor([s == e or text[s:e] in ".?" for s, e in offsets.tolist()])
        return {"inputs": {k: v.to(self.device) for k, v in enc.items()},
                "is_object": is_object.to(self.device), "special": special.to(self.device)}

    def _normalised(self, images: Tensor, size: int) -> Tensor:
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (images - self.mean) / self.std

    def _propose(self, pixels: Tensor, caption: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """GroundingDINO on a batch: boxes ``[B,Q,4]`` (pixels at the working size), box scores ``[B,Q]`` and
        whether each box's best-matching token is part of the object's name ``[B,Q]``."""
        batch = pixels.shape[0]
        inputs = {k: v.expand(batch, -1) for k, v in caption["inputs"].items()}
        out = self.gdino(pixel_values=pixels, **inputs)
        n = inputs["input_ids"].shape[1]
        token_scores = out.logits[..., :n].sigmoid().masked_fill(caption["special"], 0.0)
        scores, best = token_scores.max(-1)
        return cxcywh_to_xyxy(out.pred_boxes, self.image_size), scores, caption["is_object"][best]

    def _segment(self, embedding: Tensor, boxes: Tensor) -> Tensor:
        """SAM masks ``[N,S,S]`` (bool, working size) for ``boxes`` ``[N,4]`` on one image's embedding."""
        size = self.image_size
        if len(boxes) == 0:
            return torch.zeros(0, size, size, dtype=torch.bool, device=self.device)
        masks = []
        for chunk in (boxes * (self.sam_size / size)).split(SAM_CHUNK):  # bounds the full-size float masks
            out = self.sam(image_embeddings=embedding[None], input_boxes=chunk[None], multimask_output=False)
            masks.append(resize_map(out.pred_masks[0, :, 0], size) > 0)
        return torch.cat(masks)

    def _saliency_features(self, images: Tensor) -> Tensor:
        taps = self.saliency(self._normalised(images, self.settings.saliency_size))
        first = taps[SALIENCY_LAYERS[0]]
        maps = [F.interpolate(taps[name], size=first.shape[-2:], mode="bilinear", align_corners=False)
                if name != SALIENCY_LAYERS[0] else first for name in SALIENCY_LAYERS]
        return F.normalize(torch.cat(maps, dim=1), dim=1)

    def _saliency(self, features: Tensor, objects: Tensor) -> Tensor:
        """One image's saliency ``[S,S]``: multi-instance when the product shows several objects and at least two
        were found, single-instance otherwise."""
        s = self.settings
        if self.prompts.instances > 1 and len(objects) >= 2:
            instances = resize_map(objects.float(), features.shape[-1]) > 0.5
            saliency = multi_instance_saliency(features, instances)
        else:
            saliency = single_instance_saliency(features, s.saliency_neighbors)
        return resize_map(saliency, self.image_size)

    def _image_map(self, b: int, objects: tuple[Tensor, Tensor, Tensor],
                   proposals: list[tuple[Tensor, Tensor, Tensor]], embedding: Tensor, features: Tensor) -> Tensor:
        """Image ``b``'s anomaly map (before smoothing) from the batch's GroundingDINO outputs."""
        s, p, size = self.settings, self.prompts, self.image_size
        object_boxes = find_objects(objects[0][b], objects[1][b], s.box_threshold, p.instances, size,
                                    s.max_candidates)
        object_masks = self._segment(embedding, object_boxes)
        candidates, confidences = regularise_proposals(
            [(boxes[b], scores[b], is_object[b]) for boxes, scores, is_object in proposals], s.box_threshold,
            object_boxes, object_masks.any(0), p.max_area, s.min_inside, s.max_candidates)
        if len(candidates) == 0:
            return torch.zeros(size, size, device=self.device)
        masks = self._segment(embedding, candidates)
        confidences = rescore(confidences, masks, self._saliency(features, object_masks), s.saliency_gain)
        best = top_k(confidences, p.max_anomalies)
        return fuse(masks[best], confidences[best])

    def anomaly_maps(self, images: Tensor) -> Tensor:
        """``[B,S,S]`` smoothed anomaly maps of ``images`` ``[B,3,S,S]`` (0..1, RGB)."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected [N,3,{size},{size}] in 0..1, got {list(images.shape)}")
        with torch.inference_mode():
            x = images.to(self.device).float()
            pixels = self._normalised(x, self.gdino_size)
            objects = self._propose(pixels, self.object_caption)
            proposals = [self._propose(pixels, c) for c in self.defect_captions]
            embeddings = self.sam.get_image_embeddings(self._normalised(x, self.sam_size))
            features = self._saliency_features(x)
            maps = torch.stack([self._image_map(b, objects, proposals, embeddings[b], features[b])
                                for b in range(len(x))])
            return gaussian_blur(maps, self.settings.sigma)

    def score(self, images: Tensor) -> ScoreBatch:
        maps = self.anomaly_maps(images)
        return ScoreBatch(maps.flatten(1).amax(1).cpu().numpy().astype(np.float32), maps.cpu().numpy())
