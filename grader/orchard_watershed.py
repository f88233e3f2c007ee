"""The watershed method of sizing a fruit on the tree (``bench/size_accuracy.py --method watershed``;
the shipped one is :func:`grader.orchard.measure_by_probability`). The box only places the search:

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

Pure functions: numpy and OpenCV only, no file I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .orchard import WindowMeasurement
from .orchard_circles import Circle, ransac_circle_px


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
