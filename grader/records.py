"""The core's vocabulary: plain typed records, no framework types.

Units are part of every name that has one: millimetres for sizes, cm² for skin areas,
°Brix at 20 °C for sweetness, pixels where a value is still in image space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BBox = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass(frozen=True)
class Flag:
    """Why a fruit goes to an inspector. Lower priority number = examined first."""

    code: str
    reason: str
    priority: int = 50

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, "priority": self.priority}


@dataclass
class FruitMeasurement:
    """What the camera measured on one fruit.

    A measure that cannot be trusted is ``None`` and a quality flag says why.
    """

    bbox: BBox
    contour_px: np.ndarray = field(repr=False)  # (N, 2) int32 outline, image coordinates
    mask: np.ndarray = field(repr=False)  # bool mask of the bbox region (y0:y1, x0:x1)
    diameter_px: float
    minor_diameter_px: float
    area_px: float
    roundness: float  # 4*pi*area / perimeter**2 of the outline's convex hull, 1.0 for a disc
    mm_per_px: float | None
    diameter_mm: float | None
    minor_diameter_mm: float | None
    area_mm2: float | None
    blemish_area_cm2: float | None
    largest_blemish_cm2: float | None
    blemish_fraction: float  # share of the visible skin marked as blemish, unitless 0..1
    cut_off: bool
    quality_flags: list[Flag] = field(default_factory=list)
    colour_coverage: float | None = None  # share of skin in the commodity's target colour, 0..1
    blemish_mask: np.ndarray | None = field(default=None, repr=False)  # bool, bbox-sized

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None, nd: int = 2) -> float | None:
            return None if v is None else round(float(v), nd)

        return {
            "bbox": list(self.bbox),
            "diameter_mm": r(self.diameter_mm),
            "minor_diameter_mm": r(self.minor_diameter_mm),
            "area_mm2": r(self.area_mm2, 1),
            "roundness": r(self.roundness, 3),
            "diameter_px": r(self.diameter_px, 1),
            "mm_per_px": None if self.mm_per_px is None else float(self.mm_per_px),
            "blemish_area_cm2": r(self.blemish_area_cm2, 3),
            "largest_blemish_cm2": r(self.largest_blemish_cm2, 3),
            "colour_coverage": r(self.colour_coverage, 3),
            "cut_off": bool(self.cut_off),
        }


@dataclass(frozen=True)
class DefectEvidence:
    """What the defect model says about one fruit crop."""

    label: str  # one of the model's classes, e.g. "sound" / "defective"
    score: float  # P(defective), 0..1
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    ood_score: float | None = None  # energy score; higher = less like the fruit the model knows
    ood: bool | None = None  # past the model's OOD threshold (None: the model gives no threshold)
    #: for a model with several defective classes (e.g. blackspot, canker, greening, rot): the most
    #: probable of them when the fruit is called defective, None when it is called sound
    type: str | None = None
    #: for such a model: P(type | defective) over its defective classes (sums to 1); None for a model
    #: with one defective class, whose evidence (and its dict) stays as it always was
    type_probabilities: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "score": round(float(self.score), 4),
            "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
            "ood_score": None if self.ood_score is None else round(float(self.ood_score), 4),
            "ood": self.ood,
        }
        if self.type_probabilities is not None:
            out["type"] = self.type
            out["type_probabilities"] = {k: round(float(v), 4) for k, v in self.type_probabilities.items()}
        return out


@dataclass(frozen=True)
class SweetnessEvidence:
    """Sweetness known for a fruit: °Brix corrected to 20 °C and where it came from."""

    brix: float
    source: str = "refractometer"  # refractometer | nir | lot-sample | request
    n: int = 1
    spread: float | None = None


@dataclass(frozen=True)
class Reason:
    """One rule outcome that kept a fruit out of a grade (or an unverified rule)."""

    grade: str
    rule: str
    measured: float | str | None
    limit: float | str | None
    text: str
    unverified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "grade": self.grade,
            "rule": self.rule,
            "measured": self.measured,
            "limit": self.limit,
            "text": self.text,
            "unverified": self.unverified,
        }


@dataclass(frozen=True)
class GradeDecision:
    grade: str  # a grade name of the standard, or OUT_OF_GRADE
    standard_id: str
    standard_version: str
    reasons: list[Reason]
    provisional: bool
    outlet: str | None


OUT_OF_GRADE = "out-of-grade"


@dataclass
class FruitGrade:
    """Everything decided about one fruit in one image."""

    measurement: FruitMeasurement
    defect: DefectEvidence | None
    sweetness: SweetnessEvidence | None
    decision: GradeDecision | None
    flags: list[Flag]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement.to_dict()
        d = self.decision
        return {
            **m,
            "defect": None if self.defect is None else self.defect.to_dict(),
            "brix": None if self.sweetness is None else round(self.sweetness.brix, 2),
            "brix_source": None if self.sweetness is None else self.sweetness.source,
            "grade": None if d is None else d.grade,
            "provisional": False if d is None else d.provisional,
            "outlet": None if d is None else d.outlet,
            "reasons": [] if d is None else [r.text for r in d.reasons],
            "reason_details": [] if d is None else [r.to_dict() for r in d.reasons],
            "flagged": self.flagged,
            "flags": [f.code for f in self.flags],
            "flag_details": [f.to_dict() for f in self.flags],
        }
