"""The perspective of a pinhole camera on a sphere: off the optical axis it images as an ellipse
stretched radially by sqrt(1 + ρ²/f²) (ρ: distance from the principal point, f: focal length in
pixels). :func:`undo_perspective_px` takes that stretch out of a fruit's edge points, so fruit and
reference balls anywhere in the frame are sized as at the image centre.

Pure functions: numpy only."""

from __future__ import annotations

import math

import numpy as np


def perspective_stretch(centre_xy: tuple[float, float], focal_px: float, principal_xy: tuple[float, float]) -> tuple[np.ndarray, float]:
    """How a pinhole camera stretches a small sphere imaged at ``centre_xy``.

    A sphere of diameter D at depth Z, seen at angle θ off the optical axis, images as an ellipse:
    across the radial direction (from the principal point) it is f·D/Z wide, as at the image centre,
    but along it the width is stretched by s = 1/cos θ = sqrt(1 + ρ²/f²), ρ the distance of the
    image from the principal point. Returns (unit radial direction, s); s = 1 at the principal
    point."""
    v = np.array([centre_xy[0] - principal_xy[0], centre_xy[1] - principal_xy[1]], np.float64)
    rho = float(np.hypot(v[0], v[1]))
    if rho < 1e-9:
        return np.array([1.0, 0.0]), 1.0
    return v / rho, math.sqrt(1.0 + (rho / focal_px) ** 2)


def undo_perspective_px(
    points_xy: np.ndarray, centre_xy: tuple[float, float], focal_px: float | None, principal_xy: tuple[float, float]
) -> np.ndarray:
    """Outline points (N, 2) with the perspective stretch of :func:`perspective_stretch` undone
    about ``centre_xy``: their radial component is divided by s, so a sphere's ellipse becomes the
    circle it would image as at the principal point, at the same depth. ``focal_px`` None: unchanged."""
    p = np.asarray(points_xy, np.float64)
    if focal_px is None or focal_px <= 0:
        return p
    u, s = perspective_stretch(centre_xy, focal_px, principal_xy)
    d = p - np.asarray(centre_xy, np.float64)
    return p - np.outer((d @ u) * (1.0 - 1.0 / s), u)
