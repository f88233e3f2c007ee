"""Size fruit on the tree: one fruit at a time, around the box that says which fruit is meant, from
the image pixels.

In an orchard frame a detector (or a person) says *which* fruit is meant, by a box; the box's own
size is not trusted (hand-drawn boxes are loose or shifted by several pixels). The fruit's
diameter comes from the pixels only, as a :class:`WindowMeasurement`: by
:func:`measure_by_probability` here, the method of the ecopom benchmark and of the service, or by
the earlier watershed method (grader/orchard_watershed.py: ``measure_in_window``).

Reference spheres (tennis balls) are measured the same way (by either method);
``grader.calibration.scale_from_references`` turns their diameters into ``mm_per_px`` for the frame, so a bias of the
segmentation largely cancels out.

The steps of :func:`measure_by_probability`:

1. **Colour model per fruit.** GrabCut in Lab (or a quadratic logistic regression on pixel
   features), trained on the frame itself from a sure-fruit disc at the box centre and a
   sure-background annulus well outside the box, gives the fruit region.
2. **Coarse circle.** A RANSAC circle through the points where rays from the centre leave that
   region. The region is only roughly right: it takes in leaves of a similar colour touching the
   rim and loses shaded parts of it, so this circle is often a few pixels off.
3. **Refined circle.** On each ray, the strongest colour edge of the image itself (radial
   derivative of the blurred Lab image) within ±15 % of the coarse radius, located to sub-pixel;
   a RANSAC circle with a tight tolerance through those points keeps the arcs where fruit meets
   background and drops rays that met a leaf, a highlight or a shadow.
4. **Perspective.** A sphere off the optical axis images as an ellipse stretched radially by
   sqrt(1 + ρ²/f²) (ρ: distance from the principal point); given the camera's focal length the
   edge points are un-stretched (:func:`undo_perspective_px`) before the final circle fit, so
   fruit and reference balls anywhere in the frame are sized as at the image centre.

The parts: the circle fits in grader/orchard_circles.py, the pixel classifier and the region fill
in grader/orchard_colour.py, the perspective in grader/orchard_perspective.py.

Pure functions: numpy and OpenCV only, no file I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .orchard_circles import Circle, fit_circle_px, ray_circle
from .orchard_colour import fill_component, pixel_features, train_pixel_classifier
from .orchard_perspective import undo_perspective_px

#: diameter of a regulation tennis ball used as a reference sphere in the ecopom data (mm)
TENNIS_BALL_DIAMETER_MM = 65.46


@dataclass
class WindowMeasurement:
    """Result of sizing one fruit (:func:`measure_by_probability`, or ``measure_in_window`` of grader/orchard_watershed.py).
    ``diameter_px`` is None when the fruit is declined."""

    diameter_px: float | None
    reason: str  # "ok" or why the fruit was declined
    circle: Circle | None  # fitted circle (also for a declined fruit, when one was found)
    contour_px: np.ndarray | None  # (N, 2) int32 outline of the watershed region, full-image coords
    coverage: float  # share of the circle's circumference backed by outline points
    edge_px: np.ndarray | None = None  # (N, 2) float edge points the final circle was fitted to (full image)


def box_scale_mm_per_px(boxes_xyxy: Sequence[Sequence[float]], reference_mm: float = TENNIS_BALL_DIAMETER_MM) -> float | None:
    """Baseline ``mm_per_px``: the reference diameter over the median mean side of the balls' boxes."""
    sides = [((b[2] - b[0]) + (b[3] - b[1])) / 2 for b in boxes_xyxy]
    if not sides:
        return None
    return reference_mm / float(np.median(sides))


# ----------------------------------------------------------------------------------------------
# Self-supervised pixel classifier + radial circle fit ("probability" method)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbParams:
    """Knobs of :func:`measure_by_probability`. Defaults were chosen on the first half of the
    ecopom dates only (see bench/size_accuracy.py)."""

    blur_px: int = 3  # Gaussian blur (odd kernel side) before computing the pixel features
    texture_px: int = 5  # side of the window of the local standard deviation of L (texture)
    pos_frac: float = 0.25  # positives: disc of this radius (× box side) around the box centre
    neg_inner: float = 0.9  # negatives: annulus from this … (× box side, from the centre)
    neg_outer: float = 1.3  # … to this, minus the inner parts of the other boxes
    other_frac: float = 0.55  # other boxes exclude a disc of this radius (× their side) from negatives
    l2: float = 1e-2  # ridge on the logistic regression weights
    newton_steps: int = 8
    n_angles: int = 96  # rays of the radial profile
    min_r_frac: float = 0.2  # search the edge from this radius (× box side) …
    max_r_frac: float = 0.85  # … out to this one: the box only bounds the search
    gap_px: float = 2.0  # the fruit ends where p < 0.5 for at least this long along the ray
    centre_iters: int = 3  # re-centre the rays on the fitted circle this many times
    inlier_tol_px: float = 1.5
    inlier_tol_frac: float = 0.0  # tolerance is at least this × box side (apples are not perfect circles)
    min_coverage: float = 0.3  # share of rays whose edge lies on the circle
    # added to the fitted radius before the circle is judged (a lever of bench/orchard_crop_levers.py;
    # 0 in TREE_PARAMS). A size reported in an orchard scene adds grader.orchard_scene.EDGE_PX to the
    # diameter after the circle has been judged: the whole pixels a fruit covers, not a refit.
    radius_bias_px: float = 0.0
    segmenter: str = "logreg"  # "logreg" (pixel classifier) or "grabcut" (GMM colour model + graph cut)
    grabcut_iters: int = 5
    grabcut_space: str = "rgb"  # colour space the grabcut GMMs model: "rgb" or "lab"
    grabcut_l_weight: float = 1.0  # lab: lightness is scaled by this (shading on the fruit is mostly L)
    pr_fg_frac: float = 0.5  # grabcut: "probably fruit" inside this radius (× side), "probably not" beyond
    mask_blur_px: int = 3  # grabcut: blur of the binary mask before the 0.5 crossing
    refine_band: float = 0.15  # edge refinement: search ± this × the coarse radius around it; 0 = off
    refine_sigma_px: float = 1.0  # Gaussian blur (sigma, px) of the Lab image before differentiating it
    refine_prior: float = 0.5  # weight on the distance from the coarse circle: Gaussian, sigma = this × band
    refine_tol_px: float = 1.5  # inlier tolerance of the circle through the refined edge points


#: the knobs of :func:`measure_by_probability` for fruit on the tree, chosen on the first half of the
#: ecopom dates only (bench/size_accuracy.py): GrabCut in Lab, then the refined edge circle
TREE_PARAMS = ProbParams(
    segmenter="grabcut",
    grabcut_space="lab",
    inlier_tol_px=5.0,
    pos_frac=0.38,
    refine_band=0.15,
    refine_sigma_px=1.0,
    refine_prior=0.5,
    refine_tol_px=1.5,
)


def _ray_edges(prob: np.ndarray, cx: float, cy: float, r0: float, r1: float, params: ProbParams) -> tuple[np.ndarray, np.ndarray]:
    """Per ray from (cx, cy): sub-pixel radius where P(fruit) falls through 0.5 and stays below it
    for ``gap_px``; NaN where the ray never leaves the fruit. Returns (angles, radii)."""
    step = 0.25
    rho = np.arange(0.0, r1 + params.gap_px + step, step, dtype=np.float32)
    th = np.linspace(0, 2 * np.pi, params.n_angles, endpoint=False).astype(np.float32)
    mx = (cx + np.cos(th)[:, None] * rho[None, :]).astype(np.float32)
    my = (cy + np.sin(th)[:, None] * rho[None, :]).astype(np.float32)
    prof = cv2.remap(prob.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = prof < 0.5
    k = max(1, int(round(params.gap_px / step)))
    # run[i, j]: the ray is outside for the k samples starting at j
    c = np.cumsum(np.pad(out.astype(np.int32), ((0, 0), (1, 0))), axis=1)
    run = (c[:, k:] - c[:, :-k]) == k
    radii = np.full(len(th), np.nan)
    j0 = int(np.ceil(r0 / step))
    jmax = int(r1 / step)
    for i in range(len(th)):
        js = np.flatnonzero(run[i, j0 : jmax + 1])
        if len(js) == 0:
            continue
        j = j0 + int(js[0])
        if j == 0:
            continue
        a, b = prof[i, j - 1], prof[i, j]  # a >= 0.5 > b
        t = (a - 0.5) / (a - b) if a > b else 0.0
        radii[i] = (j - 1 + t) * step
    return th, radii


def _refine_edges(crop_rgb: np.ndarray, coarse: Circle, params: ProbParams) -> tuple[Circle, np.ndarray, np.ndarray] | None:
    """Move each ray's edge from the segmentation's boundary onto the image's own colour edge.

    Along ``n_angles`` rays from the coarse circle's centre, the Lab image (blurred with
    ``refine_sigma_px``) is sampled every 0.25 px within ± ``refine_band`` × r of the coarse radius
    r; the edge on each ray is the strongest change of colour (norm of the radial derivative of
    Lab), weighted by a Gaussian of the distance from the coarse circle (sigma ``refine_prior`` ×
    band × r) and located to sub-pixel by a parabola through its neighbours. A RANSAC circle through
    those points with the tight ``refine_tol_px`` tolerance keeps the arcs where fruit meets
    background and drops the rays that met a leaf, a highlight or a shaded patch instead.
    Returns (circle, edge points (n_angles, 2), inlier mask), all in crop coordinates, or None."""
    lab = cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
    if params.refine_sigma_px > 0:
        lab = cv2.GaussianBlur(lab, (0, 0), params.refine_sigma_px)
    cx, cy, r = coarse.cx_px, coarse.cy_px, coarse.radius_px
    step = 0.25
    lo, hi = r * (1 - params.refine_band), r * (1 + params.refine_band)
    rho = np.arange(lo, hi + step, step, dtype=np.float32)
    if len(rho) < 3:
        return None
    th = np.linspace(0, 2 * np.pi, params.n_angles, endpoint=False).astype(np.float32)
    mx = (cx + np.cos(th)[:, None] * rho[None, :]).astype(np.float32)
    my = (cy + np.sin(th)[:, None] * rho[None, :]).astype(np.float32)
    prof = np.dstack([cv2.remap(lab[..., k], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for k in range(3)])
    grad = np.sqrt((np.gradient(prof, step, axis=1) ** 2).sum(axis=2))  # (rays, samples)
    sigma = max(params.refine_prior * params.refine_band * r, step)
    score = grad * np.exp(-0.5 * ((rho - r) / sigma) ** 2)[None, :]
    rows = np.arange(len(th))
    j = np.clip(score.argmax(axis=1), 1, len(rho) - 2)
    a, b, c = score[rows, j - 1], score[rows, j], score[rows, j + 1]
    den = a - 2 * b + c
    curved = np.abs(den) > 1e-9
    off = np.clip(np.where(curved, 0.5 * (a - c) / np.where(curved, den, 1.0), 0.0), -1.0, 1.0)
    radii = rho[j] + off * step
    pts = np.c_[cx + radii * np.cos(th), cy + radii * np.sin(th)].astype(np.float64)
    fine = ray_circle(pts, (cx, cy), params.refine_tol_px, lo, hi)
    if fine is None:
        return None
    inl = np.abs(np.hypot(pts[:, 0] - fine.cx_px, pts[:, 1] - fine.cy_px) - fine.radius_px) < params.refine_tol_px
    return fine, pts, inl


def measure_by_probability(
    image_rgb: np.ndarray,
    box_xyxy: Sequence[float],
    other_boxes: Sequence[Sequence[float]] = (),
    params: ProbParams | None = None,
    focal_px: float | None = None,
    principal_xy: tuple[float, float] | None = None,
) -> WindowMeasurement:
    """Diameter in pixels of the round fruit (or ball) at the centre of ``box_xyxy``, from a colour
    model trained on this very image and the image's own edges.

    1. *Segmentation.* Positives are the pixels of a disc at the box centre (``pos_frac`` × side:
       certainly fruit), negatives those of an annulus well outside the box (``neg_inner`` …
       ``neg_outer`` × side), minus the inner parts of ``other_boxes`` (other fruit). GrabCut
       (``segmenter="grabcut"``) or a quadratic logistic regression on Lab, HSV saturation/value
       and local L texture (``"logreg"``) gives the fruit region around the box.
    2. *Coarse circle.* Rays from the centre find where the region ends (sub-pixel) and a RANSAC
       circle through those points (tolerance ``inlier_tol_px``), re-centred a few times, locates
       the fruit roughly; a region that leaked into a leaf or lost a shaded rim moves it by a few
       pixels.
    3. *Refined circle* (``refine_band`` > 0, :func:`_refine_edges`): on each ray the strongest
       colour edge of the image near the coarse circle, and a tight RANSAC circle through those
       points. Falls back to the coarse circle when no refined circle is found.
    4. *Perspective* (``focal_px`` given): the inlier edge points are un-stretched radially
       (:func:`undo_perspective_px`, about ``principal_xy``, default the image centre) and a
       circle is fitted to them again, so ``diameter_px`` is the width across the radial
       direction, what the fruit would measure at the principal point at the same depth.

    ``diameter_px = 2·(r + radius_bias_px)``. The box places the positive disc and the negative
    annulus and bounds the radius search (``min_r_frac`` … ``max_r_frac`` × side); the diameter
    comes from the pixels. ``circle`` is the fitted circle in the image (before the perspective
    correction), ``edge_px`` the edge points it was fitted to. Declined as ``no_outline`` (no
    circle) or ``no_clean_outline`` (fewer than ``min_coverage`` of the rays agree with it)."""
    params = params or ProbParams()
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}")
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    side = max((x1 - x0 + y1 - y0) / 2, 4.0)
    bcx, bcy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(math.ceil(side * params.neg_outer)) + 4
    ix, iy = int(round(bcx)), int(round(bcy))
    H, W = image_rgb.shape[:2]
    pad = half + 2
    padded = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    crop = padded[iy - half + pad : iy + half + pad + 1, ix - half + pad : ix + half + pad + 1]
    ox, oy = ix - half, iy - half
    n = crop.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    valid = (xx + ox >= 0) & (xx + ox < W) & (yy + oy >= 0) & (yy + oy < H)
    feats = pixel_features(crop, params.blur_px, params.texture_px) if params.segmenter != "grabcut" else None
    d = np.hypot(xx - (bcx - ox), yy - (bcy - oy))
    pos = (d <= max(2.0, params.pos_frac * side)) & valid
    neg = (d >= params.neg_inner * side) & (d <= params.neg_outer * side) & valid
    for ob in other_boxes:
        qx0, qy0, qx1, qy1 = (float(v) for v in ob)
        if (qx0, qy0, qx1, qy1) == (x0, y0, x1, y1):
            continue
        qs = max((qx1 - qx0 + qy1 - qy0) / 2, 1.0)
        neg &= np.hypot(xx - ((qx0 + qx1) / 2 - ox), yy - ((qy0 + qy1) / 2 - oy)) > params.other_frac * qs
    if pos.sum() < 5 or neg.sum() < 20:
        return WindowMeasurement(None, "no_fruit", None, None, 0.0)
    if params.segmenter == "grabcut":
        gm = np.full((n, n), cv2.GC_PR_BGD, np.uint8)
        gm[d <= params.pr_fg_frac * side] = cv2.GC_PR_FGD
        gm[neg] = cv2.GC_BGD
        gm[pos] = cv2.GC_FGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        sm = cv2.GaussianBlur(crop, (params.blur_px, params.blur_px), 0) if params.blur_px > 1 else crop
        if params.grabcut_space == "rgb":
            gi = np.ascontiguousarray(sm[..., ::-1])
        else:
            gi = cv2.cvtColor(np.ascontiguousarray(sm), cv2.COLOR_RGB2LAB)
            gi[..., 0] = (gi[..., 0].astype(np.float32) * params.grabcut_l_weight).astype(np.uint8)
        cv2.setRNGSeed(0)  # grabCut's k-means init draws from OpenCV's global RNG: same input, same answer
        cv2.grabCut(gi, gm, None, bgd, fgd, params.grabcut_iters, cv2.GC_INIT_WITH_MASK)
        prob = fill_component((gm == cv2.GC_FGD) | (gm == cv2.GC_PR_FGD), pos).astype(np.float32)
        if params.mask_blur_px > 1:
            prob = cv2.GaussianBlur(prob, (params.mask_blur_px, params.mask_blur_px), 0)
    else:
        f = feats.reshape(-1, feats.shape[2])
        predict = train_pixel_classifier(f[pos.ravel()], f[neg.ravel()], params.l2, params.newton_steps)
        prob = predict(f).reshape(n, n)

    cx, cy = bcx - ox, bcy - oy
    r0, r1 = params.min_r_frac * side, params.max_r_frac * side
    tol = max(params.inlier_tol_px, params.inlier_tol_frac * side)
    circle = None
    pts = np.zeros((0, 2))
    inl = np.zeros(0, bool)
    for _ in range(max(1, params.centre_iters)):
        th, radii = _ray_edges(prob, cx, cy, r0, r1, params)
        ok = np.isfinite(radii)
        if ok.sum() < 8:
            break
        ray_pts = np.c_[cx + radii[ok] * np.cos(th[ok]), cy + radii[ok] * np.sin(th[ok])]
        c = ray_circle(ray_pts, (cx, cy), tol, r0, r1)
        if c is None:
            break
        circle, pts = c, ray_pts
        inl = np.abs(np.hypot(pts[:, 0] - c.cx_px, pts[:, 1] - c.cy_px) - c.radius_px) < tol
        if math.hypot(c.cx_px - (bcx - ox), c.cy_px - (bcy - oy)) > 0.5 * side:
            break
        cx, cy = c.cx_px, c.cy_px
    contour = (prob >= 0.5).astype(np.uint8)
    cs, _ = cv2.findContours(contour, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour_px = None
    if cs:
        cc = min(cs, key=lambda q: cv2.pointPolygonTest(q, (float(cx), float(cy)), True) * -1)
        contour_px = (cc.reshape(-1, 2) + np.array([ox, oy])).astype(np.int32)
    if circle is None:
        return WindowMeasurement(None, "no_outline", None, contour_px, 0.0)
    fit_tol = tol
    if params.refine_band > 0:
        refined = _refine_edges(crop, circle, params)
        if refined is not None:
            circle, pts, inl = refined
            fit_tol = params.refine_tol_px
    coverage = float(inl.sum()) / params.n_angles
    edges = pts[inl] + np.array([ox, oy])
    full = Circle(circle.cx_px + ox, circle.cy_px + oy, circle.radius_px + params.radius_bias_px)
    r = circle.radius_px
    if focal_px is not None and focal_px > 0 and len(edges) >= 3:
        centre = (full.cx_px, full.cy_px)
        q = undo_perspective_px(pts + np.array([ox, oy]), centre, focal_px, principal_xy or ((W - 1) / 2, (H - 1) / 2))
        keep = inl
        for _ in range(2):
            qx, qy, r = fit_circle_px(q[keep])
            nxt = np.abs(np.hypot(q[:, 0] - qx, q[:, 1] - qy) - r) < fit_tol
            if nxt.sum() < 3:
                break
            keep = nxt
    r += params.radius_bias_px
    if coverage < params.min_coverage:
        return WindowMeasurement(None, "no_clean_outline", full, contour_px, coverage, edges)
    return WindowMeasurement(2 * r, "ok", full, contour_px, coverage, edges)
