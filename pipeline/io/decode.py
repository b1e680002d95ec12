"""Bytes to an RGB uint8 array, or a :class:`DecodeError` that says why not.

Odd but valid pixels are converted (grayscale, 16-bit, RGBA, palette, CMYK); the pixel count
is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
An EXIF orientation is applied, so a portrait photo is scored upright as the camera framed it.
Float images holding NaN or infinity are refused, not repainted: what the sensor saw there is
unknown, and a filled-in value would be scored as if it had been seen.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from pipeline.errors import DecodeError

ImageFile.LOAD_TRUNCATED_IMAGES = False


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _reason(exc: Exception) -> str:
    """``Type: message`` without Python object reprs (PIL names the in-memory file it was handed,
    ``<_io.BytesIO object at 0x7f...>``, which differs on every run and means nothing to a reader)."""
    return f"{type(exc).__name__}: {_OBJECT_REPR.sub('the file', str(exc))}"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535 if arr.max(initial=0) > 255 else 255
        return (arr.astype(np.float32) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DecodeError(f"float image has {bad} non-finite pixels (NaN/inf)")
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return (scaled * 255).round().astype(np.uint8)


def decode_image(data: bytes | None, max_pixels: int) -> np.ndarray:
    """Decode to ``[H, W, 3]`` uint8 RGB."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DecodeError(f"refused: decompression bomb ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError(f"not a decodable image: unknown format or damaged header (first bytes "
                          f"{data[:8].hex(' ')})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for "not an image"
        raise DecodeError(f"not a decodable image: {_reason(exc)}") from exc
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise DecodeError(
                f"refused: {width}x{height} = {width * height} pixels exceeds decode.max_pixels={max_pixels}"
            )
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except Exception as exc:  # noqa: BLE001
            raise DecodeError(f"corrupt or truncated image: {_reason(exc)}") from exc
        return _convert(img)


def _convert(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1", "L", "RGBX", "HSV", "LAB"):
        if mode in ("P", "PA", "LA"):
            img = img.convert("RGBA")
        # Alpha is dropped, not composited: the camera saw the pixels, not the mask.
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    # 16/32-bit integer and float modes ("I;16", "I", "F", ...): rescale, then grey to RGB.
    arr = _to_uint8(np.asarray(img))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] != 3:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)
