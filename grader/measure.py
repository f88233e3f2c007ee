"""Find fruit in an image and measure them as calipers would.

Definitions (see docs/measurement.md):

* ``diameter_px`` / ``diameter_mm`` — the largest caliper width of the fruit's outline
  (maximum Feret diameter of the convex hull), i.e. what a caliper closed across the fruit's
  equator reads for a fruit seen along its stem axis. The width between the outermost pixel
  centres is corrected for the sub-pixel gap to the true edge (see ``_edge_gap_px``).
* ``minor_diameter_px`` — the caliper width perpendicular to that largest width.
* ``area_px`` / ``area_mm2`` — projected area of the fruit mask.
* ``roundness`` — 4·π·area / perimeter² of the convex hull (1.0 for a disc).
* ``blemish_area_cm2`` — projected skin area inside the fruit mask whose colour departs from the
  fruit's own skin colour (darker, browner), in cm² through ``mm_per_px``. ``largest_blemish_cm2`` is
  the largest connected such spot.

All functions take an RGB ``uint8`` array (H, W, 3) and never read files or settings.
"""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from .blemish import (
    BlemishParams,
    blemish_mask,
    colour_coverage,
    skin_view,
    spot_areas,
)
from .colour_bands import ColourBand, colour_mask
from .errors import InvalidMeasurementInput
from .records import Flag, FruitMeasurement
from .segment import (
    Segment,
    SegmentationParams,
    segment_fruits,
)


def caliper_widths_px(contour: np.ndarray) -> tuple[float, float, float]:
    """Largest caliper width of an outline, the width perpendicular to it, and the hull perimeter.

    Widths are true extents: the centre-to-centre width plus the digitisation gap (_edge_gap_px)."""
    hull = cv2.convexHull(contour.reshape(-1, 1, 2).astype(np.int32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 2:
        return 1.0, 1.0, 4.0
    diff = hull[:, None, :] - hull[None, :, :]
    d2 = (diff**2).sum(axis=2)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    axis = hull[j] - hull[i]
    length = float(np.hypot(*axis))
    if length == 0:
        return 1.0, 1.0, 4.0
    # largest width: projection of the hull onto the direction that maximises it, pixel-extent corrected
    # (the max Feret direction is searched finely around the farthest pair's direction)
    angles = math.atan2(axis[1], axis[0]) + np.linspace(-0.1, 0.1, 21)
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (21, 2)
    proj = hull @ dirs.T
    widths = proj.max(axis=0) - proj.min(axis=0)
    k = int(np.argmax(widths))
    best, best_u = float(widths[k]), dirs[k]
    perp = np.array([-best_u[1], best_u[0]])
    p = hull @ perp
    minor = p.max() - p.min()
    best, minor = best + _edge_gap_px(best), minor + _edge_gap_px(minor)
    perimeter = float(cv2.arcLength(hull.astype(np.float32).reshape(-1, 1, 2), True))
    return float(best), float(minor), perimeter


def caliper_size_px(contour: np.ndarray, size_axis: str = "major") -> tuple[float, float, float]:
    """(diameter, the other caliper width, hull perimeter) of an outline, in pixels: the diameter
    is the largest caliper width ("major") or the one across it ("minor", lemons)."""
    major_px, minor_px, perimeter_px = caliper_widths_px(contour)
    return (minor_px, major_px, perimeter_px) if size_axis == "minor" else (major_px, minor_px, perimeter_px)


def _edge_gap_px(width_px: float) -> float:
    """Correction from a width between outline pixel *centres* to the fruit's true width.

    The outermost pixel centre of a digitised convex outline lies a small gap ε inside the true
    edge: the cap of the disc beyond it holds on average one lattice point, so
    (4/3)·√(2R)·ε^(3/2) = 1, i.e. ε = (3 / (4·√(2R)))^(2/3) (0.16 px at R = 70 px). A width
    spans two such gaps."""
    r = max(width_px / 2.0, 1.0)
    return 2.0 * (3.0 / (4.0 * math.sqrt(2.0 * r))) ** (2.0 / 3.0)


def measure_segment(
    image_rgb: np.ndarray,
    seg: Segment,
    mm_per_px: float | None,
    blemish: BlemishParams | None = None,
    colour_bands: tuple[ColourBand, ...] = (),
    size_axis: str = "major",
) -> FruitMeasurement:
    """Size, shape, colour coverage and blemish area of one segmented fruit.

    ``size_axis`` says which caliper width is the fruit's equatorial diameter: the largest
    ("major": apples, oranges seen from the stem) or the one across the long axis ("minor": lemons)."""
    if mm_per_px is not None and (not math.isfinite(mm_per_px) or mm_per_px <= 0):  # fail before the work
        raise InvalidMeasurementInput(f"mm_per_px must be a positive number, got {mm_per_px}", field="mm_per_px")
    diameter_px, other_px, perimeter_px = caliper_size_px(seg.contour, size_axis)
    area_px = float(seg.mask.sum())
    roundness = float(min(1.0, 4 * math.pi * area_px / max(perimeter_px, 1.0) ** 2))
    blemish = blemish or BlemishParams()
    skin_rgb, skin_seg = skin_view(image_rgb, seg, blemish.work_max_side_px)
    in_band = None
    if colour_bands:  # one colour-band mask of the fruit's box, for the blemish test and the coverage
        x0, y0, x1, y1 = skin_seg.bbox
        in_band = colour_mask(skin_rgb[y0:y1, x0:x1], colour_bands)
    spots = blemish_mask(skin_rgb, skin_seg, blemish, colour_bands, in_band)
    if skin_seg is not seg:  # back to the fruit's own box, pixel for pixel
        spots = cv2.resize(spots.view(np.uint8), seg.mask.shape[::-1], interpolation=cv2.INTER_NEAREST).view(bool) & seg.mask
    blemish_px = float(cv2.countNonZero(spots.view(np.uint8)))  # areas in cm² and the largest spot: with_scale
    coverage = colour_coverage(skin_rgb, skin_seg, colour_bands, in_band) if colour_bands else None

    unscaled = FruitMeasurement(
        bbox=seg.bbox,
        contour_px=seg.contour,
        mask=seg.mask,
        diameter_px=diameter_px,
        minor_diameter_px=other_px,
        area_px=area_px,
        roundness=roundness,
        mm_per_px=None,
        diameter_mm=None,
        minor_diameter_mm=None,
        area_mm2=None,
        blemish_area_cm2=None,
        largest_blemish_cm2=None,
        blemish_fraction=blemish_px / max(area_px, 1.0),
        colour_coverage=coverage,
        blemish_mask=spots,
        cut_off=seg.cut_off,
    )
    return with_scale(unscaled, mm_per_px)


def with_scale(m: FruitMeasurement, mm_per_px: float | None) -> FruitMeasurement:
    """The measurement in millimetres for a scale (pixel measures are kept); the one place where
    pixels become mm, cm² and where the `cut_off` / `uncalibrated` flags are decided."""
    if mm_per_px is not None and (not math.isfinite(mm_per_px) or mm_per_px <= 0):
        raise InvalidMeasurementInput(f"mm_per_px must be a positive number, got {mm_per_px}", field="mm_per_px")
    flags: list[Flag] = [f for f in m.quality_flags if f.code not in ("cut_off", "uncalibrated")]
    if m.cut_off:
        flags.append(Flag("cut_off", "fruit is cut off by the image border: not sized", 30))
    if mm_per_px is None:
        flags.append(Flag("uncalibrated", "no mm_per_px for this camera or request: sizes unknown", 30))
    sized = mm_per_px is not None and not m.cut_off
    blemish_px, largest_px = spot_areas(m.blemish_mask) if m.blemish_mask is not None else (0.0, 0.0)
    px2_to_cm2 = (mm_per_px**2) / 100.0 if mm_per_px else None
    return replace(
        m,
        mm_per_px=mm_per_px,
        diameter_mm=m.diameter_px * mm_per_px if sized else None,
        minor_diameter_mm=m.minor_diameter_px * mm_per_px if sized else None,
        area_mm2=m.area_px * mm_per_px**2 if sized else None,
        blemish_area_cm2=blemish_px * px2_to_cm2 if px2_to_cm2 is not None else None,
        largest_blemish_cm2=largest_px * px2_to_cm2 if px2_to_cm2 is not None else None,
        quality_flags=flags,
    )


def measure_image(
    image_rgb: np.ndarray,
    mm_per_px: float | None,
    params: SegmentationParams | None = None,
    blemish: BlemishParams | None = None,
    colour_bands: tuple[ColourBand, ...] = (),
    size_axis: str = "major",
) -> list[FruitMeasurement]:
    """Every fruit in the frame, measured, left to right."""
    return [measure_segment(image_rgb, s, mm_per_px, blemish, colour_bands, size_axis) for s in segment_fruits(image_rgb, params)]
