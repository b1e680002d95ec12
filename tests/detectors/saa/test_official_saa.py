"""SAA+'s stages against the official code (caoyunkang/Segment-Any-Anomaly, ``SAA/model.py``).

``tests/data/official/saa/`` holds what the official ``Model.forward`` computed on recorded GroundingDINO and SAM
outputs and a seeded saliency network (see its README). Every stage is fed the official stage's inputs and must
give its outputs: the proposal filter (kept boxes, box scores), the area rules, the boxes handed to SAM, the
saliency map (from the same seeded network on the same input), the rescoring, the top-K, the fused map, the
final map and the image score. Tolerance 1e-4 absolute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import StorageSettings
from pipeline.detectors.saa.stages import (
    box_area,
    filter_proposals,
    fuse,
    gdino_input_size,
    multi_instance_saliency,
    rescore,
    resize_map,
    resize_masks,
    saliency_features,
    single_instance_saliency,
    to_pixels,
    top_k,
)
from pipeline.features.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from pipeline.io.storage import Storage

DATA = Path(__file__).resolve().parents[2] / "data" / "official" / "saa"
CASES = ["single_pcb3", "multi_macaroni1"]
LAYERS = ["layer1", "layer2", "layer3"]
TOLERANCE = 1e-4
GAIN, NEIGHBOURS = 3.0, 400  # the official constants


def _case(name: str) -> tuple[dict, dict]:
    return json.loads((DATA / f"{name}.json").read_text()), dict(np.load(DATA / f"{name}.npz"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab=str(DATA / "vocab.txt"), do_lower_case=True)


def _proposals(meta: dict, ref: dict, tokenizer, index: int) -> tuple[list[int], list[float], torch.Tensor]:
    step = meta["filters"][index]
    key = meta["captions"][step["caption"]]
    boxes, logits = torch.from_numpy(ref[f"boxes_{key}"]), torch.from_numpy(ref[f"logits_{key}"])
    ids = tokenizer(step["caption"])["input_ids"]
    probs = logits[:, :len(ids)].sigmoid()
    keep, scores = filter_proposals(boxes, probs, ids, tokenizer, step["filter"], meta["box_threshold"],
                                    meta["text_threshold"], step["max_area"], step["min_area"])
    return keep.tolist(), scores.tolist(), boxes[keep]


@pytest.mark.parametrize("name", CASES)
def test_proposal_filter_and_area_rules(name, tokenizer):
    meta, ref = _case(name)
    h, w = ref["image_bgr"].shape[:2]
    kept, _, object_boxes = _proposals(meta, ref, tokenizer, 0)
    assert kept == meta["filters"][0]["kept"]
    object_area = float(box_area(object_boxes).max()) if kept else 1.0  # the largest object box, else the image
    assert object_area * meta["defect_area_threshold"] == pytest.approx(meta["defect_max_area"], rel=1e-6)
    sam_boxes = []
    for index, step in enumerate(meta["filters"][1:], start=1):
        assert step["max_area"] == pytest.approx(meta["defect_max_area"], rel=1e-6) and step["min_area"] == 0
        kept, scores, boxes = _proposals(meta, ref, tokenizer, index)
        assert kept == step["kept"], step["caption"]
        assert scores == pytest.approx(step["scores"], abs=TOLERANCE), step["caption"]
        sam_boxes.append(to_pixels(boxes, h, w))
    scale = 1024 / max(h, w)  # SAM's longest side
    assert np.abs(torch.cat(sam_boxes).numpy() * scale - ref["defect_sam_boxes"]).max() < 1e-3
    assert np.abs(to_pixels(object_boxes, h, w).numpy() * scale - ref["object_sam_boxes"]).max() < 1e-3
    assert list(gdino_input_size(h, w)) == meta["dino_input_hw"][0]  # the shorter side at 800


@pytest.fixture(scope="module")
def saliency_maps() -> dict[str, np.ndarray]:
    """Our saliency map of each case, from the seeded network on the image the official network saw (BGR, as
    the official code feeds it), at the image's size."""
    out = {}
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        for name in CASES:
            meta, ref = _case(name)
            net, _, _ = build_backbone(meta["saliency_arch"], LAYERS, "none", meta["seed"], Storage(StorageSettings()))
            seen = ref.get("saliency_input", ref["image_bgr"])
            pixels = torch.from_numpy(seen).permute(2, 0, 1)[None].float() / 255
            feats = saliency_features(net((pixels - mean) / std), LAYERS)[0].double()
            h, w = ref["image_bgr"].shape[:2]
            if meta["object_number"] == 1:
                saliency = single_instance_saliency(feats, NEIGHBOURS, "farthest")
            else:
                objects = resize_masks(torch.from_numpy(ref["object_masks"]), *feats.shape[-2:])
                saliency = multi_instance_saliency(feats, objects)
            out[name] = resize_map(saliency, h, w).numpy()
    return out


@pytest.mark.parametrize("name", CASES)
def test_saliency_map(name, saliency_maps):
    _, ref = _case(name)
    assert np.abs(saliency_maps[name] - ref["saliency"]).max() < TOLERANCE


@pytest.mark.parametrize("name", CASES)
def test_rescoring_top_k_fusion_map_and_image_score(name):
    meta, ref = _case(name)
    masks = torch.from_numpy(ref["defect_masks"])
    scores = rescore(torch.from_numpy(ref["defect_logits"]), masks, torch.from_numpy(ref["saliency"]).double(),
                     GAIN)
    assert np.abs(scores.numpy() - ref["rescored"]).max() < TOLERANCE
    best = top_k(scores, meta["k_mask"])
    assert sorted(best.tolist()) == sorted(ref["top_k"].tolist())
    fused = fuse(masks[best], scores[best])
    assert np.abs(fused.numpy() - ref["fused"]).max() < TOLERANCE
    final = resize_map(fused, meta["out_size"])
    assert np.abs(final.numpy() - ref["anomaly_map"]).max() < TOLERANCE
    assert float(final.max()) == pytest.approx(float(ref["image_score"]), abs=TOLERANCE)


def test_packaged_prompts_are_the_official_tables():
    """Every MVTec AD and VisA category: the object caption (the official property sentence's 8th word, verbatim),
    the language prompts with the word each filters on, the instance count, the area limit and K."""
    from pipeline.detectors.saa.prompts import load_prompts, packaged_text

    tables = json.loads((DATA / "prompt_tables.json").read_text())
    assert len(tables) == 15 + 12
    for key, official in tables.items():
        ours = load_prompts(packaged_text(), None, key.split("/")[1])
        assert ours.object == official["object_prompt"], key
        assert [[c.text, c.filter] for c in ours.captions] == official["prompts"], key
        assert (ours.instances, ours.max_area, ours.max_anomalies) == (
            official["object_number"], official["defect_area_threshold"], official["k_mask"]), key


def test_default_settings_are_the_officials():
    """What a user gets without settings: the official thresholds, sizes, constants and rules; our additions
    (location prompt, candidate cap, smoothing) off."""
    from pipeline.detectors.saa.settings import SAASettings

    s = SAASettings(gdino_weights="none", sam_weights="none")
    assert (s.box_threshold, s.text_threshold, s.gdino_size, s.gdino_max_size) == (0.1, 0.1, 800, 1333)
    assert (s.saliency_backbone, s.saliency_size, s.multi_saliency_size) == ("wide_resnet50_2", 256, 1024)
    assert (s.saliency_neighbors, s.saliency_rule, s.saliency_gain) == (NEIGHBOURS, "farthest", GAIN)
    assert (s.fusion, s.channel_order, s.image_size) == ("official", "official", None)  # SAM's 1024
    assert (s.min_inside, s.max_candidates, s.sigma) == (0.0, None, 0.0)
