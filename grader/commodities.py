"""Commodity profiles as data: one TOML file per fruit under grader/commodities/."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import GraderError
from .measure import SegmentationParams
from .standards import load_toml_model

SHIPPED_DIR = Path(__file__).parent / "commodities"


class UnknownCommodity(GraderError):
    field = "commodity"


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


class Commodity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    default_standard: str | None = None
    size_axis: Literal["major", "minor"] = "major"
    brix_range: tuple[float, float] = (4.0, 30.0)
    defect_types: tuple[str, ...] = ()
    colour_bands: tuple[ColourBand, ...] = ()
    #: the commodity's defect-model artifact, relative to the models directory (e.g.
    #: "orange-defect/0.3.0"); None: the service's default model judges it
    model: str | None = None
    #: > 0: on a backdrop this plain (grader.measure.SegmentationParams.flat_background_max_std), the
    #: fruit finder takes textured pixels as fruit as well as coloured ones, so white or grey mould on
    #: a white backdrop stays part of the fruit; 0: colour alone
    plain_backdrop_max_texture_std: float = Field(0.0, ge=0.0)

    def segmentation(self) -> SegmentationParams:
        """The fruit finder's settings for this commodity."""
        return SegmentationParams(flat_background_max_std=self.plain_backdrop_max_texture_std)


def load_commodities(*dirs: Path) -> dict[str, Commodity]:
    out: dict[str, Commodity] = {}
    for d in (SHIPPED_DIR, *dirs):
        for p in sorted(Path(d).glob("*.toml")):
            c = load_toml_model(p, Commodity)
            out[c.id] = c
    return out


def get_commodity(commodities: dict[str, Commodity], commodity_id: str) -> Commodity:
    try:
        return commodities[commodity_id]
    except KeyError:
        raise UnknownCommodity(f"unknown commodity {commodity_id!r}; known: {sorted(commodities)}") from None


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
