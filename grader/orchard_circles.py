"""Circles through a fruit's edge points, for sizing on the tree: the least-squares (Kåsa) fit, and
the RANSAC fits of the two orchard methods: one through outline points scored by their edge
strength per unit of circumference (:func:`ransac_circle_px`, the watershed method), one through
one edge point per ray scored by the rays it explains (:func:`ray_circle`, the probability method).
In every one the seed point must lie inside the circle.

Pure functions: numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Circle:
    """A circle in full-image pixel coordinates."""

    cx_px: float
    cy_px: float
    radius_px: float


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


def ray_circle(
    pts: np.ndarray, seed_xy: tuple[float, float], tol_px: float, r_min: float, r_max: float, iters: int = 300, rng_seed: int = 0
) -> Circle | None:
    """RANSAC circle through ray edge points (one per ray), scored by the number of rays it
    explains within ``tol_px``; refined by least squares on its inliers."""
    n = len(pts)
    if n < 8:
        return None
    rng = np.random.default_rng(rng_seed)
    idx = np.argsort(rng.random((iters, n)), axis=1)[:, :3]
    ux, uy, r = _circles_through_triples(pts[idx])
    ok = (r >= r_min) & (r <= r_max) & (np.hypot(ux - seed_xy[0], uy - seed_xy[1]) < r)
    if not ok.any():
        return None
    ux, uy, r = ux[ok], uy[ok], r[ok]
    res = np.abs(np.hypot(pts[None, :, 0] - ux[:, None], pts[None, :, 1] - uy[:, None]) - r[:, None])
    score = (res < tol_px).sum(axis=1) - 1e-3 * np.clip(res, 0, tol_px).sum(axis=1)
    inl = res[int(score.argmax())] < tol_px
    c = None
    for _ in range(3):
        if inl.sum() < 3:
            return c
        cx, cy, rad = fit_circle_px(pts[inl])
        c = Circle(cx, cy, rad)
        inl = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - rad) < tol_px
    return c
