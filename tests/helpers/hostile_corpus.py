"""Generates the hostile archive of issue 21 (nothing is stored in the repository): each function writes
one case under a folder and returns what it wrote. Run as a script to get the whole corpus on disk:

    python -m tests.helpers.hostile_corpus OUTDIR
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 "café.png": not valid UTF-8
BIG_SIDE = 6300  # under the default 40 MP limit; ~116 KB as a PNG, 119 MB decoded
FAKE_INDEX_CLAIM = 3 * 2**30  # bytes the fake faiss header claims
YAML_DEPTH = 330


def png_bytes(side: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def non_utf8_folder(folder: Path, images: list[Path]) -> Path:
    """``images`` copied in under their names, plus one more PNG named ``b'caf\\xe9.png'``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in images:
        shutil.copyfile(src, folder / src.name)
    odd = Path(os.fsdecode(bytes(folder) + b"/" + NON_UTF8_NAME))
    odd.write_bytes(png_bytes(seed=1))
    return odd


def empty_tars(folder: Path) -> list[Path]:
    """A tar with no entries and a tar holding only folders."""
    folder.mkdir(parents=True, exist_ok=True)
    empty, dirs = folder / "empty.tar", folder / "only-folders.tar"
    tarfile.open(empty, "w").close()
    with tarfile.open(dirs, "w") as tar:
        for name in ("a", "a/b"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
    return [empty, dirs]


def big_pngs(folder: Path, count: int, side: int = BIG_SIDE) -> list[Path]:
    """``count`` PNGs of ``side`` x ``side`` pixels that compress to about 100 KB each (smooth gradients)."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    paths = []
    for i in range(count):
        rgb = np.empty((side, side, 3), dtype=np.uint8)
        rgb[..., 0] = ramp[None, :]
        rgb[..., 1] = ramp[:, None]
        rgb[..., 2] = (i * 16) % 256
        path = folder / f"big-{i:02d}.png"
        Image.fromarray(rgb).save(path, compress_level=1)
        paths.append(path)
    return paths


def fake_faiss_release(folder: Path, claim_bytes: int = FAKE_INDEX_CLAIM, dim: int = 1024) -> Path:
    """An official PatchCore release folder whose 105-byte index header claims ``claim_bytes`` of vectors."""
    folder.mkdir(parents=True, exist_ok=True)
    n = claim_bytes // (4 * dim)
    header = b"IxF2" + struct.pack("<iqqqBi", dim, n, 0, 0, 1, 1) + struct.pack("<Q", n * dim)
    (folder / "nnscorer_search_index.faiss").write_bytes(header + b"\0" * 60)
    params = {"backbone.name": "wideresnet50", "layers_to_extract_from": ["layer2", "layer3"],
              "input_shape": (3, 224, 224), "pretrain_embed_dimension": dim, "target_embed_dimension": dim,
              "patchsize": 3, "patchstride": 1, "anomaly_scorer_num_nn": 1}
    (folder / "patchcore_params.pkl").write_bytes(pickle.dumps(params))
    return folder


def deep_yaml(path: Path, depth: int = YAML_DEPTH) -> Path:
    """About 1 KB of flow sequences nested ``depth`` levels deep."""
    path.write_text("input: " + "[" * depth + "]" * depth + "\n")
    return path


def duplicate_key_yaml(path: Path) -> Path:
    path.write_text("input: /first\noutput: /out\nbank: /bank\ninput: /second\n")
    return path


def broken_files(folder: Path) -> dict[str, Path]:
    """A 0-byte video, and images PIL cannot identify (its message would name an in-memory file)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"empty_mp4": folder / "empty.mp4", "garbage_png": folder / "garbage.png",
             "png_signature_only": folder / "signature.png", "truncated_png": folder / "truncated.png"}
    files["empty_mp4"].write_bytes(b"")
    files["garbage_png"].write_bytes(b"this is not an image at all")
    files["png_signature_only"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    files["truncated_png"].write_bytes(png_bytes(seed=2)[:200])
    return files


def write_corpus(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    sample = root / "sample.png"
    sample.write_bytes(png_bytes())
    non_utf8_folder(root / "non-utf8", [sample])
    empty_tars(root / "tars")
    big_pngs(root / "big", 16)
    fake_faiss_release(root / "fake-faiss")
    deep_yaml(root / "deep.yaml")
    duplicate_key_yaml(root / "duplicate.yaml")
    broken_files(root / "broken")


if __name__ == "__main__":
    write_corpus(Path(sys.argv[1]))
