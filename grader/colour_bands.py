"""A commodity's target colours as hue bands (grader/commodities/*.toml: ``colour_bands``), and the
mask of the pixels inside them: skin in a healthy colour is never a blemish (grader/measure.py), and
the share of skin in them is the colour coverage."""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ColourBand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    hue_deg: tuple[tuple[float, float], ...] = Field(min_length=1)
    min_saturation: float = Field(default=0.3, ge=0, le=1)
    min_value: float = Field(default=0.15, ge=0, le=1)

    @field_validator("hue_deg")
    @classmethod
    def _ranges(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        for lo, hi in v:
            if not 0 <= lo < hi <= 360:
                raise ValueError(f"hue range [{lo}, {hi}] must satisfy 0 <= lo < hi <= 360")
        return v


def colour_mask(image_rgb: np.ndarray, bands: tuple[ColourBand, ...]) -> np.ndarray:
    """Pixels inside any of the colour bands (bool, image-sized)."""
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue = hsv[..., 0] * (360.0 / 256.0)
    sat, val = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    out = np.zeros(image_rgb.shape[:2], bool)
    for b in bands:
        in_hue = np.zeros_like(out)
        for lo, hi in b.hue_deg:
            in_hue |= (hue >= lo) & (hue <= hi)
        out |= in_hue & (sat >= b.min_saturation) & (val >= b.min_value)
    return out
