"""Run the official SAA+ code (caoyunkang/Segment-Any-Anomaly, ``SAA/model.py``) on recorded model outputs and store
every stage it computes, for ``tests/detectors/saa/test_official_saa.py``.

    python tests/data/official/saa/make_reference.py /path/to/Segment-Any-Anomaly

GroundingDINO and SAM cannot be loaded here (no weights), so their calls are replayed: GroundingDINO returns the
recorded ``pred_logits`` / ``pred_boxes`` of each caption, SAM returns recorded masks (one per box it is given).
Everything else is the official code, unchanged: ``Model.forward`` with its proposal filter
(``bbox_suppression``), area rules, box conversion, saliency (``ModelINet`` with a seeded random backbone built
the way ours is: ``torch.manual_seed(SEED)`` then torchvision's model with ``weights=None``, loaded into timm's
``features_only`` model), rescoring, top-K and map fusion. The tokenizer is a BERT WordPiece tokenizer over
``vocab.txt`` (the product's tiny test vocabulary: BERT's ids for the special tokens, and single letters, so every
word tokenizes as BERT would split it).

The recorded GroundingDINO outputs are crafted (seeded) so that every rule decides something: boxes below the
box threshold, boxes whose box score comes from a special token only, boxes where the object's word is above the
text threshold without being the best token (and where only part of it is), boxes over the area limit and
boxes of zero area. The prompts are the official tables' (``SAA/prompts``); the tables themselves are stored too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

HERE = Path(__file__).resolve().parent
SEED = 0
BOX_THRESHOLD = TEXT_THRESHOLD = 0.1  # eval_SAA.py defaults
OUT_SIZE = 400  # eval_SAA.py --eval-resolution default
QUERIES = 12
# case: (dataset, category, (H, W) of the image, saliency backbone)
CASES = {
    "single_pcb3": ("visa_public", "pcb3", (240, 320), "wide_resnet50_2"),
    "multi_macaroni1": ("visa_public", "macaroni1", (1024, 1024), "resnet18"),
}
# what each query of a defect caption shows, cycled over the queries
KINDS = ["defect", "weak", "object_any", "defect", "object_partial", "special", "big", "flat", "defect", "defect",
         "object_any", "defect"]


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def seeded_torchvision(arch: str) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torchvision.models.get_model(arch, weights=None)


def image(h: int, w: int, objects: list[tuple[float, float, float, float]], seed: int) -> np.ndarray:
    """A smooth BGR uint8 image with bright elliptic objects ``(cx, cy, rx, ry)`` (normalised) and a dark spot on
    the first one."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 5, 5, generator=g) * 0.4 + 0.1
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    for i, (cx, cy, rx, ry) in enumerate(objects):
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        field[:, inside] = torch.tensor([0.75, 0.8, 0.85]).view(3, 1) - 0.05 * i
    cx, cy, rx, ry = objects[0]
    spot = ((xs - cx - rx / 3) / (rx / 5)) ** 2 + ((ys - cy) / (ry / 5)) ** 2 <= 1
    field[:, spot] = 0.15
    return (field.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def token_span(ids: list[int], word_ids: list[int]) -> list[int]:
    for start in range(len(ids) - len(word_ids) + 1):
        if ids[start:start + len(word_ids)] == word_ids:
            return list(range(start, start + len(word_ids)))
    return []


def defect_outputs(caption_ids: list[int], filter_ids: list[int], special: list[int], max_area: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crafted GroundingDINO outputs of one defect caption: boxes ``[Q,4]`` normalised cxcywh and raw logits
    ``[Q,256]`` (``-inf`` past the caption, as GroundingDINO pads)."""
    n = len(caption_ids)
    filt = token_span(caption_ids, filter_ids)
    words = [i for i in range(n) if i not in special and i not in filt]
    probs = rng.uniform(0.0, 0.09, size=(QUERIES, n))
    boxes = np.zeros((QUERIES, 4))
    for q in range(QUERIES):
        kind = KINDS[q % len(KINDS)]
        side = np.sqrt(rng.uniform(0.05, 0.9) * max_area)
        w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
        boxes[q] = [rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), w, h]
        best = words[q % len(words)]
        if kind == "weak":
            continue
        if kind == "special":
            probs[q, special[q % len(special)]] = rng.uniform(0.3, 0.7)
            continue
        probs[q, best] = rng.uniform(0.3, 0.9)
        if kind == "object_any" and filt:
            probs[q, filt] = rng.uniform(0.15, probs[q, best] - 0.05, size=len(filt))
        elif kind == "object_partial" and len(filt) > 1:
            probs[q, filt[0]] = rng.uniform(0.15, probs[q, best] - 0.05)
        elif kind == "big":
            boxes[q, 2:] = [0.95, 0.9]
        elif kind == "flat":
            boxes[q, 2] = 0.0
    logits = np.full((QUERIES, 256), -np.inf, dtype=np.float32)
    logits[:, :n] = np.log(probs / (1 - probs))
    return boxes.astype(np.float32), logits


def object_outputs(caption_ids: list[int], special: list[int], objects: list[tuple[float, float, float, float]],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crafted GroundingDINO outputs of the object caption: a box around each object, a box too big for one of
    ``len(objects)`` instances, a weak box and a box whose score is a special token's."""
    n = len(caption_ids)
    words = [i for i in range(n) if i not in special]
    rows = [(cx, cy, 2.1 * rx, 2.1 * ry, 0.5 + 0.1 * i) for i, (cx, cy, rx, ry) in enumerate(objects)]
    big = min(1.0, 1.3 / len(objects) ** 0.5)
    rows += [(0.5, 0.5, big, big, 0.6), (0.3, 0.6, 0.2, 0.2, 0.05), (0.6, 0.4, 0.1, 0.15, -1.0)]
    probs = rng.uniform(0.0, 0.09, size=(len(rows), n))
    boxes = np.zeros((len(rows), 4))
    for q, (cx, cy, w, h, p) in enumerate(rows):
        boxes[q] = [cx, cy, w, h]
        if p < 0:
            probs[q, special[0]] = 0.4
        else:
            probs[q, words[q % len(words)]] = p
    logits = np.full((len(rows), 256), -np.inf, dtype=np.float32)
    logits[:, :n] = np.log(probs / (1 - probs))
    return boxes.astype(np.float32), logits


class ReplayDINO:
    """Stands in for GroundingDINO: returns the recorded outputs of each caption, and records its input shape."""

    def __init__(self, tokenizer, outputs: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.tokenizer, self.outputs, self.input_shapes = tokenizer, outputs, []

    def __call__(self, image: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        self.input_shapes.append(list(image.shape[-2:]))
        boxes, logits = self.outputs[captions[0]]
        return {"pred_logits": torch.from_numpy(logits)[None], "pred_boxes": torch.from_numpy(boxes)[None]}


class ReplaySAM:
    """Stands in for SamPredictor: the real ``ResizeLongestSide(1024)`` box transform; for each box it is given, a
    mask: the ellipse inscribed in the box (mapped back to the image), at the image's resolution."""

    def __init__(self, transform_cls):
        self.transform = transform_cls(1024)
        self.size, self.calls = None, []

    def set_image(self, image: np.ndarray) -> None:
        self.size = image.shape[:2]

    def predict_torch(self, point_coords, point_labels, boxes: torch.Tensor, multimask_output: bool):
        h, w = self.size
        scale = 1024 / max(h, w)
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        masks = []
        for x0, y0, x1, y1 in (boxes.numpy() / scale):
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
            masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
        masks = torch.from_numpy(np.stack(masks))[:, None]
        self.calls.append({"boxes": boxes.numpy().copy(), "masks": masks[:, 0].numpy().copy()})
        return masks, None, None


def saliency_extractor(modelinet_cls, arch: str) -> torch.nn.Module:
    """The official ``ModelINet`` around timm's ``features_only`` model, holding the seeded torchvision weights
    (timm names a ResNet's parameters as torchvision does)."""
    import timm

    create = timm.create_model

    def unpretrained(model_name, pretrained, checkpoint_path, **kwargs):
        return create(model_name, pretrained=False, **kwargs)

    timm.create_model = unpretrained
    try:
        extractor = modelinet_cls(device="cpu", backbone_name=arch)
    finally:
        timm.create_model = create
    state = {k: v for k, v in seeded_torchvision(arch).state_dict().items() if not k.startswith(("fc.", "layer4."))}
    missing, unexpected = extractor.backbone.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("layer4.")], (missing, unexpected)
    return extractor.eval()


def run_case(name: str, dataset: str, category: str, hw: tuple[int, int], arch: str, out: Path) -> dict:
    import SAA
    import SAA.model as official
    import SAA.modelinet
    from SAM.segment_anything.utils.transforms import ResizeLongestSide
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=str(HERE / "vocab.txt"), do_lower_case=True)
    general = SAA.build_general_prompts(category)
    manual = SAA.manul_prompts[dataset][category]
    prompts = general + manual
    property_prompt = SAA.property_prompts[dataset][category]
    number = int(property_prompt.split(" ")[5])
    h, w = hw
    if number == 1:
        objects = [(0.5, 0.5, 0.32, 0.3)]
    else:
        objects = [(0.27, 0.28, 0.1, 0.13), (0.72, 0.27, 0.1, 0.13), (0.28, 0.73, 0.1, 0.13), (0.73, 0.72, 0.1, 0.13)]
    rng = np.random.default_rng(list(CASES).index(name) + 1)
    bgr = image(h, w, objects, seed=list(CASES).index(name) + 1)

    model = official.Model.__new__(official.Model)
    torch.nn.Module.__init__(model)
    model.set_ensemble_text_prompts(prompts)
    model.set_property_text_prompts(property_prompt)
    captions = {}
    for phrase in [model.object_prompt] + model.defect_prompt_list:
        caption = phrase.lower().strip()
        captions[phrase] = caption if caption.endswith(".") else caption + "."
    outputs, specials = {}, {}
    for phrase, caption in captions.items():
        ids = tokenizer(caption)["input_ids"]
        special = [i for i, t in enumerate(ids) if t in (101, 102, 1012, 1029)]
        specials[caption] = special
        if phrase == model.object_prompt:
            outputs[caption] = object_outputs(ids, special, objects, rng)
        else:
            filt = dict(zip(model.defect_prompt_list, model.filter_prompt_list, strict=True))[phrase]
            filter_ids = tokenizer(filt, add_special_tokens=False)["input_ids"]
            object_area = max(4.41 * rx * ry for _, _, rx, ry in objects)
            outputs[caption] = defect_outputs(ids, filter_ids, special, model.defect_area_threshold * object_area,
                                              rng)
    dino = ReplayDINO(tokenizer, outputs)
    sam = ReplaySAM(ResizeLongestSide)
    model.anomaly_region_generator = dino
    model.anomaly_region_refiner = sam
    model.transform = official.T.Compose([official.T.RandomResize([800], max_size=1333), official.T.ToTensor(),
                                          official.T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model.visual_saliency_extractor = saliency_extractor(SAA.modelinet.ModelINet, arch)
    model.box_threshold, model.text_threshold = BOX_THRESHOLD, TEXT_THRESHOLD
    model.out_size, model.device, model.is_sam_set = OUT_SIZE, "cpu", False

    record: dict = {"filters": [], "saliency_inputs": []}
    suppress, saliency, rescore, confidence = (model.bbox_suppression, model.visual_saliency_calculation,
                                              model.rescore, model.confidence_prompting)
    extractor_forward = model.visual_saliency_extractor.forward

    def bbox_suppression(boxes, logits, object_phrase, filtered_phrase, bbox_thr, text_thr, max_area, min_area):
        kept_boxes, kept_scores, phrases = suppress(boxes, logits, object_phrase, filtered_phrase, bbox_thr, text_thr,
                                                    max_area, min_area)
        rows = [] if kept_boxes is None else [int(np.flatnonzero((boxes == b).all(1).numpy())[0]) for b in kept_boxes]
        record["filters"].append({"caption": object_phrase, "filter": filtered_phrase, "max_area": float(max_area),
                                  "min_area": float(min_area), "kept": rows, "scores": kept_scores or [],
                                  "phrases": phrases or []})
        return kept_boxes, kept_scores, phrases

    def visual_saliency_calculation(img, object_masks):
        record["object_masks"] = np.asarray(object_masks, dtype=bool)
        record["saliency"] = np.asarray(saliency(img, object_masks), dtype=np.float32)
        return record["saliency"]

    def rescore_(defect_masks, defect_logits, similarity_map):
        masks, scores = rescore(defect_masks, defect_logits, similarity_map)
        record["defect_masks"], record["defect_logits"] = np.asarray(defect_masks, bool), np.asarray(defect_logits)
        record["rescored"] = np.asarray(scores, dtype=np.float64)
        return masks, scores

    def confidence_prompting(defect_masks, defect_scores, similarity_map):
        record["top_k"] = np.asarray(defect_scores.argsort()[-model.k_mask:])  # its first line, on its inputs
        resize = official.cv2.resize
        calls = []
        official.cv2.resize = lambda src, size, **kw: calls.append(np.array(src)) or resize(src, size, **kw)
        try:
            result = confidence(defect_masks, defect_scores, similarity_map)
        finally:
            official.cv2.resize = resize
        record["fused"] = calls[-1].astype(np.float32)
        return result

    def extractor(x):
        record["saliency_inputs"].append(np.array(x))
        return extractor_forward(x)

    model.bbox_suppression, model.visual_saliency_calculation = bbox_suppression, visual_saliency_calculation
    model.rescore, model.confidence_prompting = rescore_, confidence_prompting
    model.visual_saliency_extractor.forward = extractor
    anomaly_map, appendix = model(bgr)

    object_call, defect_call = sam.calls
    arrays = {
        "image_bgr": bgr,
        "object_sam_boxes": object_call["boxes"], "object_masks": record["object_masks"],
        "defect_sam_boxes": defect_call["boxes"], "defect_masks": record["defect_masks"],
        "defect_logits": record["defect_logits"].astype(np.float64), "saliency": record["saliency"],
        "rescored": record["rescored"], "top_k": record["top_k"].astype(np.int64), "fused": record["fused"],
        "anomaly_map": np.asarray(anomaly_map, dtype=np.float32),
        "image_score": np.float32(np.asarray(anomaly_map).max()),
    }
    if not np.array_equal(record["saliency_inputs"][0], bgr):  # the multi-instance case sees the image itself
        arrays["saliency_input"] = record["saliency_inputs"][0]
    for caption, (boxes, logits) in outputs.items():
        key = hashlib.sha256(caption.encode()).hexdigest()[:8]
        arrays[f"boxes_{key}"], arrays[f"logits_{key}"] = boxes, logits
    np.savez_compressed(out / f"{name}.npz", **arrays)
    meta = {
        "dataset": dataset, "category": category, "property_prompt": property_prompt,
        "object_prompt": model.object_prompt, "object_number": model.object_number, "k_mask": model.k_mask,
        "defect_area_threshold": model.defect_area_threshold, "prompts": prompts,
        "captions": {c: hashlib.sha256(c.encode()).hexdigest()[:8] for c in outputs},
        "special_tokens": specials, "box_threshold": BOX_THRESHOLD, "text_threshold": TEXT_THRESHOLD,
        "out_size": OUT_SIZE, "dino_input_hw": dino.input_shapes, "filters": record["filters"],
        "defect_max_area": float(model.defect_max_area), "saliency_arch": arch, "seed": SEED,
        "saliency_weights_sha256": weights_sha256(seeded_torchvision(arch)),
    }
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    kept = sum(len(f["kept"]) for f in record["filters"][1:])
    print(f"{name}: {len(record['filters']) - 1} captions, {kept} defect boxes kept, objects "
          f"{len(record['filters'][0]['kept'])}, top-K {sorted(record['top_k'].tolist())}, image score "
          f"{arrays['image_score']:.6f}")
    return meta


def official_tables(out: Path) -> None:
    """The official prompt tables, resolved the way ``eval_SAA.py`` uses them, per VisA and MVTec AD category."""
    import SAA

    tables = {}
    for dataset in ("mvtec", "visa_public"):
        for category, sentence in SAA.property_prompts[dataset].items():
            words = sentence.split(" ")
            tables[f"{dataset}/{category}"] = {
                "object_prompt": words[7], "object_number": int(words[5]), "k_mask": int(words[12]),
                "defect_area_threshold": float(words[19]),
                "prompts": SAA.build_general_prompts(category) + SAA.manul_prompts[dataset][category]}
    (out / "prompt_tables.json").write_text(json.dumps(tables, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", type=Path, help="checkout of caoyunkang/Segment-Any-Anomaly")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    for sub in ("", "GroundingDINO", "SAM"):
        sys.path.insert(0, str(args.official / sub))
    torch.set_num_threads(1)
    official_tables(args.out)
    for name, (dataset, category, hw, arch) in CASES.items():
        run_case(name, dataset, category, hw, arch, args.out)


if __name__ == "__main__":
    main()
