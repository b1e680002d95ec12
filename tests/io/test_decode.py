import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import DecodeError
from pipeline.io.decode import decode_image

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


def tiff_bytes(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr.astype(np.float32), mode="F").save(out, format="TIFF")
    return out.getvalue()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_images_with_non_finite_pixels_are_refused_with_the_count(bad):
    rng = np.random.default_rng(7)
    for count in (1, 12):
        arr = rng.uniform(0, 1, (16, 24)).astype(np.float32)
        arr.flat[rng.choice(arr.size, count, replace=False)] = bad
        data = tiff_bytes(arr)
        assert Image.open(io.BytesIO(data)).mode == "F"
        with pytest.raises(DecodeError, match=rf"float image has {count} non-finite pixels \(NaN/inf\)"):
            decode_image(data, LIMIT)


def test_finite_float_image_is_stretched_to_full_contrast():
    arr = np.linspace(-1.0, 3.0, 16 * 24, dtype=np.float32).reshape(16, 24)
    out = decode_image(tiff_bytes(arr), LIMIT)
    expected = np.round((arr - -1.0) / 4.0 * 255).astype(np.uint8)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    assert out.min() == 0 and out.max() == 255 and np.array_equal(out[..., 0], out[..., 2])


def jpeg_bytes(img: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def test_exif_orientation_is_applied():
    stored = np.full((20, 40, 3), 128, np.uint8)  # landscape as stored, 40 wide
    stored[:8, :8] = (255, 0, 0)  # a red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the stored top-left ends up top-right
    out = decode_image(jpeg_bytes(Image.fromarray(stored), exif=exif), LIMIT)
    assert out.shape == (40, 20, 3)
    assert np.abs(out[2, -3].astype(int) - (255, 0, 0)).max() < 30
    assert np.abs(out[2, 2].astype(int) - 128).max() < 30 and np.abs(out[-3, 2].astype(int) - 128).max() < 30
    plain = decode_image(jpeg_bytes(Image.fromarray(stored)), LIMIT)
    assert plain.shape == (20, 40, 3) and np.abs(plain[2, 2].astype(int) - (255, 0, 0)).max() < 30


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, :16] = (0, 255, 255, 0)  # red
    cmyk[:, 16:] = (255, 0, 0, 128)  # cyan at half black: (0, 127, 127)
    data = jpeg_bytes(Image.fromarray(cmyk, mode="CMYK"))
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, LIMIT).astype(int)
    assert out.shape == (16, 32, 3)
    assert np.abs(out[8, 4] - (255, 0, 0)).max() <= 8
    assert np.abs(out[8, 28] - (0, 127, 127)).max() <= 8
