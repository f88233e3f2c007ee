"""Upload decoding with limits: format, byte size, pixel count (decompression bombs), truncation."""

from __future__ import annotations

import asyncio
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grader.errors import InvalidImage

ALLOWED = {"JPEG": "image/jpeg", "PNG": "image/png"}


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Any still image mode as 8-bit RGB. 16-bit and float greyscale are scaled down, not clipped
    (Pillow's plain convert would turn a 16-bit frame white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        grey = ((a - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Bytes -> (RGB uint8 array, media type). Raises InvalidImage with a reason a person can act on."""
    if not data:
        raise InvalidImage("the image file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED:
                raise InvalidImage(f"unsupported image format {fmt or 'unknown'}: send JPEG or PNG")
            if getattr(img, "is_animated", False):
                raise InvalidImage(f"animated {fmt} with {img.n_frames} frames: send one still image")
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidImage(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if w < 16 or h < 16:
                raise InvalidImage(f"image is {w}x{h} pixels: too small to grade (at least 16x16)")
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(img)
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"not a readable image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder tripped by crafted data (struct.error, EOFError, IndexError...)
        raise InvalidImage(f"image data cannot be decoded: {type(exc).__name__}") from exc
    return np.ascontiguousarray(rgb), ALLOWED[fmt]


async def decode_upload(data: bytes, max_pixels: int, budget_s: float) -> tuple[np.ndarray, str]:
    """decode_image off the event loop, within a time budget: an image that takes longer (a
    pathological progressive JPEG, say) is refused with 422 instead of holding the request."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await asyncio.wait_for(run_in_threadpool(decode_image, data, max_pixels), timeout=budget_s)
    except TimeoutError:
        raise InvalidImage(f"the image took longer than {budget_s:g} s to decode: send a plain JPEG or PNG") from None
