"""The DMAD importer on synthetic files in the released format: a whole pickled ``convAE`` (classes from the
official module ``model.final_future_prediction_ped2``) and a plain state_dict; the converted checkpoint scores
as the official model does (references in tests/data/official/dmad)."""

import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import StorageSettings
from pipeline.detectors.dmad import DMADDetector, image_scores
from pipeline.detectors.dmad import video_model as pdm
from pipeline.detectors.dmad.image_model import ImageDMAD
from pipeline.detectors.dmad.importer import IMAGE_PARTS, WIDE_RESNET50_CHANNELS, convert
from pipeline.io.storage import Storage
from tests.helpers.official import DMAD as DATA
from tests.helpers.official import official_state, official_windows
from tests.helpers.runs import seeded_torchvision_cache

STORAGE = Storage(StorageSettings())
OFFICIAL = "model.final_future_prediction_ped2"
CLASSES = ["convAE", "Encoder", "Decoder", "OffsetNet", "VectorQuantizer", "CoordConv2d", "AddCoords2d", "ResBlock",
           "Gradient_Loss", "Smooth_Loss", "Test_Loss"]
TOP = {"encoder": "Encoder", "decoder": "Decoder", "offset_net": "OffsetNet", "vq_layer": "VectorQuantizer"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def official_module(monkeypatch):
    """Stand-ins for the official classes, importable under the official module name while the file is written."""
    module = types.ModuleType(OFFICIAL)
    for name in CLASSES:
        setattr(module, name, types.new_class(name, (nn.Module,), exec_body=lambda ns: ns.update(__module__=OFFICIAL)))
    monkeypatch.setitem(sys.modules, "model", types.ModuleType("model"))
    monkeypatch.setitem(sys.modules, OFFICIAL, module)
    return module


def released_object(module: types.ModuleType, state: dict[str, torch.Tensor], seed: int = 0) -> nn.Module:
    """A ``convAE`` object as ``torch.save(model)`` in the official training script pickles it: the official
    module tree and names, the unused Conv2d weights of each CoordConv2d, the loss helpers with plain tensors."""
    g = torch.Generator().manual_seed(seed)
    root = module.convAE()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for depth, name in enumerate(path):
            if name not in node._modules:
                cls = getattr(module, TOP[name]) if depth == 0 and name in TOP else nn.Module
                node.add_module(name, cls())
                if name == "conv":
                    node.__class__ = module.CoordConv2d
                    node.add_module("addcoords2d", module.AddCoords2d())
                    out_c, in_c = value.shape[:2]
                    node.weight = nn.Parameter(torch.randn(out_c, in_c - 4, 3, 3, generator=g))  # never used
                    node.bias = nn.Parameter(torch.randn(out_c, generator=g))
            node = node._modules[name]
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            node.register_buffer(leaf, value.clone())
        else:
            node.register_parameter(leaf, nn.Parameter(value.clone()))
    root.loss_grad = module.Gradient_Loss()
    root.loss_grad.filter_x = torch.tensor([[-1.0, 1.0]]).view(1, 1, 1, 2).repeat(1, 3, 1, 1)
    root.vq_layer.triplet_loss = nn.TripletMarginLoss(margin=1.0, p=2)
    root.beta, root.mse1 = [1, 0.25, 1], 0
    return root


def rgb_frames() -> torch.Tensor:
    bgr = np.load(DATA / "frames.npz")["bgr"]
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255


def test_a_pickled_official_model_converts_and_scores_like_the_official_code(official_module, tmp_path):
    ref, state = official_state("ped2")
    source = tmp_path / "ped2.pth"
    torch.save(released_object(official_module, state), source)
    out = tmp_path / "models" / "dmad-ped2.pt"
    applied = convert(source, str(out), STORAGE, trust_pickle=True)
    assert applied["layout"] == "ped2"
    assert applied["settings"]["code_dim"] == 32 and applied["settings"]["offset_channels"] == 8
    assert applied["settings"]["max_offset_coarse"] == 2.0 and applied["version"].startswith("sha256:")
    det = DMADDetector.load(STORAGE, str(out))  # our checkpoint: weights_only, no pickle code
    assert det.version == applied["version"]
    parts = det.score_clip(rgb_frames())  # 0..1 RGB in, as jobs.score feeds it
    for ours, theirs in {"deformation": "err1", "reconstruction": "mse2", "gradient": "grad"}.items():
        assert np.abs(parts[ours] - ref["components"][theirs].numpy()).max() <= 1e-4, ours


def test_a_plain_state_dict_release_is_accepted_and_its_layout_inferred(tmp_path):
    ref, state = official_state("shanghai")
    source = tmp_path / "shanghai_state.pth"
    torch.save(state, source)
    out = tmp_path / "dmad-shanghai.pt"
    applied = convert(source, str(out), STORAGE, trust_pickle=True)
    assert applied["layout"] == "shanghai" and applied["settings"]["scenes"] == 2
    assert applied["settings"]["window"] == 69 and any("backgrounds" in n for n in applied["notes"])
    model = DMADDetector.load(STORAGE, str(out)).model
    windows = official_windows("shanghai")
    with torch.no_grad():
        parts = pdm.frame_components(model, windows[:, :12], windows[:, 12:],
                                     torch.full((len(windows),), ref["scene"]))
    assert np.abs(parts["reconstruction"].numpy() - ref["components"]["err2_"].numpy()).max() <= 1e-4


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_only_a_trusted_file_is_unpickled_and_foreign_code_is_refused(official_module, tmp_path):
    _, state = official_state("ped2")
    source = tmp_path / "ped2.pth"
    torch.save(released_object(official_module, state), source)
    with pytest.raises(ValueError, match="trust_pickle"):
        convert(source, str(tmp_path / "out.pt"), STORAGE)
    assert not (tmp_path / "out.pt").exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(str(marker))}, evil)
    with pytest.raises(ValueError, match=r"refusing posix\.system|refusing os\.system"):
        convert(evil, str(tmp_path / "evil-out.pt"), STORAGE, trust_pickle=True)
    assert not marker.exists()
    with pytest.raises(ValueError, match="expected the released .pth file"):
        convert(tmp_path, str(tmp_path / "x.pt"), STORAGE, trust_pickle=True)


# ---------------------------------------------------------------- image variant (DMAD-PPDM)

IMAGE_REFERENCE = DATA / "image" / "image.pt"  # official state_dicts (widths / 16) saved by the official code


def official_image_release(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """A synthetic ``wres50_<class>_I.pth`` payload at the official (WideResNet50) widths: seeded tensors under the
    official names, including the weights the official model holds but never uses."""
    torch.manual_seed(seed)
    model = ImageDMAD(nn.Identity(), WIDE_RESNET50_CHANNELS, "synthetic")
    release: dict[str, dict[str, torch.Tensor]] = {part: {} for part in IMAGE_PARTS}
    for name, value in model.state_dict().items():
        part, key = name.split(".", 1)
        release[part][key] = value + 0.01 * torch.randn_like(value) if value.is_floating_point() else value
    release["offset"].update({"conv_offset1.0.weight": torch.randn(64, 3, 3, 3),
                              "conv_offset1.0.bias": torch.randn(64),
                              "conv_offset1.3.weight": torch.randn(64, 64, 3, 3),
                              "conv_offset1.3.bias": torch.randn(64)})
    release["bn"].update({"conv4.weight": torch.randn(1024, 1024, 1, 1), "bn4.weight": torch.ones(1024),
                          "bn4.bias": torch.zeros(1024), "bn4.running_mean": torch.zeros(1024),
                          "bn4.running_var": torch.ones(1024), "bn4.num_batches_tracked": torch.tensor(0)})
    return release


@pytest.fixture
def seeded_torchvision_wide_resnet50(tmp_path, monkeypatch) -> nn.Module:
    """$TORCH_HOME holding a seeded wide_resnet50_2 under torchvision's IMAGENET1K_V1 file name (nothing downloads)."""
    model = seeded_torchvision_cache(tmp_path / "torch-home", "wide_resnet50_2", 5)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return model


def test_the_synthetic_image_release_has_the_official_names():
    official = torch.load(IMAGE_REFERENCE, weights_only=True)["state"]
    synthetic = official_image_release(0)
    for part in IMAGE_PARTS:
        assert set(synthetic[part]) == set(official[part]), part


def test_an_official_image_checkpoint_converts_without_pickle_and_scores(tmp_path, seeded_torchvision_wide_resnet50):
    release = official_image_release(1)
    source = tmp_path / "wres50_screw_I.pth"
    torch.save(release, source)
    out = tmp_path / "models" / "dmad-screw.pt"
    applied = convert(source, str(out), STORAGE)  # three state_dicts: no trust_pickle needed
    assert applied["variant"] == "image" and applied["mvtec_class"] == "screw"
    assert {k: applied["settings"][k] for k in ("backbone", "weights", "image_size", "codebook_size",
                                                 "offset_channels", "deform_weight")} == {
        "backbone": "wide_resnet50_2", "weights": "torchvision:IMAGENET1K_V1", "image_size": 256,
        "codebook_size": 200, "offset_channels": 64, "deform_weight": 0.2}  # official ifgeom weight for screw

    det = DMADDetector.load(STORAGE, str(out))
    assert det.version == applied["version"]
    assert torch.equal(det.model.bn.vq3.embedding.weight, release["bn"]["vq3.embedding.weight"])
    assert torch.equal(det.model.backbone.get_submodule("layer3.5.conv2").weight,
                       seeded_torchvision_wide_resnet50.layer3[5].conv2.weight)  # the named torchvision weights
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    batch = det.score(image)
    with torch.no_grad():
        expected = image_scores(det.model, image, det.settings)
    assert batch.maps.shape == (1, 256, 256)
    assert np.allclose(batch.scores, (expected.map_max + 0.2 * expected.deformation_max).numpy(), rtol=1e-6)


def test_image_checkpoints_the_port_cannot_run_are_refused(tmp_path):
    official = torch.load(IMAGE_REFERENCE, weights_only=True)["state"]
    narrow = tmp_path / "wres50_bottle_I.pth"
    torch.save({part: official[part] for part in IMAGE_PARTS}, narrow)  # not the WideResNet50 widths
    with pytest.raises(ValueError, match="codebook vectors of 64 channels"):
        convert(narrow, str(tmp_path / "a.pt"), STORAGE)
    pixel = tmp_path / "wres50_bottle_P.pth"
    bn = {k: v for k, v in official["bn"].items() if not k.startswith("vq3.")}
    torch.save({"offset": official["offset"], "bn": bn, "decoder": official["decoder"]}, pixel)
    with pytest.raises(ValueError, match="non-VQ"):
        convert(pixel, str(tmp_path / "b.pt"), STORAGE)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
