"""SAA+: each hybrid-prompt stage on a constructed case, the prompt sets, the weights, the detector."""

import subprocess
import sys

import pytest
import torch

from pipeline.config import ScoreConfig, StorageSettings, load_config
from pipeline.detectors.saa.prompts import Caption, PromptSet, load_prompts, packaged_text
from pipeline.detectors.saa.stages import (
    filter_proposals,
    fuse,
    inside_fraction,
    keep_inside,
    multi_instance_saliency,
    rescore,
    single_instance_saliency,
    top_k,
)
from pipeline.errors import ConfigError
from pipeline.io.storage import Storage
from tests.helpers import REPO

ROOT = REPO
TINY = {"gdino_weights": "none", "sam_weights": "none", "saliency_backbone": "resnet18", "saliency_size": 64,
        "multi_saliency_size": 64, "gdino_size": 64}


# ---------------------------------------------------------------- hybrid-prompt stages, constructed cases


def test_location_prompt_drops_a_box_outside_the_object():
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:, :32] = True  # the object: the left half
    boxes = torch.tensor([[4.0, 4, 20, 20], [40, 40, 60, 60], [24, 10, 40, 26]])  # inside, outside, half on it
    assert inside_fraction(boxes, region).tolist() == [1.0, 0.0, 0.5]
    assert keep_inside(boxes, region, 0.5).tolist() == [True, False, True]
    assert keep_inside(boxes, region, 0.6).tolist() == [True, False, False]


def test_confidence_prompt_keeps_the_top_k():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.4])
    assert top_k(scores, 3).tolist() == [1, 3, 4]
    assert len(top_k(scores, 50)) == 7


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizer

    from pipeline.detectors.saa.models import TINY_VOCAB

    return BertTokenizer(vocab=str(TINY_VOCAB), do_lower_case=True)


def test_proposal_filter_as_the_official_code(tokenizer):
    """Caption "scratch on pcb1." (tokens [CLS] scratch on pcb ##1 . [SEP]): a box survives with a score above the
    box threshold (special tokens count), an area strictly between the limits, and a phrase (its tokens above the
    text threshold) that does not contain the object's word, whichever token is best."""
    ids = tokenizer("scratch on pcb1.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "scratch", "on", "pcb", "##1", ".", "[SEP]"]
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(7, 1)
    boxes[4, 2:] = torch.tensor([0.6, 0.6])  # 36 % of the image: over the area limit
    boxes[5, 2] = 0.0  # no area
    probs = torch.full((7, len(ids)), 0.02)
    probs[0, 1] = 0.8  # "scratch": kept
    probs[1, 0] = 0.6  # only [CLS] is confident: the box score counts it, kept
    probs[2, 1], probs[2, 3:5] = 0.9, 0.3  # best token "scratch", but "pcb1" is above the text threshold: dropped
    probs[3, 1], probs[3, 3] = 0.9, 0.3  # only "pcb" of "pcb1": the phrase "scratch pcb" lacks "pcb1", kept
    probs[4:6, 1] = 0.9
    probs[6, 1] = 0.09  # below the box threshold
    keep, scores = filter_proposals(boxes, probs, ids, tokenizer, "pcb1", 0.1, 0.1, max_area=0.3)
    assert keep.tolist() == [0, 1, 3] and scores.tolist() == pytest.approx([0.8, 0.6, 0.9])
    keep, _ = filter_proposals(boxes, probs, ids, tokenizer, "pcb", 0.1, 0.1, max_area=0.3)
    assert keep.tolist() == [0, 1]  # "pcb" is in both phrases


def _texture_with_odd_patch(size: int = 16, channels: int = 16) -> torch.Tensor:
    """L2-normalised features of a repeated texture (two alternating vectors plus noise) with one 3x3 patch of
    a different vector at rows/cols 4..6."""
    gen = torch.Generator().manual_seed(0)
    a, b, odd = torch.randn(3, channels, generator=gen)
    feats = torch.where((torch.arange(size) % 2 == 0).view(1, 1, size), a.view(-1, 1, 1), b.view(-1, 1, 1))
    feats = feats.expand(channels, size, size).clone() + 0.05 * torch.randn(channels, size, size, generator=gen)
    feats[:, 4:7, 4:7] = odd.view(-1, 1, 1) + 0.05 * torch.randn(channels, 3, 3, generator=gen)
    return torch.nn.functional.normalize(feats, dim=0)


@pytest.mark.parametrize("rule", ["farthest", "nearest"])
def test_saliency_ranks_an_unusual_region_higher(rule):
    saliency = single_instance_saliency(_texture_with_odd_patch(), neighbors=20, rule=rule)
    odd = torch.zeros(16, 16, dtype=torch.bool)
    odd[4:7, 4:7] = True
    assert saliency[odd].min() > saliency[~odd].max()
    usual = torch.zeros_like(odd)
    usual[10:13, 10:13] = True
    masks = torch.stack([usual, odd])  # equal confidence from the region generator
    rescored = rescore(torch.tensor([0.5, 0.5]), masks, saliency, gain=3.0)
    assert rescored[1] > rescored[0] >= 0.5
    assert top_k(rescored, 1).tolist() == [1]


def test_multi_instance_saliency_finds_the_odd_instance_out():
    feats = _texture_with_odd_patch()
    instances = torch.zeros(3, 16, 16, dtype=torch.bool)
    instances[0, 0:8, 0:8] = True  # holds the odd patch
    instances[1, 8:16, 0:8] = True
    instances[2, 8:16, 8:16] = True
    saliency = multi_instance_saliency(feats, instances)
    odd = torch.zeros(16, 16, dtype=torch.bool)
    odd[4:7, 4:7] = True
    assert saliency[odd].min() > saliency[instances.any(0) & ~odd].max()
    assert saliency[~instances.any(0)].abs().max() == 0  # off the objects


def test_map_fusion_official_and_mean():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4] = True
    masks[1, 2:6] = True
    amap = fuse(masks, torch.tensor([0.8, 0.4]))  # official: the sum over one plus the count
    assert amap[0, 0] == pytest.approx(0.4) and amap[3, 0] == pytest.approx(0.4) and amap[5, 0] == pytest.approx(0.2)
    assert amap[7, 0] == 0
    amap = fuse(masks, torch.tensor([0.8, 0.4]), "mean")
    assert amap[0, 0] == pytest.approx(0.8) and amap[3, 0] == pytest.approx(0.6) and amap[5, 0] == pytest.approx(0.4)
    one = fuse(masks[:1], torch.tensor([0.5]))  # one mask at 0.5 scores lower than three overlapping at 0.4
    three = fuse(masks[:1].repeat(3, 1, 1), torch.tensor([0.4, 0.4, 0.4]))
    assert float(one.max()) == pytest.approx(0.25) and float(three.max()) == pytest.approx(0.3)


# ---------------------------------------------------------------- prompt sets


def test_packaged_prompts_cover_mvtec_and_visa_with_generic_captions_first():
    """The packaged sets are the official tables (tests/detectors/saa/test_official_saa.py compares all of them);
    here: the three words each product has (object caption, name, defect filter) go where they belong."""
    metal = load_prompts(packaged_text(), None, "metal_nut")
    assert metal.object == "metal_nut," and metal.max_area == 1.0 and metal.max_anomalies == 5
    assert [(c.text, c.filter) for c in metal.captions] == [
        ("defect on metal_nut", "metal_nut"), ("damage on metal_nut", "metal_nut"), ("flaw on metal_nut", "metal_nut"),
        ("blue defect. black defect. red defect. scratch.", "nut")]
    candle = load_prompts(packaged_text(), None, "candle")
    assert (candle.instances, candle.max_anomalies, candle.max_area) == (4, 1, 0.3)
    generic = load_prompts(packaged_text(), None, None)
    assert generic.object == "object" and [c.filter for c in generic.captions] == ["object"] * 3
    for product in ["carpet", "screw", "zipper", "pcb1", "pipe_fryum", "macaroni2", "capsules"]:
        assert load_prompts(packaged_text(), None, product).product == product


def test_custom_prompts_file_defaults_digest_and_errors(tmp_path):
    text = """
generic: {object: part, captions: ["defect on {name}"], max_anomalies: 3}
products:
  widget: {object: widget, defects: ["dent. burr."], max_area: 0.2}
"""
    widget = load_prompts(text, "prompts.yaml", "widget")
    assert widget == PromptSet(product="widget", object="widget",
                               captions=[Caption(text="defect on widget", filter="widget"),
                                         Caption(text="dent. burr.", filter="widget")],
                               instances=1, max_area=0.2, max_anomalies=3)
    assert load_prompts(text.replace("burr", "scratch"), "x", "widget").digest() != widget.digest()
    assert load_prompts(text, "elsewhere.yaml", "widget").digest() == widget.digest()
    with pytest.raises(ConfigError, match="product 'gadget' is not in .*prompts.yaml.*widget"):
        load_prompts(text, "prompts.yaml", "gadget")
    with pytest.raises(ConfigError, match=r"products.widget.max_area"):
        load_prompts(text.replace("0.2", "1.5"), "prompts.yaml", "widget")
    with pytest.raises(ConfigError, match=r"only placeholder is \{name\}"):
        load_prompts(text.replace("{name}", "{thing}"), "prompts.yaml", None)
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    settings = {"input": "/a", "output": "/b", "detector": "saa", "saa.gdino_weights": "none",
                "saa.sam_weights": "none", "saa.prompts_config": str(path)}
    assert load_config(ScoreConfig, None, settings | {"saa.product": "widget"}).saa.product == "widget"
    with pytest.raises(ConfigError, match="saa.product.*'gadget' is not in"):
        load_config(ScoreConfig, None, settings | {"saa.product": "gadget"})


def test_unknown_product_fails_in_one_line_before_torch_is_imported():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jobs.score", "--input", "a", "--output", "b", "--detector", "saa",
         "--gdino-weights", "none", "--sam-weights", "none", "--product", "spaceship"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    assert line.startswith("error: invalid configuration") and "saa.product (--product)" in line
    assert "'spaceship' is not in the packaged prompts" in line
    imported = {x.rsplit("|", 1)[-1].strip() for x in proc.stderr.splitlines() if x.startswith("import time:")}
    assert "torch" not in imported


def test_saa_needs_both_weights_settings():
    with pytest.raises(ConfigError, match="detector saa needs saa.sam_weights"):
        load_config(ScoreConfig, None, {"input": "/a", "output": "/b", "detector": "saa", "saa.gdino_weights": "none"})


# ---------------------------------------------------------------- weights and the detector


@pytest.fixture(scope="module")
def tiny_ref():
    from pipeline.detectors.saa import resolve_saa

    cfg = ScoreConfig.model_validate({"input": "/a", "output": "/b", "detector": "saa", "saa": TINY})
    return cfg, resolve_saa(Storage(StorageSettings()), cfg)


def test_random_weights_are_seeded_and_named_in_the_version(tiny_ref, one_torch_thread):
    from pipeline.detectors.saa import load_for_score

    cfg, ref = tiny_ref
    digest = load_prompts(packaged_text(), None, None).digest()
    assert ref.version == (f"gdino=random:tiny-test:seed=0;sam=random:tiny-test:seed=0;"
                           f"saliency=random:resnet18:seed=0;prompts={digest}")
    assert ref.random_weights == ("GroundingDINO tiny-test (saa.gdino_weights=none)",
                                  "SAM tiny-test (saa.sam_weights=none)",
                                  "saliency resnet18 (saa.saliency_weights=none)")
    a = load_for_score(cfg, Storage(StorageSettings()), ref, "cpu")
    b = load_for_score(cfg, Storage(StorageSettings()), ref, "cpu")
    for (name, pa), pb in zip(a.gdino.state_dict().items(), b.gdino.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    whole = a.score(images)
    assert whole.maps.shape == (3, 64, 64) and (whole.maps >= 0).all()
    assert whole.scores == pytest.approx(whole.maps.reshape(3, -1).max(1))
    alone = b.score(images[1:2])  # every image is scored on its own: its batch does not change its map
    assert alone.maps[0] == pytest.approx(whole.maps[1], abs=1e-4)


def test_saliency_weights_are_warned_about_and_named_in_the_version(tmp_path):
    """The saliency network's weights change every confidence (exp(3 x saliency)): they are part of the version,
    and random ones are warned about like the other two models'."""
    import torchvision

    from pipeline.detectors.saa import resolve_saa

    weights = tmp_path / "saliency.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = ScoreConfig.model_validate({"input": "/a", "output": "/b", "detector": "saa",
                                      "saa": TINY | {"saliency_weights": str(weights)}})
    ref = resolve_saa(Storage(StorageSettings()), cfg)
    assert ";saliency=sha256:" in ref.version and ref.params["saa.saliency_fingerprint"].startswith("sha256:")
    assert ref.random_weights == ("GroundingDINO tiny-test (saa.gdino_weights=none)",
                                  "SAM tiny-test (saa.sam_weights=none)")  # the saliency weights are given


def test_geometry_is_the_officials(tiny_ref, one_torch_thread):
    """A wide image is letterboxed for SAM (longer side at SAM's size, padded), GroundingDINO sees it with its
    shorter side at gdino_size, and the map comes back as a square over the whole image."""
    import numpy as np

    from pipeline.detectors.saa import load_for_score
    from pipeline.features.preprocess import LETTERBOX_PAD, letterbox_extent

    cfg, ref = tiny_ref
    detector = load_for_score(cfg, Storage(StorageSettings()), ref, "cpu")
    wide = np.random.default_rng(0).integers(0, 256, size=(30, 60, 3), dtype=np.uint8)
    image = detector.preprocess(wide)
    assert image.shape == (3, 64, 64) and letterbox_extent(image) == (32, 64)
    assert (image[:, 32:] == LETTERBOX_PAD).all() and (image[:, :32] >= 0).all()
    seen = []
    hook = detector.gdino.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["pixel_values"].shape[-2:]),
                                                    with_kwargs=True)
    try:
        result = detector.score(image[None])
    finally:
        hook.remove()
    assert set(seen) == {(64, 128)}  # shorter side 64 (gdino_size), proportions kept
    assert result.maps.shape == (1, 64, 64)
    # a box on the 32 x 64 image reaches SAM in the letterboxed frame (the longer side at SAM's 64: scale 1)
    boxes = []
    hook = detector.sam.register_forward_pre_hook(lambda _m, _a, kw: boxes.append(kw["input_boxes"].clone()),
                                                  with_kwargs=True)
    try:
        embedding = detector.sam.get_image_embeddings(torch.zeros(1, 3, 64, 64))[0]
        masks = detector._segment(embedding, torch.tensor([[8.0, 4.0, 40.0, 28.0]]), 32, 64)
    finally:
        hook.remove()
    assert boxes[-1].tolist() == [[[8.0, 4.0, 40.0, 28.0]]] and masks.shape == (1, 32, 64)


def test_folder_weights_round_trip_with_a_content_fingerprint(tiny_ref, tmp_path, one_torch_thread):
    from pipeline.detectors.saa.models import load_gdino, load_sam, locate_weights
    from pipeline.errors import WeightsError

    storage = Storage(StorageSettings())
    gdino, tokenizer = load_gdino(None, "tiny-test", 0, "saa.gdino_weights")
    gdino.save_pretrained(tmp_path / "gdino")
    tokenizer.save_pretrained(tmp_path / "gdino")
    load_sam(None, "tiny-test", 0, "saa.sam_weights").save_pretrained(tmp_path / "sam")
    folder, fingerprint = locate_weights(storage, str(tmp_path / "gdino"), "saa.gdino_weights", str(tmp_path))
    assert folder == tmp_path / "gdino" and fingerprint.startswith("sha256:")
    assert locate_weights(storage, str(tmp_path / "gdino"), "s", str(tmp_path))[1] == fingerprint
    reloaded, reloaded_tokenizer = load_gdino(folder, "tiny-test", 0, "saa.gdino_weights")
    assert reloaded_tokenizer("crack.")["input_ids"] == tokenizer("crack.")["input_ids"]
    for (name, pa), pb in zip(gdino.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    (tmp_path / "gdino" / "config.json").write_text((tmp_path / "gdino" / "config.json").read_text() + " ")
    assert locate_weights(storage, str(tmp_path / "gdino"), "s", str(tmp_path))[1] != fingerprint
    with pytest.raises(WeightsError, match=r"saa.sam_weights=/no/such/sam: no such folder"):
        locate_weights(storage, "/no/such/sam", "saa.sam_weights", str(tmp_path))
    with pytest.raises(WeightsError, match=r"saa.sam_weights: .* is not a SAM checkpoint folder"):
        load_sam(tmp_path / "gdino", "tiny-test", 0, "saa.sam_weights")
