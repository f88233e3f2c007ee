"""Form-field parsing shared by the routes: every refusal names its field."""

from __future__ import annotations

import math

from fastapi import UploadFile

from .errors import ApiError


def number_field(name: str, raw: str | None, lo: float, hi: float, lo_open: bool = False) -> float | None:
    """Parse an optional numeric form field; 422 naming the field when it is not a finite number in range."""
    if raw is None or raw.strip() == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(422, "invalid_value", f"{name} must be a number, got {raw[:40]!r}", name) from None
    if not math.isfinite(v):
        raise ApiError(422, "invalid_value", f"{name} must be a finite number, got {raw[:40]!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise ApiError(422, "out_of_range", f"{name} must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {v:g}", name)
    return v


def text_field(name: str, raw: str | None, max_len: int = 100) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > max_len:
        raise ApiError(422, "too_long", f"{name} is longer than {max_len} characters", name)
    return raw.strip()


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"image is larger than the limit of {limit} bytes", "image")
    return data
