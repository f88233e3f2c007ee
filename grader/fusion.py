"""Several views of one fruit (a line that rolls fruit under the camera) fused into one.

Sizes are the median over the views that could be sized (a caliper reads the same fruit several
times); blemish areas add up when each view shows a different side (the largest spot is the
largest seen), or are the median when every view shows the same side (a belt under a video
camera); colour coverage is the mean; the defect evidence is the worst view's (its CNN map only when that
view is the best one, whose image is kept).

A video track holds many more whole views than are worth grading: ``size_over_views`` re-sizes the
fused fruit from the outlines of all of them (the median, and how far the views spread around it).

:func:`grade_views` grades one fruit photographed in several images (``POST /v1/grade/batch``,
``mode=views``): the largest fruit of each image is the fruit, fused over the images that show one."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .flags import FlagPolicy, LotContext
from .pipeline import decide
from .records import DefectEvidence, Flag, FruitGrade, FruitMeasurement, SweetnessEvidence
from .standards import Standard


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(statistics.median(known)) if known else None


def fuse_views(
    views: list[tuple[FruitMeasurement, DefectEvidence | None]], blemish: str = "sum"
) -> tuple[FruitMeasurement, DefectEvidence | None, int]:
    """(fused measurement, worst defect evidence, index of the best view: the largest whole one).

    ``blemish="sum"`` for views of different sides (a line that rolls the fruit), ``"median"`` for
    views of the same side (a belt carrying the fruit past the camera without turning it)."""
    if blemish not in ("sum", "median"):
        raise ValueError("blemish is 'sum' (different sides) or 'median' (the same side)")
    if not views:
        raise ValueError("no views to fuse")
    ms = [m for m, _ in views]
    best = max(range(len(ms)), key=lambda i: (not ms[i].cut_off, ms[i].area_px))
    blem = [m.blemish_area_cm2 for m in ms]
    flags: dict[str, Flag] = {}
    for m in ms:
        for f in m.quality_flags:
            flags.setdefault(f.code, f)
    sized = [m for m in ms if m.diameter_mm is not None]
    if sized:
        flags.pop("cut_off", None)  # another view sized it
    fused = replace(
        ms[best],
        diameter_mm=_median([m.diameter_mm for m in ms]),
        minor_diameter_mm=_median([m.minor_diameter_mm for m in ms]),
        area_mm2=_median([m.area_mm2 for m in ms]),
        roundness=float(statistics.median(m.roundness for m in ms)),
        blemish_area_cm2=None if any(b is None for b in blem) else float(sum(blem) if blemish == "sum" else statistics.median(blem)),
        largest_blemish_cm2=None
        if any(b is None for b in blem)
        else (
            max(m.largest_blemish_cm2 or 0.0 for m in ms)
            if blemish == "sum"
            else float(statistics.median(m.largest_blemish_cm2 or 0.0 for m in ms))
        ),
        colour_coverage=None if any(m.colour_coverage is None for m in ms) else float(statistics.fmean(m.colour_coverage for m in ms)),
        cut_off=not sized and all(m.cut_off for m in ms),
        quality_flags=list(flags.values()),
    )
    defects = [(i, d) for i, (_, d) in enumerate(views) if d is not None]
    k, worst = max(defects, key=lambda x: x[1].score) if defects else (None, None)
    if worst is not None and k != best and worst.defect_map is not None:
        # the map is where the worst view's crop shows its evidence: only the best view's image is
        # kept with the result, so another view's map would be drawn over the wrong picture
        worst = replace(worst, defect_map=None, map_crop_margin_frac=None)
    return fused, worst, best


def grade_views(
    views: Sequence[Sequence[FruitGrade]],
    standard: Standard,
    sweetness: SweetnessEvidence | None,
    policy: FlagPolicy,
    lot: LotContext | None = None,
    sound: tuple[str, ...] = ("sound",),
) -> tuple[FruitGrade | None, int, list[dict[str, Any]]]:
    """One fruit seen in several images, each graded on its own (``views``: the fruit graded in each
    image): (its grade from the fused views, the image whose view is the best, a summary per image).
    The largest fruit of each image is the fruit; the blemish areas of the views add up (different
    sides). When no image shows a fruit: (None, 0, summary)."""
    largest = [max(fruits, key=lambda x: x.measurement.area_px) if fruits else None for fruits in views]
    summary = [
        {
            "image": i,
            "diameter_mm": None if f is None else f.to_dict()["diameter_mm"],
            "defect_score": None if f is None or f.defect is None else round(f.defect.score, 4),
        }
        for i, f in enumerate(largest)
    ]
    seen = [i for i, f in enumerate(largest) if f is not None]
    if not seen:
        return None, 0, summary
    fused, worst, best = fuse_views([(largest[i].measurement, largest[i].defect) for i in seen])
    return decide(fused, worst, standard, sweetness, policy, lot, sound), seen[best], summary


@dataclass(frozen=True)
class ViewSize:
    """One view's size of a fruit, in pixels: the caliper widths of its outline and its area."""

    diameter_px: float
    minor_diameter_px: float
    area_px: float


def size_over_views(m: FruitMeasurement, sizes: list[ViewSize]) -> tuple[FruitMeasurement, float | None]:
    """``m`` with its diameter, minor diameter and area the median over ``sizes`` (whole views of
    the same fruit, e.g. every frame of a track where it is clear of the frame edge), and the spread
    of the views' diameters: their median absolute deviation from that median, in mm (in px when
    ``m`` has no scale; None without sizes). Everything else in ``m`` is kept."""
    if not sizes:
        return m, None
    d = float(statistics.median(s.diameter_px for s in sizes))
    minor = float(statistics.median(s.minor_diameter_px for s in sizes))
    area = float(statistics.median(s.area_px for s in sizes))
    spread = float(statistics.median(abs(s.diameter_px - d) for s in sizes))
    k = m.mm_per_px if m.diameter_mm is not None else None  # sized in mm only where m is (a scale, not cut off)
    out = replace(
        m,
        diameter_px=d,
        minor_diameter_px=minor,
        area_px=area,
        diameter_mm=None if k is None else d * k,
        minor_diameter_mm=None if k is None else minor * k,
        area_mm2=None if k is None else area * k * k,
    )
    return out, spread * (k or 1.0)
