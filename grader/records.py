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
    #: about two standard errors of ``diameter_mm`` (orchard scenes: the circle fit's and the scale's)
    diameter_uncertainty_mm: float | None = None
    #: why the fruit was not sized (``diameter_mm`` None): occluded, no_clean_outline, too_small
    size_declined: str | None = None
    #: where the fruit's box came from in an orchard scene: detector, client or centre
    found_by: str | None = None

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
            **({} if self.diameter_uncertainty_mm is None else {"diameter_uncertainty_mm": r(self.diameter_uncertainty_mm)}),
            **({} if self.size_declined is None else {"size_declined": self.size_declined}),
            **({} if self.found_by is None else {"found_by": self.found_by}),
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
    #: Mahalanobis distance of the crop's pooled CNN features to the training fruit's (the graph's
    #: ``ood_distance`` output); None for a model without it, whose dict stays as it always was
    ood_distance: float | None = None
    #: which signals are past their thresholds: "energy", "distance", "early-distance" (empty when none is)
    ood_signals: tuple[str, ...] = ()
    #: P(defective) per cell of the model's square fruit crop (the graph's ``defect_map``: the
    #: classifier head at each location of the last feature map), rows top to bottom; None without it
    defect_map: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: the margin of that square crop around the fruit's bbox (the model's ``crop_margin_frac``), so
    #: the map can be laid over the image later
    map_crop_margin_frac: float | None = None
    #: the same distance on an early block's globally averaged output (the graph's
    #: ``ood_distance_early``: texture the pooled features average away); None without it
    ood_distance_early: float | None = None
    #: P(the crop is a fruit at all) from the model's fruit check (the graph's ``fruit_score``);
    #: None for a model without it
    fruit_score: float | None = None
    #: the fruit check's verdict at the model's ``thresholds.fruit``; None without a fruit check
    is_fruit: bool | None = None

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
        if self.ood_distance is not None:
            out["ood_distance"] = round(float(self.ood_distance), 4)
            out["ood_signals"] = list(self.ood_signals)
        if self.fruit_score is not None:
            out["fruit_score"] = round(float(self.fruit_score), 4)
        if self.ood_distance_early is not None:
            out["ood_distance_early"] = round(float(self.ood_distance_early), 4)
            out["ood_signals"] = list(self.ood_signals)
        if self.defect_map is not None:
            out["map"] = [[round(float(v), 3) for v in row] for row in np.asarray(self.defect_map)]
            out["map_crop_margin_frac"] = self.map_crop_margin_frac
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], model_name: str, model_version: str) -> "DefectEvidence":
        """The evidence a stored result's ``defect`` dict holds (as :meth:`to_dict` wrote it)."""
        m = d.get("map")
        return cls(
            d["label"],
            d["score"],
            d.get("probabilities", {}),
            model_name,
            model_version,
            d.get("ood_score"),
            d.get("ood"),
            d.get("type"),
            d.get("type_probabilities"),
            d.get("ood_distance"),
            tuple(d.get("ood_signals") or ()),
            None if m is None else np.asarray(m, np.float32),
            d.get("map_crop_margin_frac"),
            d.get("ood_distance_early"),
        )


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
