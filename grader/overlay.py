"""Pictures of what was measured: outline, caliper diameter line, blemish outlines, labels.

Used by the service's overlay route, the inspectors' page and the docs' figures."""

from __future__ import annotations

from typing import Collection, Sequence

import cv2
import numpy as np

from .blemish import skin_anomaly_map
from .records import FruitMeasurement

GOOD = (40, 200, 60)
FLAGGED = (255, 170, 0)
BLEMISH = (255, 40, 200)
REFERENCE = (60, 160, 255)

#: what an overlay can show; the inspectors' page toggles each. "heatmap": where the skin departs
#: from its own colour (measured); "cnn": the defect model's map, P(defective) per cell of its crop
LAYERS = ("contour", "diameter", "blemish", "heatmap", "cnn", "labels")
DEFAULT_LAYERS = ("contour", "diameter", "blemish", "labels")

#: a fruit's CNN map as stored with its result: (P(defective) per cell, rows top to bottom; the
#: margin of the model's square crop around the fruit's bbox)
CnnMap = tuple[np.ndarray, float]


def model_crop_square(bbox: tuple[int, int, int, int], margin_frac: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop grader.crop.crop_for_model cuts for the model: the same
    geometry, so a map computed on that crop lands where the model looked."""
    x0, y0, x1, y1 = bbox
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin_frac)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def cnn_map_on_fruit(cnn: CnnMap, m: FruitMeasurement) -> np.ndarray:
    """The map upsampled (bilinear) to the model's crop of the fruit, cut to the fruit's bbox and
    masked to the fruit: float32 P(defective), bbox-sized, 0 off the fruit."""
    grid, margin = np.asarray(cnn[0], np.float32), float(cnn[1])
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"a CNN map is a 2-D grid, got shape {grid.shape}")
    x0, y0, x1, y1 = m.bbox
    sx0, sy0, side = model_crop_square(m.bbox, margin)
    up = cv2.resize(grid, (side, side), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    # the bbox inside the square (rounding may put its edge a pixel outside)
    ys, xs = max(0, sy0 - y0), max(0, sx0 - x0)
    ye, xe = min(y1 - y0, sy0 + side - y0), min(x1 - x0, sx0 + side - x0)
    out[ys:ye, xs:xe] = up[ys + y0 - sy0 : ye + y0 - sy0, xs + x0 - sx0 : xe + x0 - sx0]
    return np.where(m.mask, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def _blend_cnn_map(out: np.ndarray, m: FruitMeasurement, cnn: CnnMap) -> None:
    """Paint the CNN's P(defective) over the fruit, blue (sound) to red (defective evidence), more
    opaque where the evidence is stronger."""
    x0, y0, x1, y1 = m.bbox
    p = cnn_map_on_fruit(cnn, m)
    colour = cv2.applyColorMap((p * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
    alpha = ((0.15 + 0.4 * p) * m.mask)[..., None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (roi * (1 - alpha) + colour * alpha).astype(np.uint8)


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
    cnn_maps: Sequence[CnnMap | None] | None = None,
) -> np.ndarray:
    """A copy of the image with each fruit's measurements drawn on it: the ``layers`` named
    (outline, caliper diameter line, blemish outlines, skin-anomaly heat map, the defect model's
    map from ``cnn_maps`` (one per fruit, None where there is none), text labels)."""
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown overlay layers {sorted(unknown)}; known: {list(LAYERS)}")
    out = image_rgb.copy()
    if "heatmap" in layers:
        for m in fruits:
            _blend_heatmap(out, image_rgb, m)
    if "cnn" in layers and cnn_maps is not None:
        for m, cnn in zip(fruits, cnn_maps):
            if cnn is not None:
                _blend_cnn_map(out, m, cnn)
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
    if m.diameter_mm is not None:
        size = f"{m.diameter_mm:.1f} mm"
    else:
        size = "cut off" if m.cut_off else (f"not sized: {m.size_declined}" if m.size_declined else "uncalibrated")
    blem = f", {m.blemish_area_cm2:.2f} cm2" if m.blemish_area_cm2 else ""
    return size + blem + (f"\n{grade}" if grade else "")
