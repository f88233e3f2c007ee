"""Find fruit in an image and measure them as calipers would.

Definitions (see docs/measurement.md):

* ``diameter_px`` / ``diameter_mm`` — the largest caliper width of the fruit's outline
  (maximum Feret diameter of the convex hull), i.e. what a caliper closed across the fruit's
  equator reads for a fruit seen along its stem axis. The width between the outermost pixel
  centres is corrected for the sub-pixel gap to the true edge (see ``_edge_gap_px``).
* ``minor_diameter_px`` — the caliper width perpendicular to that largest width.
* ``area_px`` / ``area_mm2`` — projected area of the fruit mask.
* ``roundness`` — 4·π·area / perimeter² of the convex hull (1.0 for a disc).
* ``blemish_area_cm2`` — projected skin area inside the fruit mask whose colour departs from the
  fruit's own skin colour (darker, browner), in cm² through ``mm_per_px``. ``largest_blemish_cm2`` is
  the largest connected such spot.

All functions take an RGB ``uint8`` array (H, W, 3) and never read files or settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .colour_bands import ColourBand, colour_mask
from .crop_fill import CROP_FILL_RGB, fruit_pixels
from .errors import InvalidMeasurementInput
from .records import BBox, Flag, FruitMeasurement


@dataclass(frozen=True)
class SegmentationParams:
    """Knobs of the fruit finder. Defaults suit a belt or cup photographed from above."""

    work_size_px: int = 512  # images are segmented at this longest side, then mapped back
    border_frac: float = 0.04  # strip of the frame used to learn the background colours
    background_clusters: int = 3  # colours the background may have (belt, cup, shadow)
    min_background_share: float = 0.15  # a border colour rarer than this is fruit poking in, not background
    min_contrast: float = 14.0  # Lab distance from the background below which nothing is fruit
    min_area_frac: float = 0.004  # blobs smaller than this share of the frame are noise
    split_touching: bool = True  # separate touching fruit with distance transform + watershed
    # A blob that differs from the background in lightness only (median a*b* distance below
    # min_colour_contrast) is a shadow, a stain, a hole in the belt, or a patch of a fruit that fills
    # the whole frame: fruit differ from the belt in colour. Such a blob is kept only when it is
    # large and strongly contrasted (a dark fruit or a reference disc on a light belt). Raising the
    # colour contrast drops dull fruit (grey mould, near-black skins); lowering it lets stains and
    # shadows of an empty belt through as fruit.
    min_colour_contrast: float = 10.0
    lightness_only_min_area_frac: float = 0.03
    lightness_only_min_contrast: float = 28.0
    # A blob cut by the frame edge whose visible area is below this share of the disc fitted to its
    # outline is a fruit mostly outside the frame (a neighbour's sliver): nothing to size or grade.
    # 0 keeps every piece; raising it drops fruit that are half in view.
    min_visible_frac: float = 0.25
    # On a plain backdrop (the border strip's local lightness texture, the 0.9 quantile of the
    # standard deviation of L* over 5x5 pixels, at most flat_background_max_std) white or grey mould
    # can match the backdrop's colour, so colour alone cuts it out of the fruit; there, pixels
    # textured more than texture_over_background times the backdrop (and at least min_texture_std)
    # count as fruit too. On a textured belt (concrete, cloth, leaves) the cue stays off by itself.
    # 0 (the default) turns it off; a commodity profile turns it on (citrus: plain_backdrop_max_texture_std).
    flat_background_max_std: float = 0.0
    min_texture_std: float = 3.0
    texture_over_background: float = 2.0


@dataclass(frozen=True)
class BlemishParams:
    """A skin pixel is blemish when its Lab distance from the fruit's median skin colour exceeds
    ``min_delta_e`` *and* it is darker by ``min_darkening_l`` (rot, bruise, scab are darker).
    Raising either misses faint spots; lowering them counts natural colour variation."""

    min_delta_e: float = 22.0
    min_darkening_l: float = 12.0
    edge_margin_frac: float = 0.04  # outermost share of the radius ignored (edge pixels mix with background)
    edge_margin_px: float = 3.0  # ...and at least this many pixels (blur and chroma subsampling spread the edge)
    rings: int = 6  # skin reference colours, by distance from the edge (equal-area rings)
    # a fruit wider than this (pixels, e.g. in a 16-MP phone photo) has its skin judged on a copy of
    # its box shrunk to this width: a blemish of a square millimetre still spans several pixels
    # there, and the work no longer grows with the camera's resolution
    work_max_side_px: int = 1024


@dataclass
class Segment:
    """One fruit-shaped region found in the image (full-resolution coordinates)."""

    bbox: BBox
    contour: np.ndarray  # (N, 2) int32
    mask: np.ndarray  # bool, bbox-sized
    cut_off: bool


def _to_lab(image_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2LAB).astype(np.float32)


def _background_colours(lab: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """The background's Lab colours, learned from the frame's border strip (k, 3)."""
    border = _border_strip(lab, params.border_frac)
    if len(border) > 3000:  # a sample of the strip learns its colours as well, for less work
        border = border[np.linspace(0, len(border) - 1, 3000).astype(int)]
    k = min(params.background_clusters, len(border))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(border.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    # a fruit reaching into the border strip must not become a "background colour": keep only
    # colours that cover a real share of the border
    share = np.bincount(labels.ravel(), minlength=k) / len(labels)
    return centres[(share >= params.min_background_share) | (share == share.max())]


def _distance_to(lab: np.ndarray, centres: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel weighted Lab distance to the nearest of ``centres`` (shading changes L more than
    a/b, so the full distance half-weights L; weight (0, 1, 1) measures colour only)."""
    channels = [lab[..., i] * weight[i] for i in range(3)]
    d2 = None
    for c in centres * weight:
        cur = (channels[0] - c[0]) ** 2
        cur += (channels[1] - c[1]) ** 2
        cur += (channels[2] - c[2]) ** 2
        d2 = cur if d2 is None else np.minimum(d2, cur, out=d2)
    return np.sqrt(d2)


def _border_strip(a: np.ndarray, frac: float) -> np.ndarray:
    """The pixels of an image's border strip (its outer ``frac`` of the shorter side, at least 2 px),
    one row per pixel: (n,) for a one-channel image, (n, c) for c channels."""
    h, w = a.shape[:2]
    b = max(2, int(round(min(h, w) * frac)))
    tail = a.shape[2:]
    return np.concatenate([a[:b].reshape(-1, *tail), a[-b:].reshape(-1, *tail), a[:, :b].reshape(-1, *tail), a[:, -b:].reshape(-1, *tail)])


def _textured_on_plain_backdrop(lightness: np.ndarray, params: SegmentationParams) -> np.ndarray | None:
    """Pixels whose local lightness texture stands out from a plain backdrop's (bool), or None when
    the backdrop is itself textured (or the cue is off): see SegmentationParams.flat_background_max_std."""
    if params.flat_background_max_std <= 0:
        return None
    mean = cv2.blur(lightness, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(lightness * lightness, (5, 5)) - mean * mean, 0.0))
    backdrop = float(np.quantile(_border_strip(std, params.border_frac), 0.9))
    if backdrop > params.flat_background_max_std:
        return None
    return std > max(params.min_texture_std, params.texture_over_background * backdrop)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


#: blobs more solid than this are one fruit; below it, touching fruit are separated
SPLIT_MAX_SOLIDITY = 0.95


def _split_touching(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """Split one blob into fruit at the peaks of its distance transform.

    Only a blob with concavities is split: touching discs have a solidity (area / hull area) of
    about 0.88-0.93, a single round or oval fruit about 0.98 or more."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea))) if contours else 0.0
    if hull_area <= 0 or mask.sum() / hull_area > SPLIT_MAX_SOLIDITY:
        return [mask]
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    if dist.max() <= 0:
        return [mask]
    # a peak must be a fruit centre: far from the edge and a local maximum over a fruit-sized window
    radius = max(3, int(dist.max() * 0.6))
    # a square window: separable, so the dilation costs O(pixels) whatever the fruit size
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    local_max = (dist >= cv2.dilate(dist, kernel) - 1e-3) & (dist > 0.55 * dist.max())
    n, peaks = cv2.connectedComponents(local_max.astype(np.uint8))
    if n <= 2:  # background label + one peak: nothing to split
        return [mask]
    # Touching round fruit meet along the radical line of their circles: give each pixel to the
    # peak with the smallest power distance |p - c|² - r² (a Laguerre diagram of the fruit discs).
    ys, xs = np.nonzero(mask)
    power = np.empty((n - 1, len(xs)), np.float32)
    for label in range(1, n):
        py, px = np.nonzero(peaks == label)
        cy, cx = py.mean(), px.mean()
        r = float(dist[py, px].max())
        power[label - 1] = (xs - cx) ** 2 + (ys - cy) ** 2 - r**2
    owner = power.argmin(axis=0)
    parts = []
    for i in range(n - 1):
        part = np.zeros(mask.shape, np.uint8)
        part[ys[owner == i], xs[owner == i]] = 1
        part = cv2.morphologyEx(part, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
        if part.sum() >= min_area:
            parts.append(part)
    return parts or [mask]


def segment_fruits(image_rgb: np.ndarray, params: SegmentationParams | None = None) -> list[Segment]:
    """Find fruit-like regions that stand out from the frame's background; left to right."""
    params = params or SegmentationParams()
    _check_image(image_rgb)
    h, w = image_rgb.shape[:2]
    scale = min(1.0, params.work_size_px / max(h, w))
    small = image_rgb if scale == 1.0 else cv2.resize(image_rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    lab = _to_lab(small)
    background = _background_colours(lab, params)
    dist = _distance_to(lab, background, np.array([0.5, 1.0, 1.0], dtype=np.float32))
    otsu_input = np.clip(dist, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(otsu_input, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = dist > max(float(otsu), params.min_contrast)
    textured = _textured_on_plain_backdrop(np.ascontiguousarray(lab[..., 0]), params)
    if textured is not None:
        mask |= textured
    k = max(3, int(round(min(small.shape[:2]) * 0.01)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)
    mask = _fill_holes(mask)

    sh, sw = mask.shape
    min_area = max(16, int(params.min_area_frac * sh * sw))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    blobs: list[np.ndarray] = []
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        blob = labels == i
        blobs.extend(_split_touching(blob, min_area) if params.split_touching else [blob])
    kept = []
    colour_only = np.array([0.0, 1.0, 1.0], dtype=np.float32)
    for blob in blobs:
        if params.min_visible_frac > 0 and _visible_fraction(blob) < params.min_visible_frac:
            continue  # mostly outside the frame
        if params.min_colour_contrast > 0:
            colour_dist = _distance_to(lab[blob][:, None, :], background, colour_only)  # the blob's pixels only
            if float(np.median(colour_dist)) < params.min_colour_contrast and not (
                blob.sum() >= params.lightness_only_min_area_frac * sh * sw
                and float(np.median(dist[blob])) >= params.lightness_only_min_contrast
            ) and not (textured is not None and float(textured[blob].mean()) >= 0.5):
                continue  # lightness only: a shadow, stain or hole, not a fruit
        kept.append(blob)
    blobs = kept

    def full_res(blob: np.ndarray) -> np.ndarray:
        # back to full resolution: upscale the blob mask, then re-threshold at the original edge
        return cv2.resize(blob.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128 if scale != 1.0 else blob

    # the edge refinement decides by colour: a touching neighbour of the same colour would pass for
    # this fruit's skin, so each fruit's refinement is kept off the pixels other blobs hold
    claims = None
    if len(blobs) > 1:
        claims = np.zeros((h, w), np.uint8)  # how many blobs hold each pixel
        for blob in blobs:
            claims += full_res(blob).view(np.uint8)
    segments = []
    for blob in blobs:
        seg = _segment_from_mask(full_res(blob), image_rgb, params, refine=True, claims=claims)
        if seg is not None:
            segments.append(seg)
    segments.sort(key=lambda s: (s.bbox[0] + s.bbox[2]) / 2)
    return segments


def _visible_fraction(blob: np.ndarray) -> float:
    """Share of a fruit that is in the frame: 1 for a blob clear of the frame edge; for one cut by
    it, its area over that of the circle fitted (least squares) to the outline inside the frame."""
    h, w = blob.shape
    if not (blob[0].any() or blob[-1].any() or blob[:, 0].any() or blob[:, -1].any()):
        return 1.0
    contours, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0
    pts = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    pts = pts[(pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 0] < w - 1) & (pts[:, 1] < h - 1)]
    if len(pts) < 8:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    (cx, cy, c), *_ = np.linalg.lstsq(np.c_[2 * x, 2 * y, np.ones_like(x)], x * x + y * y, rcond=None)
    r2 = c + cx * cx + cy * cy
    if not r2 > 0:
        return 0.0
    return float(blob.sum() / (math.pi * r2))


def _segment_from_mask(full: np.ndarray, image_rgb: np.ndarray, params: SegmentationParams, refine: bool,
                       claims: np.ndarray | None = None) -> Segment | None:
    """The segment of one blob's full-resolution mask; ``claims``: how many blobs hold each pixel
    (None for a lone blob), so that the edge refinement leaves touching neighbours' pixels alone."""
    bx, by, bw, bh = cv2.boundingRect(full.view(np.uint8))
    if bw == 0:
        return None
    h, w = full.shape
    pad = 4
    x0, x1 = max(0, bx - pad), min(w, bx + bw + pad)
    y0, y1 = max(0, by - pad), min(h, by + bh + pad)
    local = full[y0:y1, x0:x1]
    if refine:
        others = None if claims is None else claims[y0:y1, x0:x1] > local.view(np.uint8)
        local = _refine_edge(image_rgb[y0:y1, x0:x1], local, others)
    contours, _ = cv2.findContours(local.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    local = np.zeros(local.shape, np.uint8)
    cv2.drawContours(local, [contour], -1, 1, thickness=cv2.FILLED)
    lx, ly, lw, lh = cv2.boundingRect(local)
    bx0, by0, bx1, by1 = x0 + lx, y0 + ly, x0 + lx + lw, y0 + ly + lh
    mask = local[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0].astype(bool)
    contour = contour.reshape(-1, 2) + np.array([x0, y0])
    cut_off = bool(bx0 <= 0 or by0 <= 0 or bx1 >= w or by1 >= h)
    return Segment(bbox=(int(bx0), int(by0), int(bx1), int(by1)), contour=contour.astype(np.int32), mask=mask, cut_off=cut_off)


def _refine_edge(crop_rgb: np.ndarray, coarse: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Re-decide the pixels near the coarse edge at full resolution: each is assigned to the
    nearer of the fruit's and the background's local mean colours (a one-step 2-means).
    ``others``: the pixels other fruit hold (touching neighbours, split apart at the working
    resolution): never given to this fruit, and not taken for background either."""
    ring = cv2.morphologyEx(coarse.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((7, 7), np.uint8)).astype(bool)
    if others is not None:
        others = others & ~coarse
        ring &= ~others
    if not ring.any():
        return coarse
    lab = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2LAB)
    inner = cv2.erode(coarse.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outer = ~cv2.dilate(coarse.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    if others is not None:
        outer &= ~others
    if inner.sum() < 10 or outer.sum() < 10:
        return coarse
    fg = _masked_channel_medians(lab, inner)
    bg = _masked_channel_medians(lab, outer)
    edge = lab[ring].astype(np.float32)  # only the ring is re-decided: distances there only
    d_fg = ((edge - fg) ** 2).sum(axis=1)
    d_bg = ((edge - bg) ** 2).sum(axis=1)
    refined = coarse.copy()
    refined[ring] = d_fg < d_bg
    refined = cv2.morphologyEx(refined.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    return _fill_holes(refined)


def _hist_quantiles(values: np.ndarray, groups: np.ndarray, n_groups: int, q: float) -> np.ndarray:
    """``np.quantile(values[groups == g], q)`` (linear interpolation) for every group g at once, for
    uint8 values: counted in one histogram instead of sorted, so O(pixels). NaN for an empty group."""
    hist = np.bincount(groups.astype(np.intp) * 256 + values, minlength=n_groups * 256).reshape(n_groups, 256)
    cum = hist.cumsum(axis=1)
    out = np.full(n_groups, np.nan)
    for g in range(n_groups):
        n = int(cum[g, -1])
        if n == 0:
            continue
        pos = q * (n - 1)
        lo = math.floor(pos)
        # the k-th smallest value (0-based) is the first bin whose cumulative count exceeds k
        v_lo, v_hi = np.searchsorted(cum[g], [lo, min(lo + 1, n - 1)], side="right")
        out[g] = v_lo + (pos - lo) * (v_hi - v_lo)
    return out


def _masked_channel_medians(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel median of a 3-channel uint8 image's pixels under ``mask``, as
    ``np.median(image[mask], axis=0)``: OpenCV's masked histograms, no copy of the pixels."""
    m = mask.view(np.uint8) if mask.dtype == bool else mask
    n = int(cv2.countNonZero(m))
    out = np.full(3, np.nan, np.float32)
    if n == 0:
        return out
    pos = 0.5 * (n - 1)
    lo = math.floor(pos)
    for c in range(3):
        cum = cv2.calcHist([image_u8], [c], m, [256], [0, 256]).ravel().cumsum()
        v_lo, v_hi = np.searchsorted(cum, [lo, min(lo + 1, n - 1)], side="right")
        out[c] = v_lo + (pos - lo) * (v_hi - v_lo)
    return out


def caliper_widths_px(contour: np.ndarray) -> tuple[float, float, float]:
    """Largest caliper width of an outline, the width perpendicular to it, and the hull perimeter.

    Widths are true extents: the centre-to-centre width plus the digitisation gap (_edge_gap_px)."""
    hull = cv2.convexHull(contour.reshape(-1, 1, 2).astype(np.int32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 2:
        return 1.0, 1.0, 4.0
    diff = hull[:, None, :] - hull[None, :, :]
    d2 = (diff**2).sum(axis=2)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    axis = hull[j] - hull[i]
    length = float(np.hypot(*axis))
    if length == 0:
        return 1.0, 1.0, 4.0
    # largest width: projection of the hull onto the direction that maximises it, pixel-extent corrected
    # (the max Feret direction is searched finely around the farthest pair's direction)
    angles = math.atan2(axis[1], axis[0]) + np.linspace(-0.1, 0.1, 21)
    dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (21, 2)
    proj = hull @ dirs.T
    widths = proj.max(axis=0) - proj.min(axis=0)
    k = int(np.argmax(widths))
    best, best_u = float(widths[k]), dirs[k]
    perp = np.array([-best_u[1], best_u[0]])
    p = hull @ perp
    minor = p.max() - p.min()
    best, minor = best + _edge_gap_px(best), minor + _edge_gap_px(minor)
    perimeter = float(cv2.arcLength(hull.astype(np.float32).reshape(-1, 1, 2), True))
    return float(best), float(minor), perimeter


def caliper_size_px(contour: np.ndarray, size_axis: str = "major") -> tuple[float, float, float]:
    """(diameter, the other caliper width, hull perimeter) of an outline, in pixels: the diameter
    is the largest caliper width ("major") or the one across it ("minor", lemons)."""
    major_px, minor_px, perimeter_px = caliper_widths_px(contour)
    return (minor_px, major_px, perimeter_px) if size_axis == "minor" else (major_px, minor_px, perimeter_px)


def _edge_gap_px(width_px: float) -> float:
    """Correction from a width between outline pixel *centres* to the fruit's true width.

    The outermost pixel centre of a digitised convex outline lies a small gap ε inside the true
    edge: the cap of the disc beyond it holds on average one lattice point, so
    (4/3)·√(2R)·ε^(3/2) = 1, i.e. ε = (3 / (4·√(2R)))^(2/3) (0.16 px at R = 70 px). A width
    spans two such gaps."""
    r = max(width_px / 2.0, 1.0)
    return 2.0 * (3.0 / (4.0 * math.sqrt(2.0 * r))) ** (2.0 / 3.0)


def measure_segment(
    image_rgb: np.ndarray,
    seg: Segment,
    mm_per_px: float | None,
    blemish: BlemishParams | None = None,
    colour_bands: tuple[ColourBand, ...] = (),
    size_axis: str = "major",
) -> FruitMeasurement:
    """Size, shape, colour coverage and blemish area of one segmented fruit.

    ``size_axis`` says which caliper width is the fruit's equatorial diameter: the largest
    ("major": apples, oranges seen from the stem) or the one across the long axis ("minor": lemons)."""
    if mm_per_px is not None and (not math.isfinite(mm_per_px) or mm_per_px <= 0):  # fail before the work
        raise InvalidMeasurementInput(f"mm_per_px must be a positive number, got {mm_per_px}", field="mm_per_px")
    diameter_px, other_px, perimeter_px = caliper_size_px(seg.contour, size_axis)
    area_px = float(seg.mask.sum())
    roundness = float(min(1.0, 4 * math.pi * area_px / max(perimeter_px, 1.0) ** 2))
    blemish = blemish or BlemishParams()
    skin_rgb, skin_seg = _skin_view(image_rgb, seg, blemish.work_max_side_px)
    in_band = None
    if colour_bands:  # one colour-band mask of the fruit's box, for the blemish test and the coverage
        x0, y0, x1, y1 = skin_seg.bbox
        in_band = colour_mask(skin_rgb[y0:y1, x0:x1], colour_bands)
    spots = blemish_mask(skin_rgb, skin_seg, blemish, colour_bands, in_band)
    if skin_seg is not seg:  # back to the fruit's own box, pixel for pixel
        spots = cv2.resize(spots.view(np.uint8), seg.mask.shape[::-1], interpolation=cv2.INTER_NEAREST).view(bool) & seg.mask
    blemish_px = float(cv2.countNonZero(spots.view(np.uint8)))  # areas in cm² and the largest spot: with_scale
    coverage = colour_coverage(skin_rgb, skin_seg, colour_bands, in_band) if colour_bands else None

    unscaled = FruitMeasurement(
        bbox=seg.bbox,
        contour_px=seg.contour,
        mask=seg.mask,
        diameter_px=diameter_px,
        minor_diameter_px=other_px,
        area_px=area_px,
        roundness=roundness,
        mm_per_px=None,
        diameter_mm=None,
        minor_diameter_mm=None,
        area_mm2=None,
        blemish_area_cm2=None,
        largest_blemish_cm2=None,
        blemish_fraction=blemish_px / max(area_px, 1.0),
        colour_coverage=coverage,
        blemish_mask=spots,
        cut_off=seg.cut_off,
    )
    return with_scale(unscaled, mm_per_px)


def _skin_view(image_rgb: np.ndarray, seg: Segment, max_side_px: int) -> tuple[np.ndarray, Segment]:
    """The image and segment on which a fruit's skin is judged: as they are, or, for a fruit wider
    than ``max_side_px``, its box alone shrunk to that width (area-averaged colours, the mask by
    majority) with the segment in the shrunk box's coordinates."""
    x0, y0, x1, y1 = seg.bbox
    w, h = x1 - x0, y1 - y0
    if max(w, h) <= max_side_px:
        return image_rgb, seg
    f = max_side_px / max(w, h)
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    region = cv2.resize(np.ascontiguousarray(image_rgb[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(seg.mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128
    contour = np.round((seg.contour - np.array([x0, y0])) * f).astype(np.int32)
    return region, Segment((0, 0, size[0], size[1]), contour, mask, seg.cut_off)


def with_scale(m: FruitMeasurement, mm_per_px: float | None) -> FruitMeasurement:
    """The measurement in millimetres for a scale (pixel measures are kept); the one place where
    pixels become mm, cm² and where the `cut_off` / `uncalibrated` flags are decided."""
    if mm_per_px is not None and (not math.isfinite(mm_per_px) or mm_per_px <= 0):
        raise InvalidMeasurementInput(f"mm_per_px must be a positive number, got {mm_per_px}", field="mm_per_px")
    flags: list[Flag] = [f for f in m.quality_flags if f.code not in ("cut_off", "uncalibrated")]
    if m.cut_off:
        flags.append(Flag("cut_off", "fruit is cut off by the image border: not sized", 30))
    if mm_per_px is None:
        flags.append(Flag("uncalibrated", "no mm_per_px for this camera or request: sizes unknown", 30))
    sized = mm_per_px is not None and not m.cut_off
    blemish_px, largest_px = _spot_areas(m.blemish_mask) if m.blemish_mask is not None else (0.0, 0.0)
    px2_to_cm2 = (mm_per_px**2) / 100.0 if mm_per_px else None
    return replace(
        m,
        mm_per_px=mm_per_px,
        diameter_mm=m.diameter_px * mm_per_px if sized else None,
        minor_diameter_mm=m.minor_diameter_px * mm_per_px if sized else None,
        area_mm2=m.area_px * mm_per_px**2 if sized else None,
        blemish_area_cm2=blemish_px * px2_to_cm2 if px2_to_cm2 is not None else None,
        largest_blemish_cm2=largest_px * px2_to_cm2 if px2_to_cm2 is not None else None,
        quality_flags=flags,
    )


def _distance_to_edge(mask: np.ndarray, size: int) -> np.ndarray:
    """Each mask pixel's distance to the nearest pixel outside the fruit. The mask is bbox-sized,
    so the fruit touches the array's border; padding makes the border count as outside (OpenCV's
    distance transform does not see beyond the array)."""
    padded = cv2.copyMakeBorder(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, size)[1:-1, 1:-1]


def _skin_departure(image_rgb: np.ndarray, seg: "Segment | FruitMeasurement", params: BlemishParams) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(skin mask, Lab distance from the reference skin colour, darkening in L*) over the fruit's
    bbox, both 0 off the skin; None when too little skin is visible to judge."""
    x0, y0, x1, y1 = seg.bbox
    mask = seg.mask
    dist = _distance_to_edge(mask, 5)
    dmax = max(float(dist.max()), 1.0)
    skin = mask & (dist > max(params.edge_margin_frac * dmax, params.edge_margin_px))
    idx = np.flatnonzero(skin)
    if len(idx) < 20:
        return None
    lab = cv2.cvtColor(np.ascontiguousarray(image_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2LAB).reshape(-1, 3)[idx]  # uint8, skin only
    # rings of equal skin area (quantiles of the distance from the edge), so a spot in the middle
    # of the fruit never fills the small central ring and becomes its own reference
    d = dist.ravel()[idx]
    edges = np.quantile(d, np.linspace(0, 1, params.rings + 1)[1:-1])
    rings = np.searchsorted(edges, d, side="right")
    # each ring's reference is the median of its brighter 60 %: blemishes are darker, so one that
    # covers up to 40 % of a ring does not shift its reference (medians and quantiles of uint8 Lab
    # from histograms: exact, and linear in the number of pixels)
    l_cut = _hist_quantiles(lab[:, 0], rings, params.rings, 0.4)
    bright = lab[:, 0] >= l_cut[rings]
    group = rings[bright][:, None] * 3 + np.arange(3)  # (ring, channel) pairs: one histogram pass
    ref_table = _hist_quantiles(lab[bright].ravel(), group.ravel(), params.rings * 3, 0.5).reshape(params.rings, 3)
    ref = ref_table[rings].astype(np.float32)
    lab_f = lab.astype(np.float32)
    delta_e = np.zeros(mask.shape, np.float32)
    darkening = np.zeros(mask.shape, np.float32)
    delta_e.ravel()[idx] = np.sqrt(((lab_f - ref) ** 2).sum(axis=1))
    darkening.ravel()[idx] = ref[:, 0] - lab_f[:, 0]
    return skin, delta_e, darkening


def skin_anomaly_map(image_rgb: np.ndarray, seg: "Segment | FruitMeasurement", params: BlemishParams | None = None) -> np.ndarray:
    """Where the skin departs from its own reference colour, 0..1 (float32, bbox-sized): the
    colour departure ΔE scaled so that the blemish threshold maps to 0.5, counted only where the
    skin is darker than its reference (as blemishes are). The inspectors' heat map."""
    params = params or BlemishParams()
    got = _skin_departure(image_rgb, seg, params)
    if got is None:
        return np.zeros(seg.mask.shape, np.float32)
    skin, delta_e, darkening = got
    weight = np.clip(darkening / max(params.min_darkening_l, 1e-6), 0.0, 1.0)
    heat = np.clip(delta_e / (2.0 * params.min_delta_e), 0.0, 1.0) * weight
    return np.where(skin, heat, 0.0).astype(np.float32)


def blemish_mask(image_rgb: np.ndarray, seg: Segment, params: BlemishParams, healthy_bands: tuple[ColourBand, ...] = (),
                 in_band: np.ndarray | None = None) -> np.ndarray:
    """Skin pixels that look blemished (bool, bbox-sized like ``seg.mask``).

    Pixels in the commodity's target colour (``healthy_bands``, e.g. an apple's red blush) are
    skin, never blemish, however much darker than the ground colour they are.

    Each skin pixel is compared with the median colour of the skin at the same relative distance
    from the fruit's edge, so the darker rim of a lit sphere is not taken for a blemish."""
    x0, y0, x1, y1 = seg.bbox
    got = _skin_departure(image_rgb, seg, params)
    if got is None:
        return np.zeros(seg.mask.shape, bool)
    skin, delta_e, darkening = got
    darker = darkening > params.min_darkening_l
    spots = skin & (delta_e > params.min_delta_e) & darker
    if healthy_bands:
        if in_band is None:
            in_band = colour_mask(image_rgb[y0:y1, x0:x1], healthy_bands)
        cores = spots & ~in_band
        # thin lines of off-colour (the boundary between two healthy colours) are not spots
        cores = cv2.morphologyEx(cores.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
        # a spot's own rim blends into the skin colour (anti-aliasing, JPEG chroma): keep candidate
        # pixels touching a spot's core, never a whole region of healthy colour
        near = cv2.dilate(cores.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        spots = cores | (spots & near)
    spots = spots.astype(np.uint8)
    return cv2.morphologyEx(spots, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)


def _spot_areas(spots: np.ndarray) -> tuple[float, float]:
    """(total, largest connected spot) in pixels."""
    total = float(spots.sum())
    if total == 0:
        return 0.0, 0.0
    n, _, stats, _ = cv2.connectedComponentsWithStats(spots.astype(np.uint8), connectivity=8)
    return total, float(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0.0


def colour_coverage(image_rgb: np.ndarray, seg: Segment, bands: tuple[ColourBand, ...], in_band: np.ndarray | None = None) -> float:
    """Share (0..1) of the fruit's visible skin inside the commodity's target colour bands.
    The outermost rim (edge pixels mixed with background) is left out. ``in_band``: the bands'
    mask of the fruit's box when the caller has it already."""
    x0, y0, x1, y1 = seg.bbox
    dist = _distance_to_edge(seg.mask, 3)
    skin = seg.mask & (dist > 0.04 * max(float(dist.max()), 1.0))
    if not skin.any():
        return 0.0
    if in_band is None:
        in_band = colour_mask(image_rgb[y0:y1, x0:x1], bands)
    return float((in_band & skin).sum() / skin.sum())


def measure_image(
    image_rgb: np.ndarray,
    mm_per_px: float | None,
    params: SegmentationParams | None = None,
    blemish: BlemishParams | None = None,
    colour_bands: tuple[ColourBand, ...] = (),
    size_axis: str = "major",
) -> list[FruitMeasurement]:
    """Every fruit in the frame, measured, left to right."""
    return [measure_segment(image_rgb, s, mm_per_px, blemish, colour_bands, size_axis) for s in segment_fruits(image_rgb, params)]


#: up to this growth (pixels; crops up to ~1100 px across, every training photo's) the fruit mask is
#: grown with OpenCV's elliptic kernel, whose cost grows with the kernel's area; beyond it with a
#: distance transform (the same disc, up to single boundary pixels)
_DISC_KERNEL_MAX_PX = 16


def crop_for_model(
    image_rgb: np.ndarray,
    bbox: BBox,
    margin_frac: float = 0.08,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A square crop centred on the fruit with a margin, padded by edge replication at borders.

    With the fruit's ``mask`` (bbox-sized, as in :class:`FruitMeasurement`), everything outside the
    slightly grown fruit is painted ``CROP_FILL_RGB``: the model judges the fruit, never the belt,
    the hand holding it or the photo studio behind it. Training uses this same function, so the
    model sees in training what it sees on the line."""
    h, w = image_rgb.shape[:2]
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0)
    side = int(round(side * (1 + 2 * margin_frac)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    sx0, sy0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    sx1, sy1 = sx0 + side, sy0 + side
    pad = max(0, -sx0, -sy0, sx1 - w, sy1 - h)
    if pad:
        image_rgb = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = image_rgb[sy0 + pad : sy1 + pad, sx0 + pad : sx1 + pad]
    if mask is None:
        return crop
    keep = np.zeros((side, side), np.uint8)
    ox, oy = x0 - sx0, y0 - sy0
    mh, mw = mask.shape
    keep[max(0, oy) : oy + mh, max(0, ox) : ox + mw] = mask[max(0, -oy) : side - oy, max(0, -ox) : side - ox]
    grow = max(1, int(round(side * 0.015)))
    if grow <= _DISC_KERNEL_MAX_PX:
        keep = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    else:  # a phone photo's fruit: the same disc from a distance transform, linear in the pixels
        keep = (cv2.distanceTransform(1 - keep, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= grow + 0.5).view(np.uint8)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = CROP_FILL_RGB
    cv2.copyTo(crop, keep, out)  # the fruit's pixels over the fill
    return out


def fruit_body(crop: np.ndarray, factor: float) -> np.ndarray:
    """A model crop with what sticks out of the fruit's round body painted ``CROP_FILL_RGB`` too.

    The segmentation takes what touches the fruit in its colours along with it: the hand that holds
    it, a finger, a stalk of the tree. The body is the disc of ``factor`` times the largest circle
    inscribed in the crop's fruit pixels (those not already ``CROP_FILL_RGB``), about its centre;
    fruit pixels outside it are painted out. A round fruit loses nothing at factor ~1.15 (its
    inscribed circle is nearly the fruit), a hand under it keeps only the strip next to the skin.
    Idempotent: the inscribed circle of the kept pixels is the same circle. The crop's geometry
    (size, the fruit's place) is unchanged, so maps over it still fall on the fruit."""
    fruit = fruit_pixels(crop).view(np.uint8)
    if int(cv2.countNonZero(fruit)) < 16:
        return crop
    padded = cv2.copyMakeBorder(fruit, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    _, radius, _, (cx, cy) = cv2.minMaxLoc(cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    disc = np.zeros_like(fruit)
    cv2.circle(disc, (cx - 1, cy - 1), int(math.ceil(radius * factor)), 1, -1)
    outside = cv2.bitwise_and(fruit, 1 - disc)
    if not cv2.countNonZero(outside):
        return crop
    out = crop.copy()
    out[outside.view(bool)] = CROP_FILL_RGB
    return out


def _check_image(image_rgb: np.ndarray) -> None:
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise InvalidMeasurementInput(f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}", field="image")
