"""GroundingDINO and SAM for SAA+, on Hugging Face ``transformers``: sizes, weights and the tokenizer.

Weights (``saa.gdino_weights`` / ``saa.sam_weights``):

- a local folder: ``from_pretrained`` (config + safetensors, and for GroundingDINO its tokenizer files);
- an ``s3://`` prefix: copied file by file into ``saa.weights_cache`` with a SHA-256 of each file, then loaded as
  a folder; a complete copy (its manifest written last, sizes matching) is reused;
- a hub name (``IDEA-Research/grounding-dino-tiny``, ``facebook/sam-vit-huge``): downloaded with
  ``huggingface_hub.snapshot_download`` where the network allows, then loaded as a folder;
- ``none``: seeded random weights of ``saa.gdino_arch`` / ``saa.sam_arch``, whose tokenizer is the tiny packaged
  WordPiece vocabulary (random weights give the words no meaning anyway).

The fingerprint of a folder is the SHA-256 of its manifest (relative path and SHA-256 of every file), so the same
weights give the same fingerprint from any of the three places. The tiny architectures follow the way
transformers' own model tests build theirs (a layer or two, hidden sizes 8-32); the vocabulary keeps BERT's ids
for ``[CLS]``, ``[SEP]``, ``.`` and ``?`` (101, 102, 1012, 1029), which GroundingDINO uses to split phrases.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    PreTrainedTokenizerBase,
    SamConfig,
    SamModel,
    SwinConfig,
)

from pipeline.errors import WeightsError
from pipeline.io.storage import Storage

TINY_VOCAB = Path(__file__).parent / "data" / "tiny-vocab.txt"
MANIFEST = ".manifest.json"
COPY_CHUNK = 16 * 1024 * 1024

GDINO_ARCHS: dict[str, dict[str, Any]] = {
    "tiny-test": {
        "backbone_config": SwinConfig(window_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                      image_size=64, out_features=["stage2", "stage3", "stage4"],
                                      out_indices=[2, 3, 4]).to_dict(),
        "text_config": BertConfig(vocab_size=1030, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64).to_dict(),
        "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 20,
        "encoder_n_points": 2, "decoder_n_points": 2, "max_text_len": 64, "num_feature_levels": 3,
    },
    "swin-t": {},  # transformers' defaults: grounding-dino-tiny (Swin-T image tower, BERT-base text tower)
}
SAM_ARCHS: dict[str, dict[str, Any]] = {
    "tiny-test": {
        "vision_config": {"hidden_size": 16, "output_channels": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                          "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                          "mlp_dim": 32, "num_pos_feats": 4},
        "prompt_encoder_config": {"hidden_size": 8, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
        "mask_decoder_config": {"hidden_size": 8, "mlp_dim": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "iou_head_hidden_dim": 8},
    },
    "vit-b": {},  # transformers' defaults: sam-vit-base
    "vit-l": {"vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                "global_attn_indexes": [5, 11, 17, 23]}},
    "vit-h": {"vision_config": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                                "global_attn_indexes": [7, 15, 23, 31]}},
}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_fingerprint(manifest: dict[str, str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 over the relative path and SHA-256 of every (non-hidden) file under ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                              p.relative_to(folder).parts))
    return _manifest_fingerprint({str(p.relative_to(folder)): _sha256_file(p) for p in files})


def _copy_prefix(storage: Storage, uri: str, cache: Path, setting: str) -> Path:
    """``uri``'s files under ``cache/<hash of uri>``, each hashed while it is copied; reused if complete."""
    target = cache / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    manifest_path = target / MANIFEST
    if manifest_path.is_file():
        recorded = json.loads(manifest_path.read_text())
        if all((target / rel).is_file() and (target / rel).stat().st_size == entry["size"]
               for rel, entry in recorded.items()):
            return target
    files = storage.list_files(uri)
    if not files:
        raise WeightsError(f"{setting}={uri}: no files under this prefix")
    base = uri.rstrip("/") + "/"
    manifest = {}
    for file_uri in files:
        rel = file_uri[len(base):] if file_uri.startswith(base) else Path(file_uri).name
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with storage.open_read(file_uri) as src, open(f"{dest}.part", "wb") as out:
            while chunk := src.read(COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        os.replace(f"{dest}.part", dest)
        manifest[rel] = {"sha256": digest.hexdigest(), "size": size}
    manifest_path.write_text(json.dumps(manifest, sort_keys=True))  # last: marks the copy complete
    return target


def locate_weights(storage: Storage, weights: str, setting: str, cache: str) -> tuple[Path | None, str]:
    """``(local folder or None for 'none', fingerprint)`` of a weights setting; see the module docstring."""
    if weights == "none":
        return None, "random"
    try:
        if weights.startswith("s3://"):
            folder = _copy_prefix(storage, weights, Path(cache).expanduser(), setting)
        elif Path(weights.removeprefix("file://")).expanduser().is_dir():
            folder = Path(weights.removeprefix("file://")).expanduser()
        elif weights.startswith(("/", ".", "~", "file://")) or weights.count("/") != 1:
            raise WeightsError(f"{setting}={weights}: no such folder (and not an s3:// prefix or a hub name)")
        else:
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(weights))
            except Exception as exc:  # noqa: BLE001 - offline, unknown repo, ...: one line naming the setting
                raise WeightsError(f"{setting}={weights}: not a local folder, and the hub download failed "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage errors while copying
        raise WeightsError(f"{setting}={weights}: cannot copy the weights ({exc})") from exc
    manifest = folder / MANIFEST
    if manifest.is_file():  # an s3 copy: its files were hashed while copying
        recorded = json.loads(manifest.read_text())
        return folder, _manifest_fingerprint({rel: entry["sha256"] for rel, entry in recorded.items()})
    return folder, folder_fingerprint(folder)


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _from_pretrained(cls: type, folder: Path, setting: str, what: str) -> torch.nn.Module:
    """``cls.from_pretrained(folder)`` in eval mode, refusing a checkpoint that leaves tensors missing or of the
    wrong shape (transformers would initialise them at random and carry on)."""
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{setting}: {folder} is not a {what} checkpoint folder ({exc})") from exc
    bad = sorted(info.get("missing_keys") or []) + [str(m[0]) for m in info.get("mismatched_keys") or []]
    if bad:
        raise WeightsError(f"{setting}: {folder} is not a {what} checkpoint folder ({len(bad)} tensors missing or "
                           f"of another shape, e.g. {bad[:2]})")
    return model.eval()


def load_gdino(folder: Path | None, arch: str, seed: int, setting: str
               ) -> tuple[GroundingDinoForObjectDetection, PreTrainedTokenizerBase]:
    """GroundingDINO in eval mode and its tokenizer."""
    if folder is None:
        model = _seeded(lambda: GroundingDinoForObjectDetection(GroundingDinoConfig(**GDINO_ARCHS[arch])), seed)
        return model.eval(), BertTokenizer(vocab=str(TINY_VOCAB), do_lower_case=True)
    model = _from_pretrained(GroundingDinoForObjectDetection, folder, setting, "GroundingDINO")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"{setting}: {folder} has no usable tokenizer ({exc})") from exc
    return model, tokenizer


def load_sam(folder: Path | None, arch: str, seed: int, setting: str) -> SamModel:
    if folder is None:
        return _seeded(lambda: SamModel(SamConfig(**SAM_ARCHS[arch])), seed).eval()
    return _from_pretrained(SamModel, folder, setting, "SAM")
