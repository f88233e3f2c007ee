"""Commodity profiles as data: one TOML file per fruit under grader/commodities/."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .colour_bands import ColourBand
from .errors import UnknownCommodity
from .segment import SegmentationParams
from .standards import load_toml_model

SHIPPED_DIR = Path(__file__).parent / "commodities"


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
    #: > 0: on a backdrop this plain (grader.segment.SegmentationParams.flat_background_max_std), the
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
