"""A small seeded inspection data set: a woven texture, and defects with ground-truth masks.

Written MVTec-style (``train/good``, ``test/good``, ``test/defect``, ``ground_truth/defect``)
so the demo, the tests and the benchmarks need no download. Normal images are shifted crops
of one large seeded texture with mild lighting changes; defects are scratches, stains and
holes drawn onto other crops.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    weave = 0.5 + 0.25 * np.sin(xx * 2 * np.pi / 9) * np.sin(yy * 2 * np.pi / 9)
    weave += 0.1 * np.sin((xx + yy) * 2 * np.pi / 23)
    grain = rng.normal(0, 0.05, (size, size)).astype(np.float32)
    base = np.clip(weave + grain, 0, 1)
    tint = np.array([0.75, 0.62, 0.45], dtype=np.float32)
    return (base[..., None] * tint * 255).astype(np.uint8)


def _crop(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    top, left = rng.integers(0, texture.shape[0] - size, 2)
    crop = texture[top:top + size, left:left + size].astype(np.float32)
    return np.clip(crop * rng.uniform(0.92, 1.08), 0, 255).astype(np.uint8)


def _defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    pil = Image.fromarray(img)
    mask = Image.new("L", (size, size), 0)
    draw, mdraw = ImageDraw.Draw(pil), ImageDraw.Draw(mask)
    kind = rng.integers(3)
    cx, cy = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
    r = int(rng.integers(size // 24, size // 10))
    if kind == 0:  # scratch
        angle = rng.uniform(0, np.pi)
        dx, dy = int(np.cos(angle) * 3 * r), int(np.sin(angle) * 3 * r)
        line = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
        width = max(2, r // 3)
        draw.line(line, fill=(40, 35, 30), width=width)
        mdraw.line(line, fill=255, width=width)
    elif kind == 1:  # stain
        box = [cx - r, cy - r, cx + r, cy + r]
        draw.ellipse(box, fill=(90, 120, 60))
        mdraw.ellipse(box, fill=255)
    else:  # hole
        box = [cx - r, cy - r // 2, cx + r, cy + r // 2]
        draw.rectangle(box, fill=(15, 15, 15))
        mdraw.rectangle(box, fill=255)
    return np.asarray(pil), np.asarray(mask)


def make_dataset(root: str | Path, n_train: int = 24, n_test_good: int = 8, n_test_defect: int = 8,
                 size: int = 128, seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    texture = _texture(size * 4, rng)
    for sub in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_crop(texture, size, rng)).save(root / "train/good" / f"{i:04d}.png")
    for i in range(n_test_good):
        Image.fromarray(_crop(texture, size, rng)).save(root / "test/good" / f"{i:04d}.png")
    for i in range(n_test_defect):
        img, mask = _defect(_crop(texture, size, rng), rng)
        Image.fromarray(img).save(root / "test/defect" / f"{i:04d}.png")
        Image.fromarray(mask).save(root / "ground_truth/defect" / f"{i:04d}_mask.png")
    return root


def make_archive(data: Path, archive: Path) -> Path:
    """The archive to score: test images as loose files and as a tar shard, a 30-frame video whose
    frames 12-19 carry a defect, plus broken files (zero bytes, truncated, not an image, empty video)."""
    archive.mkdir(parents=True, exist_ok=True)
    for sub in ("good", "defect"):
        target = archive / "loose" / sub
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted((data / "test" / sub).glob("*.png")):
            (target / src.name).write_bytes(src.read_bytes())
    with tarfile.open(archive / "shard-0000.tar", "w") as tar:
        for src in sorted((data / "test").rglob("*.png")):
            tar.add(src, arcname=f"{src.parent.name}/{src.name}")
    (archive / "broken").mkdir(exist_ok=True)
    (archive / "broken" / "zero-bytes.png").write_bytes(b"")
    good = next((data / "test" / "good").glob("*.png")).read_bytes()
    (archive / "broken" / "truncated.png").write_bytes(good[: len(good) // 3])
    (archive / "broken" / "not-an-image.jpg").write_bytes(b"plain text, not a JPEG")
    (archive / "broken" / "empty-video.mp4").write_bytes(b"")
    size = Image.open(next((data / "test" / "good").glob("*.png"))).size[0]
    make_video(archive / "video" / "line-camera.mp4", n_frames=30, size=size, anomalous=range(12, 20))
    return archive


def make_video(path: Path, n_frames: int = 60, size: int = 96, fps: int = 10, anomalous: range = range(0),
               seed: int = 0) -> Path:
    """An MPEG-4 clip of the normal texture drifting slowly; frames in ``anomalous`` carry a defect."""
    import av

    rng = np.random.default_rng(seed)
    texture = _texture(size * 4, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(n_frames):
            frame = texture[i:i + size, i:i + size].copy()
            if i in anomalous:
                frame[size // 3: size // 3 + size // 6, size // 4: size // 4 + size // 3] = (15, 15, 15)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
