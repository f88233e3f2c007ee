"""Target encoding of the orchard detector: one tile's boxes as CenterNet targets (a Gaussian peak
per object on its class heatmap, the negatives' loss weights, size and sub-cell offset at each
centre). The decoding (peaks, NMS) is inference/detector.py's ``decode``, shared with serving."""

from __future__ import annotations

import math

import numpy as np

from training.detector.augment import TileGeom
from training.detector.config import STRIDE
from training.detector.frames import Frame


def gaussian_sigma(w_cells: float, h_cells: float) -> float:
    return max(0.6, min(w_cells, h_cells) / 6.0)


def tile_targets(
    frame: Frame,
    g: TileGeom,
    n_classes: int,
    apple: int,
    max_objects: int,
    pseudo_as: str = "ignore",
    apple_neg_weight: float = 1.0,
    ball: int = -1,
) -> dict[str, np.ndarray]:
    """Centre heatmap (C, G, G), negative-loss weight (C, G, G), and up to ``max_objects`` regression
    targets (cell index, log box size in cells, sub-cell offset) for one tile. ``apple_neg_weight``
    scales the apple channel's negatives (most unboxed apples are no negatives), except on the tennis
    balls (class ``ball``), which stay full negatives of the apple channel."""
    grid = g.tile // STRIDE
    heat = np.zeros((n_classes, grid, grid), np.float32)
    negw = np.ones((n_classes, grid, grid), np.float32)
    if apple >= 0:
        negw[apple] = apple_neg_weight
    idx = np.zeros(max_objects, np.int64)
    wh = np.zeros((max_objects, 2), np.float32)
    off = np.zeros((max_objects, 2), np.float32)
    mask = np.zeros(max_objects, np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    objs = [(b, int(c), True) for b, c in zip(g.boxes(frame.boxes), frame.labels)]
    if pseudo_as == "positive":
        objs += [(b, apple, True) for b in g.boxes(frame.ignore)]
    n = 0
    for b, c, _ in objs:
        cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
        w, h = (b[2] - b[0]) / STRIDE, (b[3] - b[1]) / STRIDE
        if not (0 <= cx < grid and 0 <= cy < grid) or w <= 0 or h <= 0:
            continue
        ix, iy = int(cx), int(cy)
        sig = gaussian_sigma(w, h)
        heat[c] = np.maximum(heat[c], np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sig * sig)))
        heat[c, iy, ix] = 1.0
        if n < max_objects:
            idx[n], wh[n], off[n], mask[n] = iy * grid + ix, (math.log(w), math.log(h)), (cx - ix, cy - iy), 1.0
            n += 1
    if apple >= 0 and ball >= 0 and apple_neg_weight != 1.0:
        for b in g.boxes(frame.boxes[frame.labels == ball]):
            cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
            r = max(1.0, 0.5 * max(b[2] - b[0], b[3] - b[1]) / STRIDE)
            negw[apple][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1.0
    if pseudo_as == "ignore" and apple >= 0:
        for b in g.boxes(frame.ignore):
            cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
            r = max(1.0, 0.5 * min(b[2] - b[0], b[3] - b[1]) / STRIDE)
            negw[apple][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 0.0
    return {"heat": heat, "negw": negw, "idx": idx, "wh": wh, "off": off, "mask": mask}
