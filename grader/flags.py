"""Abnormal fruit -> flags with reasons -> the inspectors' review queue.

Every trigger is a threshold in :class:`FlagPolicy` (filled from settings and the model's
metadata), never a constant buried in code.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .records import DefectEvidence, Flag, GradeDecision


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


def image_quality_flags(image_rgb: np.ndarray, policy: FlagPolicy) -> list[Flag]:
    """Frame-level problems that make any measurement in it untrustworthy."""
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    flags = []
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    if sharp < policy.min_sharpness:
        flags.append(Flag("blurry", f"image is blurred (sharpness {sharp:.1f} < {policy.min_sharpness:g})", 35))
    mean = float(grey.mean())
    dark = float((grey <= 5).mean())
    bright = float((grey >= 250).mean())
    if mean < policy.min_mean_grey or dark > policy.max_clipped_frac:
        flags.append(Flag("underexposed", f"image is too dark (mean grey {mean:.0f}, {dark:.0%} black)", 35))
    if mean > policy.max_mean_grey or bright > policy.max_clipped_frac:
        flags.append(Flag("overexposed", f"image is too bright (mean grey {mean:.0f}, {bright:.0%} white)", 35))
    return flags


def fruit_flags(defect: DefectEvidence | None, decision: GradeDecision | None, policy: FlagPolicy) -> list[Flag]:
    flags = []
    if defect is not None:
        lo, hi = policy.review_band
        if lo <= defect.score <= hi:
            flags.append(Flag("defect_uncertain", f"defect score {defect.score:.2f} is in the review band [{lo:.2f}, {hi:.2f}]", 40))
    if decision is not None and decision.provisional:
        missing = sorted({r.rule for r in decision.reasons if r.unverified})
        flags.append(Flag("provisional", f"grade {decision.grade} is provisional: unknown {', '.join(missing)}", 60))
    return flags
