"""Upload decoding with limits: format, byte size, pixel count (decompression bombs), truncation."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grader.errors import InvalidImage

ALLOWED = {"JPEG": "image/jpeg", "PNG": "image/png"}


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
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidImage(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            if w < 16 or h < 16:
                raise InvalidImage(f"image is {w}x{h} pixels: too small to grade (at least 16x16)")
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"not a readable image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from exc
    return np.ascontiguousarray(rgb), ALLOWED[fmt]
