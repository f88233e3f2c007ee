"""Plausible ranges of every physical quantity a request may carry, in one table.

A value outside its range is refused (422 ``out_of_range`` naming the field) instead of being
graded into nonsense: ``mm_per_px=1e-300`` would measure every fruit at 0.0 mm. The ranges are
wide enough for any packhouse camera, refractometer or belt, and narrow enough to catch a unit
mistake (mm given as m, Fahrenheit for Celsius) or a garbage value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from grader.errors import OutOfRange
from grader.sweetness import BRIX_MAX, BRIX_MIN


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    unit: str
    why: str

    def describe(self) -> str:
        return f"{self.lo:g} to {self.hi:g} {self.unit}".strip()


#: field name -> its plausible range (both ends included)
PHYSICAL: dict[str, Range] = {
    # a 70 mm fruit 7000 px wide to one 14 px wide
    "mm_per_px": Range(0.01, 5.0, "mm/px", "camera scale at the fruit"),
    "brix": Range(BRIX_MIN, BRIX_MAX, "°Brix", "refractometer scale"),
    # the ICUMSA correction table's span: readings outside it cannot be corrected to 20 °C
    "temperature_c": Range(10.0, 40.0, "°C", "juice temperature of a Brix reading"),
    # reference spheres and calibration discs: a marble to a football
    "reference_diameter_mm": Range(5.0, 300.0, "mm", "reference sphere or disc"),
    "belt_speed_mm_s": Range(1.0, 5000.0, "mm/s", "conveyor belt speed"),
    "fps": Range(0.1, 240.0, "frames/s", "live camera frame rate"),
    # a phone camera (about 500 px) to a long lens on a large sensor
    "focal_px": Range(100.0, 100000.0, "px", "camera focal length in pixels"),
    # a reference held 5 cm from a lens to one 100 m away
    "reference_distance_mm": Range(50.0, 100000.0, "mm", "camera to the reference sphere's centre"),
}


def check(field: str, value: Any) -> float:
    """``value`` as a float within the field's range; OutOfRange otherwise. Booleans are not numbers."""
    r = PHYSICAL[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutOfRange(field, "invalid_number", f"{field} must be a number ({r.unit}), got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise OutOfRange(field, "invalid_number", f"{field} must be a finite number ({r.unit}), got {value!r}")
    if not r.lo <= v <= r.hi:
        raise OutOfRange(field, "out_of_range", f"{field} must be between {r.describe()} ({r.why}), got {v:g}")
    return v


def parse(field: str, raw: str | None) -> float | None:
    """An optional form or query field (text) as a checked number; None when absent or blank."""
    if raw is None or raw.strip() == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise OutOfRange(field, "invalid_number", f"{field} must be a number ({PHYSICAL[field].unit}), got {raw[:40]!r}") from None
    return check(field, v)
