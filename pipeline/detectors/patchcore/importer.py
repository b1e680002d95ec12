"""A class folder saved by the official PatchCore code (amazon-science/patchcore-inspection,
``PatchCore.save_to_path``: ``patchcore_params.pkl`` + ``nnscorer_search_index.faiss``) to a new
version of one of our memory banks.

- The faiss file becomes the version's only shard, byte for byte (an exact ``IndexFlatL2``, what
  the official ``FaissNN`` writes; approximate indexes are refused).
- The parameters pickle is read with :class:`PlainUnpickler`, which builds dicts, lists, tuples,
  strings and numbers and refuses every global (class, function), so a crafted file cannot run
  code; anything else in it is refused with one line naming the file.
- The bank records the official settings: backbone (``wideresnet50`` -> ``wide_resnet50_2``,
  torchvision ``IMAGENET1K_V1``, what ``pretrained=True`` loaded), layers, crop size, embedding
  sizes, ``patchsize``, ``anomaly_scorer_num_nn``, the official patch score (mean squared L2) and
  ``bn_shift_input``: the official code ran one all-ones image through the backbone in train mode
  before building the bank, so scoring reproduces that BatchNorm shift exactly
  (``features/backbones.py``).

Not imported: ensembles (``Ensemble-i-n_`` files; their scores are min-max normalised over the
whole test set), layers other than ``layer1..3`` of the three torchvision ResNets we build,
``patchstride`` other than 1, non-square ``input_shape``.
"""

from __future__ import annotations

import datetime as dt
import io
import pathlib
import pickle
from typing import Any

import faiss
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from pipeline.detectors.patchcore.settings import PatchCoreSettings
from pipeline.errors import ImportRefused
from pipeline.features.backbones import PAPER_TORCHVISION_WEIGHTS
from pipeline.io.storage import Storage
from pipeline.memory_bank.bank import BankMetadata, fingerprint, publish_index_file
from pipeline.memory_bank.index import deserialize

PARAMS_FILE = "patchcore_params.pkl"
INDEX_FILE = "nnscorer_search_index.faiss"
# official backbone name -> torchvision architecture (official: torchvision.models.X(pretrained=True))
BACKBONES = {"resnet18": "resnet18", "resnet50": "resnet50", "wideresnet50": "wide_resnet50_2"}
LAYERS = ("layer1", "layer2", "layer3")
PARAM_TYPES = {"backbone.name": str, "layers_to_extract_from": list, "input_shape": (tuple, list),
               "pretrain_embed_dimension": int, "target_embed_dimension": int, "patchsize": int,
               "patchstride": int, "anomaly_scorer_num_nn": int}
# The official run scripts resize to this (bilinear), then centre-crop input_shape; the files do not say
OFFICIAL_RESIZE = {224: 256, 320: 366}


class PlainUnpickler(pickle.Unpickler):
    """Unpickles plain builtins only: every class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refuses {module}.{name}: only plain dicts, lists, tuples, strings and "
                                     f"numbers are allowed")


def read_params(path: pathlib.Path) -> dict[str, Any]:
    """The official parameters dict, checked for the keys and types ``save_to_path`` writes."""
    try:
        params = PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001
        raise ImportRefused(f"source={path}: not a plain parameters pickle ({exc})") from exc
    if not isinstance(params, dict):
        raise ImportRefused(f"source={path}: expected a dict of parameters, got {type(params).__name__}")
    for key, kind in PARAM_TYPES.items():
        if not isinstance(params.get(key), kind) or isinstance(params.get(key), bool):
            raise ImportRefused(f"source={path}: {key} missing or not {getattr(kind, '__name__', kind)} "
                                f"(got {params.get(key)!r:.80})")
    return params


def _folder(source: pathlib.Path) -> pathlib.Path:
    folder = source.parent if source.is_file() else source
    if not (folder / PARAMS_FILE).is_file() or not (folder / INDEX_FILE).is_file():
        ensembles = sorted(p.name for p in folder.glob(f"Ensemble-*_{PARAMS_FILE}")) if folder.is_dir() else []
        if ensembles:
            raise ImportRefused(f"source={source}: an official ensemble ({', '.join(ensembles)}); ensembles are not "
                                f"supported (their scores are normalised over the whole test set)")
        raise ImportRefused(f"source={source}: expected a folder with {PARAMS_FILE} and {INDEX_FILE}")
    return folder


def _settings(params: dict[str, Any], where: pathlib.Path) -> dict[str, Any]:
    """Our bank settings for the official parameters, or a one-line refusal."""
    name = params["backbone.name"]
    if name not in BACKBONES:
        raise ImportRefused(f"source={where}: backbone {name!r} is not supported (supported: {', '.join(BACKBONES)})")
    layers = params["layers_to_extract_from"]
    if not layers or any(layer not in LAYERS for layer in layers) or list(layers) != sorted(set(layers)):
        raise ImportRefused(f"source={where}: layers_to_extract_from={layers}: supported: distinct {LAYERS}, in order")
    shape = tuple(params["input_shape"])
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise ImportRefused(f"source={where}: input_shape={shape}: only square RGB inputs (3, S, S) are supported")
    if params["patchstride"] != 1 or params["patchsize"] % 2 == 0:
        raise ImportRefused(f"source={where}: patchsize={params['patchsize']} patchstride={params['patchstride']}: "
                            f"only odd patch sizes with stride 1 are supported")
    crop = int(shape[1])
    resize = OFFICIAL_RESIZE.get(crop, crop)
    return {"backbone": BACKBONES[name], "layers": list(layers), "image_size": resize,
            "crop_fraction": crop / resize, "interpolation": "bilinear",
            "pretrain_embed_dim": params["pretrain_embed_dimension"], "embed_dim": params["target_embed_dimension"],
            "patchsize": params["patchsize"], "anomaly_scorer_num_nn": params["anomaly_scorer_num_nn"]}


def _grid(backbone: str, layers: list[str], size: int) -> tuple[int, int]:
    """The first tapped layer's grid at ``size`` px (shapes only: built on the meta device, no weights)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(backbone, weights=None)
    taps = create_feature_extractor(model, return_nodes={layers[0]: layers[0]})
    shape = taps(torch.empty(1, 3, size, size, device="meta"))[layers[0]].shape
    return int(shape[-2]), int(shape[-1])


def convert(source: pathlib.Path, out: str, storage: Storage) -> dict[str, Any]:
    """Write the official folder ``source`` as a new version of the bank root ``out``; returns what was applied."""
    source = pathlib.Path(source)
    folder = _folder(source)
    params = read_params(folder / PARAMS_FILE)
    settings = _settings(params, folder / PARAMS_FILE)
    data = (folder / INDEX_FILE).read_bytes()
    try:
        index = deserialize(data)
    except Exception as exc:  # noqa: BLE001
        raise ImportRefused(f"source={folder / INDEX_FILE}: not a faiss index ({exc})") from exc
    if type(index) is not faiss.IndexFlatL2:
        raise ImportRefused(f"source={folder / INDEX_FILE}: a {type(index).__name__}; only exact IndexFlatL2 banks "
                            f"(the official FaissNN's) are supported")
    if index.d != settings["embed_dim"] or index.ntotal == 0:
        raise ImportRefused(f"source={folder / INDEX_FILE}: {index.ntotal} vectors of dimension {index.d}, the "
                            f"parameters say target_embed_dimension={settings['embed_dim']}")
    size = int(params["input_shape"][1])  # what the model sees: the crop
    weights = f"torchvision:{PAPER_TORCHVISION_WEIGHTS}"
    meta = BankMetadata(
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), normal_uri=str(source),
        patchcore=PatchCoreSettings(weights=weights, seed=0, coreset_ratio=1.0, coreset_projection_dim=0,
                                    num_neighbors=9, reweight=False, sigma=4.0, **settings),
        weights_fingerprint=f"torchvision:{settings['backbone']}:{PAPER_TORCHVISION_WEIGHTS}",
        grid=_grid(settings["backbone"], settings["layers"], size), patch_distance="squared",
        bn_shift_input=(size, size), n_images=0, n_errors=0, n_patches=index.ntotal, n_bank=index.ntotal, n_shards=1,
        threshold=None, calibration={}, fingerprint=fingerprint(index.reconstruct_n(0, index.ntotal)))
    meta = publish_index_file(storage, out, data, meta)
    notes = [
        f"scores with the official code's BatchNorm shift: one all-ones 3x{size}x{size} image through the backbone "
        f"in train mode before use, as the released bank was built (bank.json bn_shift_input)",
        f"backbone weights {weights}: torchvision downloads them, or copy the file into $TORCH_HOME/hub/checkpoints "
        f"on machines without network access",
        "no decision threshold: the official code stores none; give jobs.score --threshold to get is_anomaly",
        "an imported bank cannot be extended with jobs.fit --update-from (its vectors come from the shifted backbone)",
    ]
    if size in OFFICIAL_RESIZE:
        notes.append(f"preprocessing of the official run scripts (not stored in the files): resize to "
                     f"{OFFICIAL_RESIZE[size]} (bilinear), centre-crop {size}")
    else:
        notes.append(f"the files do not say how images were resized before the {size} px input: this bank resizes "
                     f"to {size} without a crop; edit image_size/crop_fraction in bank.json if the release differs")
    return {"format": "patchcore", "bank": out, "version": meta.version, "fingerprint": meta.fingerprint,
            "n_bank": meta.n_bank, "weights": weights, **settings, "patch_distance": meta.patch_distance,
            "bn_shift_input": [size, size], "official_params": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in params.items()}, "notes": notes}
