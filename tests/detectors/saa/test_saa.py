"""SAA+: each hybrid-prompt stage on a constructed case, the prompt sets, the weights, the detector."""

import subprocess
import sys

import pytest
import torch

from pipeline.config import ScoreConfig, StorageSettings, load_config
from pipeline.detectors.saa.prompts import PromptSet, load_prompts, packaged_text
from pipeline.detectors.saa.stages import (
    find_objects,
    fuse,
    inside_fraction,
    keep_inside,
    keep_small,
    multi_instance_saliency,
    regularise_proposals,
    rescore,
    single_instance_saliency,
    top_k,
)
from pipeline.errors import ConfigError
from pipeline.io.storage import Storage
from tests.helpers import REPO

ROOT = REPO
TINY = {"gdino_weights": "none", "sam_weights": "none", "saliency_backbone": "resnet18", "saliency_size": 64}


# ---------------------------------------------------------------- hybrid-prompt stages, constructed cases


def test_location_prompt_drops_a_box_outside_the_object():
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:, :32] = True  # the object: the left half
    boxes = torch.tensor([[4.0, 4, 20, 20], [40, 40, 60, 60], [24, 10, 40, 26]])  # inside, outside, half on it
    assert inside_fraction(boxes, region).tolist() == [1.0, 0.0, 0.5]
    assert keep_inside(boxes, region, 0.5).tolist() == [True, False, True]
    assert keep_inside(boxes, region, 0.6).tolist() == [True, False, False]


def test_area_prompt_drops_an_over_large_box():
    boxes = torch.tensor([[0.0, 0, 30, 30], [10, 10, 60, 60], [0, 0, 100, 100]])  # 9 %, 25 %, 100 % of 100x100
    object_area, max_area = 0.5, 0.3  # anomalies may cover at most 30 % of an object that covers half the image
    assert keep_small(boxes, 100, max_area * object_area).tolist() == [True, False, False]


def test_confidence_prompt_keeps_the_top_k():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.4])
    assert top_k(scores, 3).tolist() == [1, 3, 4]
    assert len(top_k(scores, 50)) == 7


def test_proposals_are_regularised_by_every_object_property_prompt():
    """Two captions' GroundingDINO outputs on a 100 px image whose object (a 40x40 box, its mask the left half of
    it) was found: only the confident, small, on-object box that is not the object itself survives."""
    object_boxes = find_objects(torch.tensor([[10.0, 10, 50, 50], [0, 0, 100, 100]]), torch.tensor([0.6, 0.7]),
                                threshold=0.3, instances=2, size=100, limit=5)  # two instances: half the image
    assert object_boxes.tolist() == [[10.0, 10, 50, 50]]
    region = torch.zeros(100, 100, dtype=torch.bool)
    region[10:50, 10:30] = True
    first = (torch.tensor([[12.0, 12, 20, 20], [40, 40, 48, 48], [10, 10, 30, 50]]),  # good, off the mask, too large
             torch.tensor([0.5, 0.9, 0.8]), torch.tensor([False, False, False]))
    second = (torch.tensor([[14.0, 30, 22, 38], [20, 20, 26, 26]]),  # below the threshold, the object's own name
              torch.tensor([0.2, 0.9]), torch.tensor([False, True]))
    boxes, scores = regularise_proposals([first, second], threshold=0.3, object_boxes=object_boxes, region=region,
                                         max_area=0.3, min_inside=0.5, limit=5)  # 30 % of a 16 %-image object
    assert boxes.tolist() == [[12.0, 12, 20, 20]] and scores.tolist() == [0.5]
    no_object = torch.zeros_like(region)  # nothing found: location does not apply, the area limit is the image's
    boxes, scores = regularise_proposals([first], 0.3, object_boxes[:0], no_object, 0.3, 0.5, limit=5)
    assert boxes.tolist() == [[40.0, 40, 48, 48], [10, 10, 30, 50], [12, 12, 20, 20]]  # most confident first
    boxes, scores = regularise_proposals([first], 0.3, object_boxes[:0], no_object, 0.3, 0.5, limit=2)
    assert scores.tolist() == pytest.approx([0.9, 0.8])  # SAM refines at most `limit` proposals


def _texture_with_odd_patch(size: int = 16, channels: int = 16) -> torch.Tensor:
    """L2-normalised features of a repeated texture (two alternating vectors plus noise) with one 3x3 patch of
    a different vector at rows/cols 4..6."""
    gen = torch.Generator().manual_seed(0)
    a, b, odd = torch.randn(3, channels, generator=gen)
    feats = torch.where((torch.arange(size) % 2 == 0).view(1, 1, size), a.view(-1, 1, 1), b.view(-1, 1, 1))
    feats = feats.expand(channels, size, size).clone() + 0.05 * torch.randn(channels, size, size, generator=gen)
    feats[:, 4:7, 4:7] = odd.view(-1, 1, 1) + 0.05 * torch.randn(channels, 3, 3, generator=gen)
    return torch.nn.functional.normalize(feats, dim=0)


def test_saliency_ranks_an_unusual_region_higher():
    saliency = single_instance_saliency(_texture_with_odd_patch(), neighbors=20)
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


def test_map_is_the_mean_confidence_of_the_covering_masks():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4] = True
    masks[1, 2:6] = True
    amap = fuse(masks, torch.tensor([0.8, 0.4]))
    assert amap[0, 0] == pytest.approx(0.8)  # one mask: its confidence (the official code halves it)
    assert amap[3, 0] == pytest.approx(0.6) and amap[5, 0] == pytest.approx(0.4) and amap[7, 0] == 0


# ---------------------------------------------------------------- prompt sets


def test_packaged_prompts_cover_mvtec_and_visa_with_generic_captions_first():
    metal = load_prompts(packaged_text(), None, "metal_nut")
    assert metal.object == "metal nut" and metal.max_area == 1.0 and metal.max_anomalies == 5
    assert metal.captions[:3] == ["defect on metal nut", "damage on metal nut", "flaw on metal nut"]
    assert metal.captions[3:] == ["blue defect. black defect. red defect. scratch."]
    candle = load_prompts(packaged_text(), None, "candle")
    assert (candle.instances, candle.max_anomalies, candle.max_area) == (4, 1, 0.3)
    generic = load_prompts(packaged_text(), None, None)
    assert generic.object == "object" and len(generic.captions) == 3
    for product in ["carpet", "screw", "zipper", "pcb1", "pipe_fryum", "macaroni2", "capsules"]:
        assert load_prompts(packaged_text(), None, product).product == product


def test_custom_prompts_file_defaults_digest_and_errors(tmp_path):
    text = """
generic: {object: part, captions: ["defect on {object}"], max_anomalies: 3}
products:
  widget: {object: widget, defects: ["dent. burr."], max_area: 0.2}
"""
    widget = load_prompts(text, "prompts.yaml", "widget")
    assert widget == PromptSet(product="widget", object="widget", captions=["defect on widget", "dent. burr."],
                               instances=1, max_area=0.2, max_anomalies=3)
    assert load_prompts(text.replace("burr", "scratch"), "x", "widget").digest() != widget.digest()
    assert load_prompts(text, "elsewhere.yaml", "widget").digest() == widget.digest()
    with pytest.raises(ConfigError, match="product 'gadget' is not in .*prompts.yaml.*widget"):
        load_prompts(text, "prompts.yaml", "gadget")
    with pytest.raises(ConfigError, match=r"products.widget.max_area"):
        load_prompts(text.replace("0.2", "1.5"), "prompts.yaml", "widget")
    with pytest.raises(ConfigError, match=r"only placeholder is \{object\}"):
        load_prompts(text.replace("{object}", "{thing}"), "prompts.yaml", None)
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
    assert ref.version == f"gdino=random:tiny-test:seed=0;sam=random:tiny-test:seed=0;prompts={digest}"
    assert "randomly initialised gdino and sam" in ref.warning
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
