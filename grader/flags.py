"""Abnormal fruit -> flags with reasons -> the inspectors' review queue.

Every trigger is a threshold in :class:`FlagPolicy` (filled from settings and the model's
metadata), never a constant buried in code.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .records import DefectEvidence, Flag, GradeDecision, SweetnessEvidence
from .sweetness import is_outlier


@dataclass(frozen=True)
class FlagPolicy:
    #: defect scores inside this band are neither clearly sound nor clearly defective
    review_band: tuple[float, float] = (0.3, 0.7)
    #: variance of the Laplacian below which a frame is too blurred to trust blemish areas
    min_sharpness: float = 20.0
    #: share of pixels at 0/255 above which a frame is under/over exposed
    max_clipped_frac: float = 0.25
    #: mean grey level bounds for a usable exposure
    min_mean_grey: float = 35.0
    max_mean_grey: float = 225.0
    #: a fruit whose size or Brix lies more than this many robust SDs from its lot's is an outlier
    outlier_k: float = 3.5
    #: ...judged only once the lot holds this many values (fewer say nothing about a lot)
    outlier_min_n: int = 10
    #: Brix at or above this on a fruit the model calls defective: the signals disagree
    disagreement_min_brix: float = 13.0
    #: defect labels that mean decay: always examined first
    decay_labels: tuple[str, ...] = ("decay", "rot", "mould")


@dataclass(frozen=True)
class LotContext:
    """What is known of the fruit's lot so far: its sized diameters and its Brix values."""

    diameters_mm: tuple[float, ...] = ()
    brix: tuple[float, ...] = ()


def image_quality_flags(image_rgb: np.ndarray, policy: FlagPolicy) -> list[Flag]:
    """Frame-level problems that make any measurement in it untrustworthy."""
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    flags = []
    # the Laplacian of 8-bit grey fits 16-bit integers exactly; its variance from OpenCV's one pass
    sharp = float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))[1][0, 0] ** 2)
    if sharp < policy.min_sharpness:
        flags.append(Flag("blurry", f"image is blurred (sharpness {sharp:.1f} < {policy.min_sharpness:g})", 35))
    mean = float(cv2.mean(grey)[0])
    dark = cv2.countNonZero(cv2.inRange(grey, 0, 5)) / grey.size
    bright = cv2.countNonZero(cv2.inRange(grey, 250, 255)) / grey.size
    if mean < policy.min_mean_grey or dark > policy.max_clipped_frac:
        flags.append(Flag("underexposed", f"image is too dark (mean grey {mean:.0f}, {dark:.0%} black)", 35))
    if mean > policy.max_mean_grey or bright > policy.max_clipped_frac:
        flags.append(Flag("overexposed", f"image is too bright (mean grey {mean:.0f}, {bright:.0%} white)", 35))
    return flags


def ood_signals_text(defect: DefectEvidence) -> str:
    """Which out-of-distribution signal fired, with its value: the feature distance to the training
    fruit (pooled features, or an early block's texture statistics), the energy of the logits, or
    several. Evidence stored before the signals were recorded
    fired on energy, the only signal then."""
    fired = defect.ood_signals or ("energy",)
    parts = []
    if "distance" in fired and defect.ood_distance is not None:
        parts.append(f"feature distance {defect.ood_distance:.1f} from the training fruit, above its threshold")
    if "early-distance" in fired and defect.ood_distance_early is not None:
        parts.append(f"early-layer texture distance {defect.ood_distance_early:.1f} from the training fruit, above its threshold")
    if "energy" in fired and defect.ood_score is not None:
        parts.append(f"energy {defect.ood_score:.2f}, above its threshold")
    return " and ".join(parts) or "out of distribution"


def fruit_flags(
    defect: DefectEvidence | None,
    decision: GradeDecision | None,
    policy: FlagPolicy,
    diameter_mm: float | None = None,
    sweetness: SweetnessEvidence | None = None,
    lot: LotContext | None = None,
    sound_labels: tuple[str, ...] = ("sound",),
) -> list[Flag]:
    flags = []
    if defect is not None and defect.label in policy.decay_labels:
        flags.append(Flag("decay", f"the model sees {defect.label} (score {defect.score:.2f})", 10))
    if defect is not None and defect.ood:
        flags.append(Flag("ood", f"the image does not look like fruit the model knows ({ood_signals_text(defect)}): not trusted", 15))
    if defect is not None:
        lo, hi = policy.review_band
        if lo <= defect.score <= hi:
            flags.append(Flag("defect_uncertain", f"defect score {defect.score:.2f} is in the review band [{lo:.2f}, {hi:.2f}]", 40))
    if lot is not None and diameter_mm is not None:
        out, z = is_outlier(diameter_mm, list(lot.diameters_mm), policy.outlier_k, policy.outlier_min_n)
        if out:
            flags.append(Flag("size_outlier", f"diameter {diameter_mm:.1f} mm is {z:+.1f} robust SD from its lot's", 45))
    if lot is not None and sweetness is not None and sweetness.source != "lot-sample":
        out, z = is_outlier(sweetness.brix, list(lot.brix), policy.outlier_k, policy.outlier_min_n)
        if out:
            flags.append(Flag("brix_outlier", f"{sweetness.brix:.1f} °Brix is {z:+.1f} robust SD from its lot's", 45))
    if (
        defect is not None
        and defect.label not in sound_labels
        and sweetness is not None
        and sweetness.source != "lot-sample"
        and sweetness.brix >= policy.disagreement_min_brix
    ):
        flags.append(
            Flag(
                "signals_disagree",
                f"the model calls the fruit {defect.label} (score {defect.score:.2f}) "
                f"but its juice reads {sweetness.brix:.1f} °Brix (>= {policy.disagreement_min_brix:g})",
                25,
            )
        )
    if decision is not None and decision.provisional:
        missing = sorted({r.rule for r in decision.reasons if r.unverified})
        flags.append(Flag("provisional", f"grade {decision.grade} is provisional: unknown {', '.join(missing)}", 60))
    return flags


# ----------------------------------------------------------------------------- active learning
#: priority of a fruit sampled for review to teach the model (after every abnormality)
SUGGESTED_PRIORITY = 90


def uncertainty(score: float, threshold: float) -> float:
    """How unsure a defect score is: 1 at the model's threshold, 0 at the far end of the range."""
    span = max(threshold, 1.0 - threshold, 1e-6)
    return max(0.0, 1.0 - abs(score - threshold) / span)


def sample_draw(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for a fruit: the same fruit always draws the same,
    so replicas and re-runs agree on which fruit were sampled."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / float(1 << 52)


def suggested_flag(score: float, unsure: float) -> Flag:
    return Flag(
        "suggested", f"picked for review to teach the model: p(defective) {score:.2f} is uncertain ({unsure:.0%})", SUGGESTED_PRIORITY
    )


def review_sample_flag(key: str, score: float, threshold: float, share: float, min_uncertainty: float = 0.5) -> Flag | None:
    """For an unflagged fruit: a `suggested` flag for ``share`` of the fruit whose score is at least
    ``min_uncertainty`` unsure (active learning), else None."""
    if share <= 0 or not math.isfinite(score):
        return None
    unsure = uncertainty(score, threshold)
    if unsure < min_uncertainty or sample_draw(key) >= share:
        return None
    return suggested_flag(score, unsure)
