"""Size fruit on the tree: one fruit at a time, inside a search window, from the image pixels.

In an orchard frame a detector (or a person) says *which* fruit is meant, by a box; the box's own
size is not trusted (hand-drawn boxes are loose or shifted by several pixels). The fruit's
diameter comes from the pixels only:

1. **Window.** A square window around the box centre, ``window_frac`` × the box side on each side
   of it (plus a small margin). The box says where to look, never how large the fruit is.
2. **Watershed.** The window (Gaussian-blurred) is flooded from two markers: a *seed disc* at the
   box centre (``seed_frac`` × box side in radius, assumed to lie on the fruit) and the window's
   border (background). The fruit region is what the seed claims; it stops at the strongest colour
   edges between the seed and the border, i.e. the fruit's outline, or an occluding leaf, or it
   leaks through a weak edge into sky of the same colour.
3. **Circle.** A circle is fitted to that region's outline by RANSAC, each hypothesis scored by the
   colour-gradient strength of the outline points it explains per unit of its circumference. So
   the strong, round arcs of the true outline win over the weak edges a leak ran through and over
   the concave edges of occluding leaves. The refined circle (least squares on its inliers) gives
   ``diameter_px = 2·r + 1`` (outline pixel centres sit half a pixel inside the edge).
4. **Declining.** A fruit is declined, with a reason, when no region is found (``no_fruit``), no
   circle fits (``no_outline``), or the circle's inliers cover less than ``min_coverage`` of its
   circumference (``no_clean_outline``: mostly occluded or leaking).

Reference spheres (tennis balls) are measured the same way; ``scale_from_references`` turns their
diameters into ``mm_per_px`` for the frame, so a bias of the segmentation largely cancels out.

Pure functions: numpy and OpenCV only, no file I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

#: diameter of a regulation tennis ball used as a reference sphere in the ecopom data (mm)
TENNIS_BALL_DIAMETER_MM = 65.46


@dataclass(frozen=True)
class WindowParams:
    """Knobs of :func:`measure_in_window`. Defaults were chosen on the first half of the ecopom
    dates only (see bench/size_accuracy.py)."""

    window_frac: float = 0.8  # half-side of the search window, as a share of the box side
    margin_px: int = 4  # extra pixels around the window
    seed_frac: float = 0.32  # radius of the seed disc assumed on the fruit, as a share of the box side
    blur_px: int = 5  # Gaussian blur (odd kernel side) before flooding; 0 = none
    inlier_tol_px: float = 1.5  # outline point within this of a circle supports it
    ransac_iters: int = 400
    min_radius_px: float = 5.0
    min_coverage: float = 0.45  # share of the circumference the inliers must cover


@dataclass(frozen=True)
class Circle:
    """A circle in full-image pixel coordinates."""

    cx_px: float
    cy_px: float
    radius_px: float


@dataclass
class WindowMeasurement:
    """Result of :func:`measure_in_window`. ``diameter_px`` is None when the fruit is declined."""

    diameter_px: float | None
    reason: str  # "ok" or why the fruit was declined
    circle: Circle | None  # fitted circle (also for a declined fruit, when one was found)
    contour_px: np.ndarray | None  # (N, 2) int32 outline of the watershed region, full-image coords
    coverage: float  # share of the circle's circumference backed by outline points


def fit_circle_px(points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares (Kåsa) circle through points (N, 2): centre x, centre y, radius."""
    p = np.asarray(points, np.float64)
    a = np.c_[2 * p[:, 0], 2 * p[:, 1], np.ones(len(p))]
    b = (p**2).sum(axis=1)
    (cx, cy, c), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(cx), float(cy), float(math.sqrt(max(c + cx * cx + cy * cy, 0.0)))


def _circles_through_triples(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circumscribed circles of many point triples at once: p has shape (K, 3, 2)."""
    ax, ay, bx, by, cx, cy = p[:, 0, 0], p[:, 0, 1], p[:, 1, 0], p[:, 1, 1], p[:, 2, 0], p[:, 2, 1]
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    ok = np.abs(d) > 1e-9
    d = np.where(ok, d, 1.0)
    a2, b2, c2 = ax**2 + ay**2, bx**2 + by**2, cx**2 + cy**2
    ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
    uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
    r = np.where(ok, np.hypot(ax - ux, ay - uy), -1.0)
    return ux, uy, r


def ransac_circle_px(
    points: np.ndarray,
    weights: np.ndarray,
    seed_xy: tuple[float, float],
    tol_px: float,
    iters: int = 400,
    min_radius_px: float = 5.0,
    max_radius_px: float = 1e9,
    rng_seed: int = 0,
) -> tuple[Circle, float] | None:
    """Circle best explaining outline points, with the seed point inside it.

    Each hypothesis (circle through 3 random points) scores the summed ``weights`` (edge strength)
    of the points within ``tol_px`` of it, per pixel of its circumference. Returns the circle
    refined by least squares on the winner's inliers, and the share of its circumference they
    cover; None when no hypothesis qualifies."""
    p = np.asarray(points, np.float64)
    n = len(p)
    if n < 8:
        return None
    rng = np.random.default_rng(rng_seed)
    idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(iters)])
    ux, uy, r = _circles_through_triples(p[idx])
    ok = (r >= min_radius_px) & (r <= max_radius_px) & (np.hypot(ux - seed_xy[0], uy - seed_xy[1]) < r)
    if not ok.any():
        return None
    ux, uy, r = ux[ok], uy[ok], r[ok]
    dist = np.abs(np.hypot(p[None, :, 0] - ux[:, None], p[None, :, 1] - uy[:, None]) - r[:, None])
    score = ((dist < tol_px) * weights[None, :]).sum(axis=1) / (2 * math.pi * r)
    inliers = dist[int(score.argmax())] < tol_px
    cx = cy = rad = 0.0
    for _ in range(2):
        if inliers.sum() < 3:
            return None
        cx, cy, rad = fit_circle_px(p[inliers])
        inliers = np.abs(np.hypot(p[:, 0] - cx, p[:, 1] - cy) - rad) < tol_px
    if rad < min_radius_px:
        return None
    coverage = float(min(1.0, inliers.sum() / (2 * math.pi * rad)))
    return Circle(cx, cy, rad), coverage


def measure_in_window(
    image_rgb: np.ndarray,
    box_xyxy: Sequence[float],
    params: WindowParams | None = None,
) -> WindowMeasurement:
    """Diameter in pixels of the round fruit (or reference ball) at the centre of ``box_xyxy``.

    ``box_xyxy`` = (x0, y0, x1, y1) in image pixels only places the search window and the seed
    disc (see the module docstring); the diameter comes from the fitted outline circle."""
    params = params or WindowParams()
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}")
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    side_px = max(x1 - x0, y1 - y0, 1.0)
    ix, iy = int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2))
    half = int(round(side_px * params.window_frac)) + params.margin_px
    pad = half + 2
    padded = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    crop = padded[iy - half + pad : iy + half + pad + 1, ix - half + pad : ix + half + pad + 1]
    ox, oy = ix - half, iy - half  # crop origin in image coordinates
    smooth = cv2.GaussianBlur(crop, (params.blur_px, params.blur_px), 0) if params.blur_px > 1 else crop
    smooth = np.ascontiguousarray(smooth)
    lab = cv2.cvtColor(smooth, cv2.COLOR_RGB2LAB).astype(np.float32)
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3)
    grad = np.sqrt((gx**2 + gy**2).sum(axis=2))

    n = crop.shape[0]
    markers = np.zeros((n, n), np.int32)
    markers[:3, :] = markers[-3:, :] = markers[:, :3] = markers[:, -3:] = 1  # background
    cv2.circle(markers, (half, half), max(2, int(round(params.seed_frac * side_px))), 2, -1)  # fruit
    flooded = cv2.watershed(smooth, markers)
    region = (flooded == 2).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return WindowMeasurement(None, "no_fruit", None, None, 0.0)
    outline = max(contours, key=cv2.contourArea).reshape(-1, 2)
    contour_px = (outline + np.array([ox, oy])).astype(np.int32)
    fit = ransac_circle_px(
        outline,
        grad[outline[:, 1], outline[:, 0]].astype(np.float64),
        (half, half),
        params.inlier_tol_px,
        params.ransac_iters,
        params.min_radius_px,
        max_radius_px=float(half),
    )
    if fit is None:
        return WindowMeasurement(None, "no_outline", None, contour_px, 0.0)
    c, coverage = fit
    circle = Circle(c.cx_px + ox, c.cy_px + oy, c.radius_px)
    if coverage < params.min_coverage:
        return WindowMeasurement(None, "no_clean_outline", circle, contour_px, coverage)
    return WindowMeasurement(2 * c.radius_px + 1.0, "ok", circle, contour_px, coverage)


def scale_from_references(diameters_px: Sequence[float | None], reference_mm: float = TENNIS_BALL_DIAMETER_MM) -> float | None:
    """``mm_per_px`` of a frame from the measured pixel diameters of its reference spheres.

    The median is used, so one badly measured ball does not move the scale; declined balls (None)
    are ignored. None when no ball was measured."""
    good = [float(d) for d in diameters_px if d is not None and math.isfinite(d) and d > 0]
    if not good:
        return None
    return reference_mm / float(np.median(good))


def box_scale_mm_per_px(boxes_xyxy: Sequence[Sequence[float]], reference_mm: float = TENNIS_BALL_DIAMETER_MM) -> float | None:
    """Baseline ``mm_per_px``: the reference diameter over the median mean side of the balls' boxes."""
    sides = [((b[2] - b[0]) + (b[3] - b[1])) / 2 for b in boxes_xyxy]
    if not sides:
        return None
    return reference_mm / float(np.median(sides))
