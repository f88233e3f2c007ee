"""One image in, every fruit in it graded: measure -> defect model -> rules -> flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .blemish import BlemishParams
from .clutter import decline_in_clutter
from .commodities import Commodity
from .crop import crop_for_model
from .defect import DefectModel
from .flags import FlagPolicy, LotContext, fruit_flags, image_quality_flags
from .measure import measure_image, measure_segment
from .records import DefectEvidence, Flag, FruitGrade, FruitMeasurement, SweetnessEvidence
from .rules import facts_from, grade_fruit
from .segment import Segment, SegmentationParams
from .segment_pieces import pieces_of_larger
from .standards import Standard


@dataclass
class ImageGrade:
    fruits: list[FruitGrade]
    image_flags: list[Flag] = field(default_factory=list)
    #: candidate regions the segmentation proposed that the model's fruit check said are not fruit
    #: (a wall, leaves, a piece of the table): neither graded nor queued; their boxes and scores
    rejected: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "fruits": [f.to_dict() for f in self.fruits],
            "image_flags": [f.to_dict() for f in self.image_flags],
            "rejected_candidates": len(self.rejected),
            "rejected": self.rejected,
        }


def grade_image(
    image_rgb: np.ndarray,
    model: DefectModel,
    standard: Standard,
    *,
    mm_per_px: float | None,
    sweetness: SweetnessEvidence | None = None,
    policy: FlagPolicy | None = None,
    segmentation: SegmentationParams | None = None,
    blemish: BlemishParams | None = None,
    commodity: Commodity | None = None,
    measurements: list[FruitMeasurement] | None = None,
    lot: LotContext | None = None,
    confirmed: bool = False,
) -> ImageGrade:
    """Grade every fruit in the frame. ``measurements`` may be handed in when the caller already
    measured the frame (e.g. after setting reference spheres aside). ``confirmed``: the candidates
    are fruit already (a detector's or a client's boxes), the model's fruit check is not asked;
    otherwise (the belt path) the sizes of fruit it cannot trust in a cluttered frame are declined
    (grader/clutter.py)."""
    policy = policy or FlagPolicy()
    quality = image_quality_flags(image_rgb, policy)
    bands = commodity.colour_bands if commodity else ()
    axis = commodity.size_axis if commodity else "major"
    if measurements is None:
        measurements = measure_image(image_rgb, mm_per_px, segmentation, blemish, bands, axis)
    crops = [crop_for_model(image_rgb, m.bbox, model.spec.crop_margin_frac, m.mask) for m in measurements]
    evidence = model.predict(crops) if crops else []
    rejected: list[dict] = []
    if not confirmed:
        measurements, evidence, rejected = confirm_fruit(measurements, evidence)
        not_fruit = sum(r["reason"] == "not_fruit" for r in rejected)
        measurements = decline_in_clutter(image_rgb, measurements, evidence, not_fruit, model.spec.ood_distance_threshold)
        if not measurements:
            filled = fruit_filling_the_frame(image_rgb, model, mm_per_px, blemish, bands, axis)
            if filled is not None:
                measurements, evidence = [filled[0]], [filled[1]]
    if not measurements:
        why = (
            f"no fruit found in the image ({len(rejected)} candidate regions were not fruit)" if rejected else "no fruit found in the image"
        )
        return ImageGrade([], quality + [Flag("no_fruit", why, 20)], rejected)
    sound = tuple(c for c in model.spec.classes if c not in model.spec.defective_classes)
    fruits = [decide(m, ev, standard, sweetness, policy, lot, sound, quality) for m, ev in zip(measurements, evidence)]
    return ImageGrade(fruits, [], rejected)


#: A frame in which nothing stands out from its border may be one fruit filling it (a close-up: the
#: border the background is learned from is the fruit's own skin). Such a frame is graded as one
#: fruit cut by the border (so not sized) when its central half is coloured (median Lab chroma at
#: least FILL_MIN_CHROMA: empty belts, cups and concrete are grey, about 3-6) and the model's fruit
#: check is sure of the whole frame (fruit_score at least FILL_MIN_FRUIT_SCORE).
FILL_MIN_CHROMA = 15.0
FILL_MIN_FRUIT_SCORE = 0.5


#: the central half is measured at most this many pixels across: a median needs no more, and an
#: empty frame of a line camera pays for this check
CHROMA_SIDE_PX = 128


def central_chroma(image_rgb: np.ndarray) -> float:
    """Median Lab chroma (distance from grey in a*b*) of the frame's central half."""
    h, w = image_rgb.shape[:2]
    centre = np.ascontiguousarray(image_rgb[h // 4 : h - h // 4, w // 4 : w - w // 4])
    scale = CHROMA_SIDE_PX / max(centre.shape[:2])
    if scale < 1:
        size = (max(1, round(centre.shape[1] * scale)), max(1, round(centre.shape[0] * scale)))
        centre = cv2.resize(centre, size, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(centre, cv2.COLOR_RGB2LAB).astype(np.float32)
    return float(np.median(np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 128.0)))


def fruit_filling_the_frame(
    image_rgb: np.ndarray,
    model: DefectModel,
    mm_per_px: float | None,
    blemish: BlemishParams | None,
    colour_bands: tuple = (),
    size_axis: str = "major",
) -> tuple[FruitMeasurement, DefectEvidence] | None:
    """The whole frame as one fruit, when it is one (see :data:`FILL_MIN_CHROMA`); None otherwise, and
    for a model without a fruit check."""
    if model.spec.fruit_threshold is None or central_chroma(image_rgb) < FILL_MIN_CHROMA:
        return None
    h, w = image_rgb.shape[:2]
    mask = np.ones((h, w), bool)
    [ev] = model.predict([crop_for_model(image_rgb, (0, 0, w, h), model.spec.crop_margin_frac, mask)])
    if ev.fruit_score is None or ev.fruit_score < FILL_MIN_FRUIT_SCORE:
        return None
    outline = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
    seg = Segment(bbox=(0, 0, w, h), contour=outline, mask=mask, cut_off=True)
    return measure_segment(image_rgb, seg, mm_per_px, blemish, colour_bands, size_axis), ev


def confirm_fruit(measurements: list[FruitMeasurement], evidence: list[DefectEvidence]):
    """Keep the candidates the model's fruit check calls fruit (all of them for a model without
    one), less the pieces of a larger fruit: (measurements, evidence, rejected regions as {bbox,
    fruit_score, reason: not_fruit | piece_of_fruit})."""
    keep = [i for i, ev in enumerate(evidence) if ev.is_fruit is not False]
    # a fruit cut into pieces by a defect that looks like the background: the pieces lying on a
    # larger fruit are that fruit, not fruit of their own
    pieces = {keep[i] for i in pieces_of_larger([measurements[i].bbox for i in keep], [measurements[i].mask for i in keep])}
    rejected = [
        {
            "bbox": list(measurements[i].bbox),
            "fruit_score": round(float(evidence[i].fruit_score or 0.0), 4),
            "reason": "piece_of_fruit" if i in pieces else "not_fruit",
        }
        for i in range(len(evidence))
        if i not in keep or i in pieces
    ]
    keep = [i for i in keep if i not in pieces]
    return [measurements[i] for i in keep], [evidence[i] for i in keep], rejected


def decide(
    m: FruitMeasurement,
    ev: DefectEvidence | None,
    standard: Standard,
    sweetness: SweetnessEvidence | None,
    policy: FlagPolicy,
    lot: LotContext | None = None,
    sound: tuple[str, ...] = ("sound",),
    frame_flags: list[Flag] | None = None,
) -> FruitGrade:
    """Rules and flags for one measured fruit with its defect and sweetness evidence."""
    facts = facts_from(
        m.diameter_mm,
        None if sweetness is None else sweetness.brix,
        m.blemish_area_cm2,
        m.largest_blemish_cm2,
        m.colour_coverage,
        ev,
        sound,
    )
    decision = grade_fruit(standard, facts)
    extra = fruit_flags(ev, decision, policy, m.diameter_mm, sweetness, lot, sound)
    flags = sorted((frame_flags or []) + m.quality_flags + extra, key=lambda f: f.priority)
    return FruitGrade(measurement=m, defect=ev, sweetness=sweetness, decision=decision, flags=flags)
