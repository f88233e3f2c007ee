"""Camera scale (mm per pixel) from reference spheres or discs of known diameter."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import CalibrationFailed
from .measure import measure_image
from .records import FruitMeasurement
from .segment import SegmentationParams


@dataclass(frozen=True)
class Calibration:
    camera_id: str | None
    mm_per_px: float
    method: str  # "reference-image" | "in-frame-reference" | "request"
    reference_diameter_mm: float | None = None
    reference_diameter_px: float | None = None
    created_at: dt.datetime | None = None
    #: the camera's focal length in pixels, learned when the reference stood at a known distance
    #: (the perspective correction of orchard sizes uses it)
    focal_px: float | None = None
    reference_distance_mm: float | None = None


@dataclass(frozen=True)
class ReferenceSpec:
    """How a reference sphere looks in a frame: its hue band (degrees) and minimum roundness.
    The default is an optic-yellow tennis ball; a packhouse using a blue disc sets ~[200, 250]."""

    hue_deg: tuple[float, float] = (58.0, 85.0)
    min_saturation: float = 0.45
    min_roundness: float = 0.85


#: a reference must be round: outline roundness and the ratio of its two caliper widths
MIN_REFERENCE_ROUNDNESS = 0.85
MIN_REFERENCE_ASPECT = 0.92


def _aspect(m: FruitMeasurement) -> float:
    a, b = m.diameter_px, m.minor_diameter_px
    return min(a, b) / max(a, b, 1e-9)


def focal_from_reference(diameter_px: float, diameter_mm: float, distance_mm: float) -> float:
    """The focal length in pixels of a camera that images a sphere of ``diameter_mm``, whose centre
    stands ``distance_mm`` from the camera on its optical axis, ``diameter_px`` wide. The sphere's
    outline is the cone of half-angle asin(R / Z) from the camera, so its image radius is
    f tan(asin(R / Z)) = f R / sqrt(Z² - R²)."""
    radius_mm = diameter_mm / 2
    if not (np.isfinite(distance_mm) and distance_mm > radius_mm):
        raise CalibrationFailed(
            f"reference_distance_mm must be more than the reference's radius ({radius_mm:g} mm): it is the distance "
            "from the camera to the reference's centre",
            field="reference_distance_mm",
        )
    if not (np.isfinite(diameter_px) and diameter_px > 0):
        raise CalibrationFailed("the reference's diameter in pixels must be positive")
    return (diameter_px / 2) * math.sqrt(distance_mm**2 - radius_mm**2) / radius_mm


def calibrate_from_image(
    image_rgb: np.ndarray,
    reference_diameter_mm: float,
    camera_id: str | None = None,
    params: SegmentationParams | None = None,
    reference_distance_mm: float | None = None,
) -> Calibration:
    """mm_per_px from an image showing one reference sphere or disc of known diameter; with
    ``reference_distance_mm`` (camera to the reference's centre, the reference near the middle of the
    frame) the camera's focal length in pixels too."""
    if not np.isfinite(reference_diameter_mm) or reference_diameter_mm <= 0:
        raise CalibrationFailed("reference_diameter_mm must be a positive number", field="reference_diameter_mm")
    found = [m for m in measure_image(image_rgb, None, params) if not m.cut_off]
    if not found:
        raise CalibrationFailed("no reference object found whole in the image (it must not touch the border)")
    ref = max(found, key=lambda m: m.area_px)
    if ref.roundness < MIN_REFERENCE_ROUNDNESS or _aspect(ref) < MIN_REFERENCE_ASPECT:
        raise CalibrationFailed(
            f"the largest object is not round (roundness {ref.roundness:.2f}, width ratio {_aspect(ref):.2f}; "
            f"need >= {MIN_REFERENCE_ROUNDNESS} and >= {MIN_REFERENCE_ASPECT}): show a sphere or disc"
        )
    diameter_px = (ref.diameter_px + ref.minor_diameter_px) / 2
    focal_px = None
    if reference_distance_mm is not None:
        focal_px = focal_from_reference(diameter_px, reference_diameter_mm, reference_distance_mm)
    return Calibration(
        camera_id,
        reference_diameter_mm / diameter_px,
        "reference-image",
        reference_diameter_mm,
        diameter_px,
        dt.datetime.now(dt.timezone.utc),
        focal_px=focal_px,
        reference_distance_mm=reference_distance_mm,
    )


def median_hue_deg(image_rgb: np.ndarray, m: FruitMeasurement, min_saturation: float) -> float | None:
    x0, y0, x1, y1 = m.bbox
    hsv = cv2.cvtColor(image_rgb[y0:y1, x0:x1], cv2.COLOR_RGB2HSV_FULL)
    sel = m.mask & (hsv[..., 1] >= min_saturation * 255)
    if sel.sum() < 10:
        return None
    return float(np.median(hsv[..., 0][sel])) * 360.0 / 256.0


def split_references(
    image_rgb: np.ndarray, measurements: list[FruitMeasurement], spec: ReferenceSpec
) -> tuple[list[FruitMeasurement], list[FruitMeasurement]]:
    """(references, fruit): reference spheres are round, whole and of the reference colour."""
    refs, fruit = [], []
    lo, hi = spec.hue_deg
    for m in measurements:
        hue = median_hue_deg(image_rgb, m, spec.min_saturation)
        round_enough = m.roundness >= spec.min_roundness and _aspect(m) >= MIN_REFERENCE_ASPECT
        if not m.cut_off and round_enough and hue is not None and lo <= hue <= hi:
            refs.append(m)
        else:
            fruit.append(m)
    return refs, fruit


def reference_diameter_px(ref: FruitMeasurement) -> float:
    """A reference sphere's pixel diameter: the mean of its two caliper widths."""
    return (ref.diameter_px + ref.minor_diameter_px) / 2


def scale_from_references(diameters_px: Sequence[float | None], reference_mm: float) -> float | None:
    """``mm_per_px`` of a frame from the measured pixel diameters of its reference spheres (of
    ``reference_mm``): packhouse references (:func:`reference_diameter_px`) or the tennis balls of an
    orchard frame (grader/orchard.py).

    The median is used, so one badly measured ball does not move the scale; declined balls (None)
    are ignored. None when no ball was measured."""
    good = [float(d) for d in diameters_px if d is not None and math.isfinite(d) and d > 0]
    if not good:
        return None
    return reference_mm / float(np.median(good))
