"""Blemished skin: where the fruit's skin departs from its own colour (darker, browner), as a mask,
its area in cm² and its largest spot; the share of skin in the commodity's colour bands."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .colour_bands import ColourBand, colour_mask
from .records import FruitMeasurement
from .segment import (
    Segment,
    _hist_quantiles,
)


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


def skin_view(image_rgb: np.ndarray, seg: Segment, max_side_px: int) -> tuple[np.ndarray, Segment]:
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


def _distance_to_edge(mask: np.ndarray, size: int) -> np.ndarray:
    """Each mask pixel's distance to the nearest pixel outside the fruit. The mask is bbox-sized,
    so the fruit touches the array's border; padding makes the border count as outside (OpenCV's
    distance transform does not see beyond the array)."""
    padded = cv2.copyMakeBorder(
        mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0
    )
    return cv2.distanceTransform(padded, cv2.DIST_L2, size)[1:-1, 1:-1]


def _skin_departure(
    image_rgb: np.ndarray, seg: "Segment | FruitMeasurement", params: BlemishParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
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


def blemish_mask(
    image_rgb: np.ndarray,
    seg: Segment,
    params: BlemishParams,
    healthy_bands: tuple[ColourBand, ...] = (),
    in_band: np.ndarray | None = None,
) -> np.ndarray:
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


def spot_areas(spots: np.ndarray) -> tuple[float, float]:
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
