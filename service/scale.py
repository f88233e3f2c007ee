"""Which scale a frame is measured at: the request's mm_per_px, else reference spheres in the
frame (when the request says they are there), else the camera's calibration, else none."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from grader.calibration import ReferenceSpec, reference_diameter_px, scale_from_references, split_references
from grader.commodities import Commodity
from grader.measure import measure_image, with_scale
from grader.records import Flag, FruitMeasurement
from store.tables import CalibrationRow


@dataclass
class ScaledFrame:
    fruit: list[FruitMeasurement]
    mm_per_px: float | None
    source: str  # request | reference | camera | none
    references: list[FruitMeasurement] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)


def resolve_scale(
    image_rgb: np.ndarray,
    commodity: Commodity | None,
    request_mm_per_px: float | None,
    reference_diameter_mm: float | None,
    camera: CalibrationRow | None,
    spec: ReferenceSpec,
) -> ScaledFrame:
    bands = commodity.colour_bands if commodity else ()
    axis = commodity.size_axis if commodity else "major"
    params = commodity.segmentation() if commodity else None
    measured = measure_image(image_rgb, None, params, colour_bands=bands, size_axis=axis)
    refs: list[FruitMeasurement] = []
    flags: list[Flag] = []
    if reference_diameter_mm is not None:
        refs, measured = split_references(image_rgb, measured, spec)
    if request_mm_per_px is not None:
        scale, source = request_mm_per_px, "request"
    elif refs:
        scale, source = scale_from_references([reference_diameter_px(r) for r in refs], reference_diameter_mm), "reference"
    elif camera is not None:
        scale, source = camera.mm_per_px, "camera"
    else:
        scale, source = None, "none"
    if reference_diameter_mm is not None and not refs:
        flags.append(Flag("reference_not_found", f"no reference sphere of {reference_diameter_mm:g} mm found in the frame", 30))
    return ScaledFrame([with_scale(m, scale) for m in measured], scale, source, refs, flags)
