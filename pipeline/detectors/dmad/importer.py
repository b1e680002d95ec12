"""DMAD importer: the authors' released models to a checkpoint for ``jobs.score --model``.

Image variant (``DMAD-PPDM``, MVTec): the official training saves ``{"offset": ..., "bn": ..., "decoder": ...}``
(three state_dicts of plain tensors, ``wres50_<class>_I.pth``), read here with ``weights_only=True`` (no
``trust_pickle`` needed). The encoder is WideResNet50 with torchvision's IMAGENET1K_V1 weights (the official
``pretrained=True``), which is not in the file: the checkpoint names it and scoring loads it. The official image score
weight (0.2 for screw, carpet, metal_nut, else 0.05) is applied when the file name says the class. Only the official
VQ version (``_I``, image-level) exists in this product; the non-VQ ``_P`` (pixel-level) bottleneck is refused.

Video variant (``DMAD-PDM``): the released files are whole pickled ``convAE`` objects (``torch.save(model)``),
whose classes live in the official modules ``model.final_future_prediction_{ped2,avenue,shanghai}``. Unpickling
runs whatever the file names, so :func:`convert` does it only with ``trust_pickle=True``, and then in a separate
process (:mod:`pipeline.detectors.dmad.unpickle`), which writes plain tensors that this process reads with
``weights_only=True``. Scoring never unpickles.

The official classes are made importable in that process by empty stand-ins: every class of the three official
model modules becomes a bare ``nn.Module`` subclass of the same name, which is all ``state_dict()`` needs, so no
checkout of the official code (and no OpenCV) is needed and none of its code runs. Globals outside those modules,
``torch.nn`` modules and torch's tensor rebuilding are refused.

The layout (ped2 / avenue / shanghai) comes from the pickled class's module name; a plain state_dict release is also
accepted, its layout inferred from the shapes (a background per scene: shanghai; first encoder width 32: ped2;
64: avenue). The settings the official evaluation used for that layout are applied (colour space, offset limits,
smoothing window) and returned.
"""

from __future__ import annotations

import pathlib
import pickle
import re
import subprocess
import sys
import tempfile
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.detectors.checkpoints import checkpoint_version
from pipeline.detectors.dmad import DMADDetector, save_checkpoint
from pipeline.detectors.dmad.image_model import ImageDMAD
from pipeline.detectors.dmad.settings import DMADSettings
from pipeline.detectors.dmad.video_model import VideoDMAD
from pipeline.features.backbones import PAPER_TORCHVISION_WEIGHTS
from pipeline.io.storage import Storage

# official module prefix -> ours, per layout (the modules differ only in the skip connections' names)
_COMMON = {
    "encoder.moduleConv1": "encoder.stage1", "encoder.moduleConv2": "encoder.stage2",
    "encoder.moduleConv3": "encoder.stage3", "encoder.moduleConv4": "encoder.stage4",
    "encoder.mask_": "encoder.mask_up", "encoder.mask": "encoder.mask_head",
    "decoder.moduleConv": "decoder.stage4", "decoder.moduleUpsample4": "decoder.up4",
    "decoder.moduleDeconv3": "decoder.stage3", "decoder.moduleUpsample3": "decoder.up3",
    "decoder.moduleDeconv2": "decoder.stage2", "decoder.moduleUpsample2": "decoder.up2",
    "decoder.moduleDeconv1": "decoder.head", "decoder.mask": "decoder.mask_head",
    "offset_net.conv_offset1": "offset_net.trunk", "offset_net.conv_offset2": "offset_net.residual",
    "offset_net.conv_offset3": "offset_net.fine", "offset_net.conv_offset4": "offset_net.coarse",
    "vq_layer.embedding": "vq",
}
SKIPS = {"ped2": {"encoder.skip": "encoder.skip3", "encoder.skip_": "encoder.skip4"},
         "avenue": {"encoder.skip2": "encoder.skip3", "encoder.skip3": "encoder.skip4"},
         "shanghai": {"encoder.skip2": "encoder.skip3", "encoder.skip3": "encoder.skip4"}}
# what the official evaluation of each dataset used, beyond the shapes
LAYOUT_SETTINGS: dict[str, dict[str, Any]] = {
    "ped2": {"colour": "bgr", "max_offset_coarse": 2.0, "max_offset_fine": 3.0, "window": 11, "window_keep": 5},
    "avenue": {"colour": "gray", "max_offset_coarse": 3.0, "max_offset_fine": 3.0, "window": 11, "window_keep": 5},
    "shanghai": {"colour": "gray", "max_offset_coarse": 2.0, "max_offset_fine": 3.0, "window": 69,
                 "window_keep": 25},
}


def official_state_to_ours(state: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename an official ``convAE`` state_dict to :class:`VideoDMAD`'s; drops what the official model holds but
    never uses (the weights CoordConv2d inherits from Conv2d besides its real ``.conv``)."""
    table = {**_COMMON, **SKIPS[layout]}
    ours = {}
    for key, value in state.items():
        if key == "bkg":
            ours["background"] = value if value.ndim == 4 else value.unsqueeze(0)
            continue
        if key.endswith((".weight", ".bias")) and key.rsplit(".", 1)[0] + ".conv.weight" in state:
            continue
        if key == "vq_layer.embedding.weight":
            ours["vq.codebook"] = value
            continue
        module, rest = ".".join(key.split(".")[:2]), ".".join(key.split(".")[2:])
        if module not in table:
            raise ValueError(f"{key}: not a parameter of the official DMAD video model ({layout})")
        ours[f"{table[module]}.{rest}"] = value
    return ours


IMAGE_PARTS = ("offset", "bn", "decoder")
UNUSED_IMAGE_WEIGHTS = ("bn.conv4.", "bn.bn4.")  # the official bottleneck builds these but never runs them


def official_image_state_to_ours(release: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """The official image checkpoint ``{"offset": ..., "bn": ..., "decoder": ...}`` (state_dicts) as
    :class:`~pipeline.detectors.dmad.image_model.ImageDMAD`'s state (without the frozen backbone): the parts become
    prefixes; the weights the official model holds but never uses are dropped (those ``CoordConv2d`` inherits from
    ``Conv2d`` besides its real ``.conv``, and the bottleneck's ``conv4`` / ``bn4``)."""
    ours = {}
    for part in IMAGE_PARTS:
        state = release[part]
        for key, value in state.items():
            name = f"{part}.{key}"
            if name.startswith(UNUSED_IMAGE_WEIGHTS) or (
                    key.endswith((".weight", ".bias")) and key.rsplit(".", 1)[0] + ".conv.weight" in state):
                continue
            ours[name] = value
    return ours


WIDE_RESNET50_CHANNELS = [256, 512, 1024]  # layer1..layer3, the official encoder
GEOMETRIC_CLASSES = {"screw", "carpet", "metal_nut"}  # official ``ifgeom``: deformation weight 0.2, else 0.05
RELEASED_IMAGE_NAME = re.compile(r"^wres50_(?P<cls>\w+?)_(?P<mode>[IP])\.pth$")


def read_image_release(source: pathlib.Path) -> dict[str, dict[str, Tensor]] | None:
    """The official image checkpoint's three state_dicts, or None when ``source`` is not in that format (read with
    ``weights_only=True``: a pickled model object is not opened here)."""
    try:
        release = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):
        return None
    if not isinstance(release, dict) or not set(IMAGE_PARTS) <= set(release):
        return None
    return release


def convert_image(source: pathlib.Path, release: dict[str, dict[str, Tensor]], out: str, storage: Storage
                  ) -> dict[str, Any]:
    if "vq3.embedding.weight" not in release["bn"]:
        raise ValueError(f"source={source}: this is the official non-VQ (pixel-level, _P) bottleneck; only the VQ "
                         "version (the image-level _I checkpoints) is ported")
    codebook = release["bn"]["vq3.embedding.weight"]
    if codebook.shape[1] != WIDE_RESNET50_CHANNELS[2]:
        raise ValueError(f"source={source}: codebook vectors of {codebook.shape[1]} channels; the official encoder "
                         f"(wide_resnet50_2 layer3) has {WIDE_RESNET50_CHANNELS[2]}")
    named = RELEASED_IMAGE_NAME.match(source.name)
    cls = named["cls"] if named else None
    settings = DMADSettings(variant="image", image_size=256, backbone="wide_resnet50_2",
                            weights=f"torchvision:{PAPER_TORCHVISION_WEIGHTS}", codebook_size=codebook.shape[0],
                            offset_channels=release["offset"]["conv_offset1.0.conv.weight"].shape[0],
                            deform_weight=0.2 if cls in GEOMETRIC_CLASSES else 0.05)
    with torch.device("meta"):  # the trainable parts only: the backbone is rebuilt from its weights when scoring
        model = ImageDMAD(nn.Module(), WIDE_RESNET50_CHANNELS,
                          f"torchvision:{settings.backbone}:{PAPER_TORCHVISION_WEIGHTS}",
                          settings.codebook_size, settings.offset_channels)
    state = {k: v.float() if v.is_floating_point() else v for k, v in official_image_state_to_ours(release).items()}
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as error:
        raise ValueError(f"source={source}: does not fit the official image network: "
                         f"{str(error).splitlines()[-1].strip()}") from None
    data = save_checkpoint(model, settings)
    storage.write_bytes(out, data)
    notes = [f"scoring loads the encoder weights {settings.weights} (torchvision downloads them, or copy "
             "wide_resnet50_2-95faca4d.pth into $TORCH_HOME/hub/checkpoints)",
             "image score = max(map) + deform_weight * max(inverse-offset map) per image; the official evaluation "
             "min-max normalises both over the test set and reports the better of two AUROCs "
             "(see pipeline/detectors/dmad/image_model.py)"]
    if cls is None:
        notes.append(f"the file name does not say the MVTec class: deform_weight {settings.deform_weight}; the "
                     f"official code uses 0.2 for {', '.join(sorted(GEOMETRIC_CLASSES))}")
    return {"variant": "image", "mvtec_class": cls, "settings": settings.model_dump(mode="json"),
            "version": checkpoint_version(data), "notes": notes}


def infer_layout(state: dict[str, Tensor]) -> str:
    if state["bkg"].ndim == 4:
        return "shanghai"
    width = state["encoder.moduleConv1.0.weight"].shape[0]
    if width not in (32, 64):
        raise ValueError(f"cannot tell ped2 from avenue by the first encoder width {width} (official: 32, 64)")
    return "ped2" if width == 32 else "avenue"


def official_settings(state: dict[str, Tensor], layout: str) -> DMADSettings:
    """The settings that rebuild the official model ``state`` (official names) and score as its evaluation did."""
    codebook = state["vq_layer.embedding.weight"]
    background = state["bkg"]
    skip = "encoder.skip.0.weight" if layout == "ped2" else "encoder.skip2.0.weight"
    cin = state["encoder.moduleConv1.0.weight"].shape[1] - (3 if layout == "shanghai" else 0)
    return DMADSettings(variant="video", layout=layout, image_size=background.shape[-1], in_frames=cin // 3,
                        code_dim=codebook.shape[1], codebook_size=codebook.shape[0],
                        skip_channels=state[skip].shape[0],
                        offset_channels=state["offset_net.conv_offset1.0.conv.weight"].shape[0],
                        scenes=background.shape[0] if background.ndim == 4 else 1, **LAYOUT_SETTINGS[layout])


def unpickle_in_subprocess(source: pathlib.Path) -> tuple[str | None, dict[str, Tensor]]:
    """(layout named by the pickled class, or None for a plain state_dict; official state_dict)."""
    with tempfile.TemporaryDirectory(prefix="dmad-import-") as tmp:
        out = pathlib.Path(tmp) / "state.pt"
        done = subprocess.run([sys.executable, "-m", "pipeline.detectors.dmad.unpickle", str(source), str(out)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise ValueError(f"source={source}: could not read the DMAD release: {lines[-1] if lines else '?'}")
        payload = torch.load(out, map_location="cpu", weights_only=True)
    return payload["layout"], payload["state"]


def convert(source: pathlib.Path, out: str, storage: Storage, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Convert a released DMAD model to our checkpoint at ``out``: an image checkpoint (three state_dicts, read
    without pickle code) or a video model (pickled ``convAE`` or its state_dict; needs ``trust_pickle``)."""
    if not source.is_file():
        raise ValueError(f"source={source}: expected the released .pth file")
    release = read_image_release(source)
    if release is not None:
        return convert_image(source, release, out, storage)
    if not trust_pickle:
        raise ValueError("trust_pickle: the DMAD release is a pickled model object, which runs code when loaded; "
                         "convert it only if you trust the file (pass trust_pickle=True / --trust-pickle)")
    layout, state = unpickle_in_subprocess(source)
    layout = layout or infer_layout(state)
    settings = official_settings(state, layout)
    model = VideoDMAD(settings)
    model.load_state_dict(official_state_to_ours(state, layout))
    data = save_checkpoint(model, settings)
    storage.write_bytes(out, data)
    detector = DMADDetector(model, settings)
    notes = ["frames are scored per video; the official evaluation smooths across the concatenated test set",
             "see pipeline/detectors/dmad/video_model.py for every difference from the official code"]
    if layout == "shanghai":
        notes.append(f"the release holds {settings.scenes} backgrounds, one per official video (training videos in "
                     "name order, then test videos; the official evaluation recomputes them from the frames); this "
                     "product picks background (scene number - 1) from the video file name, so these do not map "
                     "onto scenes: replace them with one background per scene before scoring")
    return {"layout": layout, "settings": settings.model_dump(mode="json"),
            "version": detector.version, "notes": notes}
