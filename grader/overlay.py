"""Pictures of what was measured: outline, caliper diameter line, blemish outlines, labels.

Used by the service's overlay route, the inspectors' page and the docs' figures."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .records import FruitMeasurement

GOOD = (40, 200, 60)
FLAGGED = (255, 170, 0)
BLEMISH = (255, 40, 200)
REFERENCE = (60, 160, 255)


def caliper_line(m: FruitMeasurement) -> tuple[tuple[int, int], tuple[int, int]]:
    """Endpoints of the largest width of the outline (the farthest pair of hull points)."""
    hull = cv2.convexHull(m.contour_px.reshape(-1, 1, 2)).reshape(-1, 2).astype(np.float64)
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    return (int(hull[i][0]), int(hull[i][1])), (int(hull[j][0]), int(hull[j][1]))


def draw_overlay(
    image_rgb: np.ndarray,
    fruits: Sequence[FruitMeasurement],
    labels: Sequence[str] | None = None,
    flagged: Sequence[bool] | None = None,
    references: Sequence[FruitMeasurement] = (),
) -> np.ndarray:
    """A copy of the image with each fruit's measurements drawn on it."""
    out = image_rgb.copy()
    scale = max(1.0, max(out.shape[:2]) / 800.0)
    thick = max(1, int(round(2 * scale)))
    font = 0.5 * scale
    for r in references:
        cv2.polylines(out, [r.contour_px.reshape(-1, 1, 2)], True, REFERENCE, thick)
        cv2.putText(out, "reference", (r.bbox[0], max(12, r.bbox[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, font, REFERENCE, thick)
    for k, m in enumerate(fruits):
        colour = FLAGGED if flagged is not None and flagged[k] else GOOD
        cv2.polylines(out, [m.contour_px.reshape(-1, 1, 2)], True, colour, thick)
        if m.blemish_mask is not None and m.blemish_mask.any():
            spots, _ = cv2.findContours(m.blemish_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.polylines(out, [c + np.array([m.bbox[0], m.bbox[1]]) for c in spots], True, BLEMISH, thick)
        if not m.cut_off:
            a, b = caliper_line(m)
            cv2.line(out, a, b, colour, max(1, thick // 2), cv2.LINE_AA)
        text = labels[k] if labels is not None else (f"{m.diameter_mm:.1f} mm" if m.diameter_mm is not None else "not sized")
        lines = text.split("\n")
        for n, line in enumerate(lines):
            y = max(14, m.bbox[1] - 6 - int(16 * scale) * (len(lines) - 1 - n))
            cv2.putText(out, line, (m.bbox[0], y), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick + 2, cv2.LINE_AA)
            cv2.putText(out, line, (m.bbox[0], y), cv2.FONT_HERSHEY_SIMPLEX, font, colour, thick, cv2.LINE_AA)
    return out


def fruit_label(m: FruitMeasurement, grade: str | None = None) -> str:
    """Two short lines: size and blemish, then grade."""
    size = f"{m.diameter_mm:.1f} mm" if m.diameter_mm is not None else ("cut off" if m.cut_off else "uncalibrated")
    blem = f", {m.blemish_area_cm2:.2f} cm2" if m.blemish_area_cm2 else ""
    return size + blem + (f"\n{grade}" if grade else "")
