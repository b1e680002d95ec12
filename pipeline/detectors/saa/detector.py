"""SAA+ (Cao et al., "Segment Any Anomaly without Training via Hybrid Prompt Regularization"): zero-shot anomaly
segmentation with GroundingDINO and SAM (Hugging Face ``transformers``), regularised by hybrid prompts.

By default every step is the official code's (github.com/caoyunkang/Segment-Any-Anomaly ``SAA/model.py`` at
23acbd9; ``tests/detectors/saa/test_official_saa.py`` checks each stage against its outputs). For each image,
with the product's :class:`~pipeline.detectors.saa.prompts.PromptSet`:

1. object property prompts: GroundingDINO finds the object with the object caption (boxes scoring above
   ``box_threshold``, smaller than ``1 / instances`` of the image); SAM turns them into the object masks; the
   object's area is its largest box (the whole image when none is found);
2. anomaly region generator: GroundingDINO with every language prompt proposes boxes above ``box_threshold``; a
   box whose phrase (its caption tokens above ``text_threshold``) contains the caption's object word is dropped;
   so is a box of ``max_area`` of the object's area or more, or of no area;
3. anomaly region refiner: SAM turns the remaining boxes into masks;
4. image-context prompts: a saliency map from the self-similarity of CNN features (layers 1-3 at layer 1's grid,
   L2-normalised; single instance: mean distance to the ``saliency_neighbors`` farthest positions; several
   instances: distance to the nearest position on another instance) multiplies each mask's confidence by
   ``exp(saliency_gain x its mean saliency)``; the confidence prompt keeps the ``max_anomalies`` best masks;
5. the anomaly map is, at each pixel, the sum of the kept masks' confidences over one plus their count; the image
   score is its maximum.

Geometry, as officially: SAM sees the image with its longer side at its input size (letterboxed), GroundingDINO
with its shorter side at ``gdino_size`` (800), the saliency network the image squashed to ``saliency_size`` (256)
or, for several instances, ``multi_saliency_size`` (1024). Masks, saliency and fusion are computed on the image at
SAM's scale, and the map is returned as a square over the whole image (the official code resizes it to a square
too). Colour order, as officially: SAM and the saliency network get BGR (``channel_order``).

Our settings that differ from the official code are off by default: ``min_inside`` (the paper's location prompt),
``max_candidates`` (a cap on SAM refinements), ``sigma`` (smoothing), ``saliency_rule: nearest``, ``fusion:
mean``, ``channel_order: rgb``. Where the official code cannot run on, this keeps going: several instances with
fewer than two objects found fall back to single-instance saliency (the official code fails). Other differences:
the official code min-max normalises maps over the whole test set; a batch job scores each image on its own, so
maps and scores are raw (a monotone difference within one product); prompts are a validated YAML file with named
fields rather than words picked from a sentence by position (the packaged tables hold the same words).
"""

from __future__ import annotations

import json
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
    box_area,
    filter_proposals,
    fuse,
    gdino_input_size,
    keep_inside,
    multi_instance_saliency,
    rescore,
    resize_map,
    resize_masks,
    saliency_features,
    single_instance_saliency,
    to_pixels,
    top_k,
)
from pipeline.errors import SetupError, WeightsError
from pipeline.features.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    is_torchvision,
    load_state_dict,
    torchvision_weights,
)
from pipeline.features.preprocess import Letterbox, gaussian_blur, letterbox_extent
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


def saliency_fingerprint(storage: Storage, s: SAASettings, built: str | None = None) -> str:
    """The saliency weights' fingerprint, ``random:ARCH:seed=N`` for 'none'; ``built``: what
    :func:`~pipeline.features.backbones.build_backbone` reported (in a worker, instead of reading the file again)."""
    if s.saliency_weights == "none":
        return f"random:{s.saliency_backbone}:seed={s.seed}"
    if built is not None:
        return built
    try:
        if is_torchvision(s.saliency_weights):
            member = torchvision_weights(s.saliency_backbone, s.saliency_weights)
            return f"torchvision:{s.saliency_backbone}:{member.name}"
        return load_state_dict(storage, s.saliency_weights)[1]
    except WeightsError as exc:
        raise SetupError(str(exc).replace("patchcore.weights", "saa.saliency_weights")) from exc


def resolve_saa(storage: Storage, cfg: ScoreConfig) -> ModelRef:
    """On the driver: the prompt set (an unknown product fails here, before any work) and the three weights
    located and fingerprinted. ``model_version`` = the three fingerprints and the prompt set's digest."""
    s = cfg.saa
    if s.prompts_config:
        storage.check_reachable(s.prompts_config, "saa.prompts_config")
    prompts = read_prompts(storage, s)
    weights = _weights(storage, s)
    gdino, sam, saliency = weights["gdino"][1], weights["sam"][1], saliency_fingerprint(storage, s)
    version = f"gdino={_short(gdino)};sam={_short(sam)};saliency={_short(saliency)};prompts={prompts.digest()}"
    uri = (f"gdino={s.gdino_weights};sam={s.sam_weights};saliency={s.saliency_weights};"
           f"prompts={s.prompts_config or 'packaged'}:{s.product or 'generic'}")
    params = {"saa.gdino_fingerprint": gdino, "saa.sam_fingerprint": sam, "saa.saliency_fingerprint": saliency,
              "saa.prompts_digest": prompts.digest()}
    arch = {"gdino": f"GroundingDINO {s.gdino_arch}", "sam": f"SAM {s.sam_arch}"}
    random = tuple(f"{arch[name]} (saa.{name}_weights={getattr(s, name + '_weights')})"
                   for name, (folder, _) in weights.items() if folder is None)
    if s.saliency_weights == "none":
        random += (f"saliency {s.saliency_backbone} (saa.saliency_weights=none)",)
    metadata = json.dumps({"prompts": prompts.model_dump(), "gdino": gdino, "sam": sam, "saliency": saliency},
                          indent=2).encode()
    return ModelRef(uri, version, None, params, metadata, metadata_name="saa.json", random_weights=random)


def load_for_score(cfg: ScoreConfig, storage: Storage, model: ModelRef, device: str) -> SAADetector:
    """In a worker: the same weights and prompts the driver resolved (refused if they changed since)."""
    s = cfg.saa
    prompts = read_prompts(storage, s)
    weights = _weights(storage, s)
    saliency, _, built = build_backbone(s.saliency_backbone, SALIENCY_LAYERS, s.saliency_weights, s.seed, storage)
    found = {"saa.gdino_fingerprint": weights["gdino"][1], "saa.sam_fingerprint": weights["sam"][1],
             "saa.saliency_fingerprint": saliency_fingerprint(storage, s, built),
             "saa.prompts_digest": prompts.digest()}
    for key, value in found.items():
        if model.params[key] != value:
            raise SetupError(f"{key}: {value} on this worker, {model.params[key]} when the run started; the weights "
                             "or prompts changed during the run")
    gdino, tokenizer = load_gdino(weights["gdino"][0], s.gdino_arch, s.seed, "saa.gdino_weights")
    sam = load_sam(weights["sam"][0], s.sam_arch, s.seed, "saa.sam_weights")
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
        self.preprocess = Letterbox(self.image_size)  # SAM's longest-side resize and pad
        self.max_text = int(gdino.config.max_text_len)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.object_caption = self._encode(prompts.object, None)
        self.defect_captions = [self._encode(c.text, c.filter) for c in prompts.captions]

    def _encode(self, caption: str, filter_word: str | None) -> dict:
        """Token ids of one caption and the word whose presence in a box's phrase marks the object."""
        text = caption_text(caption)
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_text)
        return {"inputs": {k: v.to(self.device) for k, v in enc.items()}, "ids": enc["input_ids"][0].tolist(),
                "filter": filter_word}

    def _model_colours(self, x: Tensor) -> Tensor:
        """What SAM and the saliency network see: BGR as officially (OpenCV order), or RGB."""
        return x.flip(1) if self.settings.channel_order == "official" else x

    def _propose(self, content: Tensor, caption: dict) -> tuple[Tensor, Tensor]:
        """GroundingDINO on images ``[B,3,h,w]`` (RGB, 0..1) at its own size: normalised boxes ``[B,Q,4]`` and
        token probabilities ``[B,Q,n]`` over the caption's ``n`` tokens."""
        s = self.settings
        size = gdino_input_size(*content.shape[-2:], s.gdino_size, s.gdino_max_size)
        pixels = F.interpolate(content, size=size, mode="bilinear", antialias=True, align_corners=False)
        inputs = {k: v.expand(len(content), -1) for k, v in caption["inputs"].items()}
        out = self.gdino(pixel_values=(pixels - self.mean) / self.std, **inputs)
        return out.pred_boxes, out.logits[..., :len(caption["ids"])].sigmoid()

    def _segment(self, embedding: Tensor, boxes: Tensor, h: int, w: int) -> Tensor:
        """SAM masks ``[N,h,w]`` (bool) for pixel ``boxes`` ``[N,4]`` on an ``h x w`` image (SAM's scale): the
        low-resolution masks upsampled to SAM's input, cropped to the image and resized to it, as officially."""
        if len(boxes) == 0:
            return torch.zeros(0, h, w, dtype=torch.bool, device=self.device)
        scale = self.sam_size / max(h, w)
        sh, sw = int(h * scale + 0.5), int(w * scale + 0.5)
        masks = []
        for chunk in (boxes * scale).split(SAM_CHUNK):  # bounds the full-size float masks
            out = self.sam(image_embeddings=embedding[None], input_boxes=chunk[None], multimask_output=False)
            full = resize_map(out.pred_masks[0, :, 0], self.sam_size)[:, :sh, :sw]
            masks.append(resize_map(full, h, w) > 0)
        return torch.cat(masks)

    def _saliency(self, image: Tensor, objects: Tensor) -> Tensor:
        """One image's saliency ``[h,w]`` (``image`` ``[3,h,w]``): multi-instance when the product shows several
        objects and at least two were found, single-instance otherwise."""
        s = self.settings
        multi = self.prompts.instances > 1 and len(objects) >= 2
        side = s.multi_saliency_size if multi else s.saliency_size
        x = F.interpolate(self._model_colours(image[None]), size=(side, side), mode="bilinear", align_corners=False)
        features = saliency_features(self.saliency((x - self.mean) / self.std), SALIENCY_LAYERS)[0]
        if multi:
            saliency = multi_instance_saliency(features, resize_masks(objects, *features.shape[-2:]))
        else:
            saliency = single_instance_saliency(features, s.saliency_neighbors, s.saliency_rule)
        return resize_map(saliency, *image.shape[-2:])

    def _image_map(self, image: Tensor, objects: tuple[Tensor, Tensor], proposals: list[tuple[Tensor, Tensor]],
                   embedding: Tensor) -> Tensor:
        """One image's anomaly map ``[h,w]`` (``image`` ``[3,h,w]``) from its GroundingDINO outputs."""
        s, p = self.settings, self.prompts
        h, w = image.shape[-2:]
        kept, _ = filter_proposals(*objects, self.object_caption["ids"], self.tokenizer, None, s.box_threshold,
                                   s.text_threshold, 1.0 / p.instances)
        object_area = float(box_area(objects[0][kept]).max()) if len(kept) else 1.0
        object_masks = self._segment(embedding, to_pixels(objects[0][kept], h, w), h, w)
        region = object_masks.any(0)
        candidates, confidences = [], []
        for (boxes, probs), caption in zip(proposals, self.defect_captions, strict=True):
            kept, scores = filter_proposals(boxes, probs, caption["ids"], self.tokenizer, caption["filter"],
                                            s.box_threshold, s.text_threshold, p.max_area * object_area)
            pixels = to_pixels(boxes[kept], h, w)
            if s.min_inside > 0 and region.any():
                on_object = keep_inside(pixels, region, s.min_inside)
                pixels, scores = pixels[on_object], scores[on_object]
            candidates.append(pixels)
            confidences.append(scores)
        candidates, confidences = torch.cat(candidates), torch.cat(confidences)
        if s.max_candidates is not None:
            best = top_k(confidences, s.max_candidates)
            candidates, confidences = candidates[best], confidences[best]
        if len(candidates) == 0:  # officially: one empty mask of confidence 0
            return torch.zeros(h, w, device=self.device)
        masks = self._segment(embedding, candidates, h, w)
        confidences = rescore(confidences, masks, self._saliency(image, object_masks), s.saliency_gain)
        best = top_k(confidences, p.max_anomalies)
        return fuse(masks[best], confidences[best], s.fusion)

    def anomaly_maps(self, images: Tensor) -> Tensor:
        """``[B,S,S]`` anomaly maps of ``images`` ``[B,3,S,S]``: :class:`Letterbox` squares (0..1 RGB, the image
        at the top left) or plain squares."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"expected [N,3,{size},{size}] (letterboxed, 0..1), got {list(images.shape)}")
        with torch.inference_mode():
            x = images.to(self.device).float()
            extents = [letterbox_extent(image) for image in x]
            valid = x >= 0
            sam_in = torch.where(valid, (self._model_colours(x) - self.mean) / self.std, torch.zeros_like(x))
            if size != self.sam_size:
                sam_in = F.interpolate(sam_in, size=(self.sam_size, self.sam_size), mode="bilinear",
                                       antialias=True, align_corners=False)
            embeddings = self.sam.get_image_embeddings(sam_in)
            maps = [torch.zeros(size, size, device=self.device)] * len(x)
            for extent in sorted(set(extents)):  # images of one shape share GroundingDINO passes
                members = [b for b, e in enumerate(extents) if e == extent]
                content = x[members, :, :extent[0], :extent[1]]
                objects = self._propose(content, self.object_caption)
                proposals = [self._propose(content, c) for c in self.defect_captions]
                for i, b in enumerate(members):
                    amap = self._image_map(content[i], (objects[0][i], objects[1][i]),
                                           [(boxes[i], probs[i]) for boxes, probs in proposals], embeddings[b])
                    maps[b] = resize_map(amap, size)
            return gaussian_blur(torch.stack(maps), self.settings.sigma)

    def score(self, images: Tensor) -> ScoreBatch:
        maps = self.anomaly_maps(images)
        return ScoreBatch(maps.flatten(1).amax(1).cpu().numpy().astype(np.float32), maps.cpu().numpy())
