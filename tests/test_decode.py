import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.io.decode import DecodeError, decode_image

LIMIT = 40_000_000


def png_bytes(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with a tiny compressed body."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_rgb_roundtrip():
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(png_bytes(arr), LIMIT), arr)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is a text file", "not a decodable image"),
])
def test_non_images_are_refused_with_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data, LIMIT)


def test_truncated_image_is_refused():
    arr = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(arr)
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_decompression_bomb_refused_from_header():
    with pytest.raises(DecodeError, match="refused"):
        decode_image(bomb_png(60_000, 60_000), LIMIT)
    with pytest.raises(DecodeError, match=r"exceeds decode.max_pixels=100"):
        decode_image(png_bytes(np.zeros((20, 20, 3), np.uint8)), 100)


def test_odd_modes_are_converted_to_rgb():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_image(png_bytes(grey), LIMIT)
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 0], grey)

    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert Image.open(io.BytesIO(png_bytes(sixteen))).mode.startswith("I")
    out16 = decode_image(png_bytes(sixteen), LIMIT)
    assert out16.dtype == np.uint8 and out16.shape == (8, 8, 3)
    assert out16[..., 0].max() == round(63000 * 255 / 65535)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    assert np.all(decode_image(png_bytes(rgba), LIMIT)[..., 0] == 200)

    pal = Image.fromarray(np.zeros((8, 8, 3), np.uint8) + 77).convert("P")
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    assert decode_image(buf.getvalue(), LIMIT).shape == (8, 8, 3)
