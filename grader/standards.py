"""Grade standards as data: one TOML file per standard, validated by a schema on load.

A packhouse adds its own standard by dropping a file beside the shipped ones (or in a directory it
hands to :func:`load_standards`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidStandard, UnknownStandard
from .records import OUT_OF_GRADE

SHIPPED_DIR = Path(__file__).parent / "standards"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeRelaxation(_Strict):
    """A smaller minimum size allowed when the fruit is sweet enough (e.g. UNECE apples)."""

    min_brix: float = Field(ge=0, le=85)
    min_diameter_mm: float = Field(gt=0)


class GradeRule(_Strict):
    name: str
    min_diameter_mm: float | None = Field(default=None, gt=0)
    max_diameter_mm: float | None = Field(default=None, gt=0)
    size_relaxation: SizeRelaxation | None = None
    min_brix: float | None = Field(default=None, ge=0, le=85)
    max_blemish_area_cm2: float | None = Field(default=None, ge=0)
    max_largest_blemish_cm2: float | None = Field(default=None, ge=0)
    min_colour_coverage: float | None = Field(default=None, ge=0, le=1)
    excluded_defects: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _bands(self) -> "GradeRule":
        if self.min_diameter_mm and self.max_diameter_mm and self.min_diameter_mm > self.max_diameter_mm:
            raise ValueError(f"grade {self.name}: min_diameter_mm > max_diameter_mm")
        return self


class LotTolerance(_Strict):
    below_grade: float = Field(ge=0, le=1)
    below_next_grade: float | None = Field(default=None, ge=0, le=1)
    decayed: float | None = Field(default=None, ge=0, le=1)
    seriously_damaged: float | None = Field(default=None, ge=0, le=1)


class Outlet(_Strict):
    grade: str
    outlet: str
    min_diameter_mm: float | None = None
    max_diameter_mm: float | None = None


class Standard(_Strict):
    id: str
    name: str
    version: str
    commodity: str
    source: str = ""
    grades: tuple[GradeRule, ...] = Field(min_length=1)
    lot_tolerances: dict[str, LotTolerance] = {}
    outlets: tuple[Outlet, ...] = ()

    @model_validator(mode="after")
    def _names(self) -> "Standard":
        names = [g.name for g in self.grades]
        if len(set(names)) != len(names):
            raise ValueError("grade names must be unique")
        if OUT_OF_GRADE in names:
            raise ValueError(f"{OUT_OF_GRADE!r} is reserved")
        known = set(names) | {OUT_OF_GRADE}
        for o in self.outlets:
            if o.grade not in known:
                raise ValueError(f"outlet {o.outlet!r} names unknown grade {o.grade!r}")
        for g in self.lot_tolerances:
            if g not in known:
                raise ValueError(f"lot tolerance for unknown grade {g!r}")
        return self

    @property
    def grade_names(self) -> list[str]:
        return [g.name for g in self.grades]


M = TypeVar("M", bound=BaseModel)


def load_toml_model(path: Path, model: type[M]) -> M:
    """A data file (standard, commodity profile) validated by its schema; errors name the file."""
    try:
        return model.model_validate(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidStandard(f"{path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise InvalidStandard(f"{path}: {exc}") from exc


def load_standard_file(path: Path) -> Standard:
    return load_toml_model(path, Standard)


def load_standards(*dirs: Path) -> dict[str, Standard]:
    """Every ``*.toml`` standard in the shipped directory and the given ones, by id."""
    out: dict[str, Standard] = {}
    for d in (SHIPPED_DIR, *dirs):
        for p in sorted(Path(d).glob("*.toml")):
            std = load_standard_file(p)
            if std.id in out and d == SHIPPED_DIR:
                raise InvalidStandard(f"duplicate standard id {std.id!r} in {p}")
            out[std.id] = std  # a packhouse's own file may replace a shipped one by id
    return out


def get_standard(standards: dict[str, Standard], standard_id: str) -> Standard:
    try:
        return standards[standard_id]
    except KeyError:
        raise UnknownStandard(f"unknown standard {standard_id!r}; known: {sorted(standards)}") from None
