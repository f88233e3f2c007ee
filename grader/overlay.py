"""Pictures of what was measured: outline, caliper diameter line, blemish outlines, labels.

Used by the service's overlay route, the inspectors' page and the docs' figures."""

from __future__ import annotations

from typing import Collection, Sequence

import cv2
import numpy as np

from .measure import skin_anomaly_map
from .records import FruitMeasurement

GOOD = (40, 200, 60)
FLAGGED = (255, 170, 0)
BLEMISH = (255, 40, 200)
REFERENCE = (60, 160, 255)

#: what an overlay can show; the inspectors' page toggles each
LAYERS = ("contour", "diameter", "blemish", "heatmap", "labels")
DEFAULT_LAYERS = ("contour", "diameter", "blemish", "labels")


def _blend_heatmap(out: np.ndarray, image_rgb: np.ndarray, m: FruitMeasurement) -> None:
    """Paint the fruit's skin-anomaly map (0..1) over it in a red-yellow scale; cool skin stays as is."""
    x0, y0, x1, y1 = m.bbox
    heat = skin_anomaly_map(image_rgb, m)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1].astype(np.float32)
    alpha = (np.clip(heat * 1.6, 0.0, 0.85) * m.mask)[..., None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (roi * (1 - alpha) + colour * alpha).astype(np.uint8)


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
    layers: Collection[str] = DEFAULT_LAYERS,
) -> np.ndarray:
    """A copy of the image with each fruit's measurements drawn on it: the ``layers`` named
    (outline, caliper diameter line, blemish outlines, skin-anomaly heat map, text labels)."""
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown overlay layers {sorted(unknown)}; known: {list(LAYERS)}")
    out = image_rgb.copy()
    if "heatmap" in layers:
        for m in fruits:
            _blend_heatmap(out, image_rgb, m)
    scale = max(1.0, max(out.shape[:2]) / 800.0)
    thick = max(1, int(round(2 * scale)))
    font = 0.5 * scale
    for r in references if "contour" in layers else ():
        cv2.polylines(out, [r.contour_px.reshape(-1, 1, 2)], True, REFERENCE, thick)
        cv2.putText(out, "reference", (r.bbox[0], max(12, r.bbox[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, font, REFERENCE, thick)
    for k, m in enumerate(fruits):
        colour = FLAGGED if flagged is not None and flagged[k] else GOOD
        if "contour" in layers:
            cv2.polylines(out, [m.contour_px.reshape(-1, 1, 2)], True, colour, thick)
        if "blemish" in layers and m.blemish_mask is not None and m.blemish_mask.any():
            spots, _ = cv2.findContours(m.blemish_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.polylines(out, [c + np.array([m.bbox[0], m.bbox[1]]) for c in spots], True, BLEMISH, thick)
        if "diameter" in layers and not m.cut_off:
            a, b = caliper_line(m)
            cv2.line(out, a, b, colour, max(1, thick // 2), cv2.LINE_AA)
        if "labels" not in layers:
            continue
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
