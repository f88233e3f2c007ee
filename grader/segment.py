"""Find fruit in an image: each fruit-like region that stands out from the frame's background,
touching fruit split apart, outlines refined at full resolution. RGB uint8 in, never files or settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InvalidMeasurementInput
from .records import BBox
from .segment_pieces import GAP_BACKDROP_QUANTILE, merge_defect_pieces


@dataclass(frozen=True)
class SegmentationParams:
    """Knobs of the fruit finder. Defaults suit a belt or cup photographed from above."""

    work_size_px: int = 512  # images are segmented at this longest side, then mapped back
    border_frac: float = 0.04  # strip of the frame used to learn the background colours
    background_clusters: int = 3  # colours the background may have (belt, cup, shadow)
    min_background_share: float = 0.15  # a border colour rarer than this is fruit poking in, not background
    # A fruit filling much of the frame covers much of the border strip too, so its skin would pass for
    # a backdrop colour and the fruit would fall apart or vanish. A border colour is that fruit reaching
    # the border, not backdrop, when it is strongly chromatic (Lab chroma at least skin_min_chroma:
    # concrete, belts and cups are grey, about 3-6; lemon skin 50 or more), covers most of the frame's
    # central third (skin_min_centre_share of its pixels within skin_max_colour_distance in a*b*) and
    # none of its four corners (a fruit reaching in from the edges leaves them to the backdrop, while a
    # coloured table or wall holds them), and there is a backdrop: the other colours still cover
    # skin_min_backdrop_share of the strip, and at least two corners are grey (a close-up whose
    # corners are the fruit's own shaded skin is left to the frame-filling fruit check of
    # grader/pipeline.py, as are coloured backdrops). 0 chroma turns it off.
    skin_min_chroma: float = 25.0
    skin_max_colour_distance: float = 15.0
    skin_min_centre_share: float = 0.5
    skin_min_backdrop_share: float = 0.15
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
    # A fruit cut in pieces by a defect band (mould, rot) whose colour is close to the backdrop's is
    # put back together when the pieces' union hull is a plausible single fruit and the band between
    # them is not backdrop (see grader/segment_pieces.py: merge_defect_pieces); False keeps the pieces.
    merge_defect_pieces: bool = True


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
    kept = (share >= params.min_background_share) | (share == share.max())
    if params.skin_min_chroma > 0 and _grey_corners(lab, params) >= 2:
        skin = kept & (np.hypot(centres[:, 1] - 128.0, centres[:, 2] - 128.0) >= params.skin_min_chroma)
        for i in np.flatnonzero(skin):
            skin[i] = _fruit_reaching_in(lab, centres[i], params)
        # the same skin in shade (duller, so further in a*b*) is the fruit's too
        ab = centres[:, 1:]
        shade = kept & (np.hypot(*(ab - 128.0).T) >= params.skin_min_chroma)
        near_skin = (np.hypot(*(ab[:, None] - ab[None]).transpose(2, 0, 1)) <= 2 * params.skin_max_colour_distance)[:, skin]
        skin |= shade & near_skin.any(axis=1)
        if skin.any() and share[kept & ~skin].sum() >= params.skin_min_backdrop_share:
            kept &= ~skin
    return centres[kept]


def _corners(lab: np.ndarray, params: SegmentationParams) -> tuple[np.ndarray, ...]:
    """The frame's four corner squares, the border strip's width on a side."""
    b = max(2, int(round(min(lab.shape[:2]) * params.border_frac)))
    return lab[:b, :b], lab[:b, -b:], lab[-b:, :b], lab[-b:, -b:]


def _grey_corners(lab: np.ndarray, params: SegmentationParams) -> int:
    """How many of the frame's corners are grey (median Lab chroma under skin_min_chroma)."""
    return sum(float(np.median(np.hypot(c[..., 1] - 128.0, c[..., 2] - 128.0))) < params.skin_min_chroma for c in _corners(lab, params))


def _fruit_reaching_in(lab: np.ndarray, colour: np.ndarray, params: SegmentationParams) -> bool:
    """Whether a border colour covers the frame's central third and none of its corners (see
    SegmentationParams.skin_min_chroma)."""
    h, w = lab.shape[:2]
    step = max(1, min(h, w) // 96)  # a share needs no more than ~32 x 32 pixels of the centre

    def near(region: np.ndarray, distance: float) -> float:
        return float((np.hypot(region[..., 1] - colour[1], region[..., 2] - colour[2]) <= distance).mean())

    if any(near(c, params.skin_max_colour_distance) > 0.5 for c in _corners(lab, params)):
        return False
    centre = lab[h // 3 : h - h // 3 : step, w // 3 : w - w // 3 : step]
    return near(centre, params.skin_max_colour_distance) >= params.skin_min_centre_share


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


def _at_work_size(image_rgb: np.ndarray, params: SegmentationParams) -> tuple[np.ndarray, float]:
    """The frame shrunk to at most ``work_size_px`` on its longer side, and the scale used."""
    h, w = image_rgb.shape[:2]
    scale = min(1.0, params.work_size_px / max(h, w))
    if scale == 1.0:
        return image_rgb, scale
    return cv2.resize(image_rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), scale


def _local_std(lightness: np.ndarray) -> np.ndarray:
    """Standard deviation of each pixel's 5x5 neighbourhood (float32 in, float32 out)."""
    mean = cv2.blur(lightness, (5, 5))
    return np.sqrt(np.maximum(cv2.blur(lightness * lightness, (5, 5)) - mean * mean, 0.0))


def backdrop_texture(image_rgb: np.ndarray, params: SegmentationParams | None = None) -> float:
    """The backdrop's lightness texture as the segmentation measures it: the 0.9 quantile of the
    local (5x5) standard deviation of L* over the frame's border strip, at the working size."""
    params = params or SegmentationParams()
    small, _ = _at_work_size(image_rgb, params)
    lightness = np.ascontiguousarray(_to_lab(small)[..., 0])
    return float(np.quantile(_border_strip(_local_std(lightness), params.border_frac), 0.9))


def _textured_on_plain_backdrop(lightness: np.ndarray, params: SegmentationParams) -> np.ndarray | None:
    """Pixels whose local lightness texture stands out from a plain backdrop's (bool), or None when
    the backdrop is itself textured (or the cue is off): see SegmentationParams.flat_background_max_std."""
    if params.flat_background_max_std <= 0:
        return None
    std = _local_std(lightness)
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
    radii = []
    for label in range(1, n):
        py, px = np.nonzero(peaks == label)
        cy, cx = py.mean(), px.mean()
        r = float(dist[py, px].max())
        radii.append(r)
        power[label - 1] = (xs - cx) ** 2 + (ys - cy) ** 2 - r**2
    owner = power.argmin(axis=0)
    owner = _merge_wide_cuts(mask.shape, ys, xs, owner, radii)
    parts = []
    for i in np.unique(owner):
        part = np.zeros(mask.shape, np.uint8)
        part[ys[owner == i], xs[owner == i]] = 1
        part = cv2.morphologyEx(part, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
        if part.sum() >= min_area:
            parts.append(part)
    return parts or [mask]


#: two pieces of a split blob whose cut is longer than this many times the smaller piece's inner
#: radius are one fruit: touching fruit meet along a short chord (about 0 for discs side by side,
#: 1.2 r for discs whose centres are 0.8 of a diameter apart), while an oval fruit or one that fills
#: the frame, cut at a waist of its own, is cut across its whole width (about 2 r)
MERGE_CUT_OVER_RADIUS = 1.2


def _merge_wide_cuts(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, owner: np.ndarray, radii: list[float]) -> np.ndarray:
    """Relabel ``owner`` (the piece of each blob pixel) so that pieces cut apart along a chord longer
    than :data:`MERGE_CUT_OVER_RADIUS` times the smaller one's radius are one piece again."""
    k = len(radii)
    if k < 2:
        return owner
    label_img = np.full(shape, -1, np.int32)
    label_img[ys, xs] = owner
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return parent[i]

    # a pixel of piece i with a right or lower neighbour of piece j lies on the cut between them
    cuts: dict[tuple[int, int], list[np.ndarray]] = {}
    for da, db in ((label_img[:, :-1], label_img[:, 1:]), (label_img[:-1, :], label_img[1:, :])):
        edge = (da != db) & (da >= 0) & (db >= 0)
        py, px = np.nonzero(edge)
        lo, hi = np.minimum(da[edge], db[edge]), np.maximum(da[edge], db[edge])
        for i, j in set(zip(lo.tolist(), hi.tolist())):
            sel = (lo == i) & (hi == j)
            cuts.setdefault((i, j), []).append(np.c_[px[sel], py[sel]])
    for (i, j), pieces in cuts.items():
        pts = np.concatenate(pieces).astype(np.float32)
        if len(pts) < 2:
            continue
        (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
        if max(rw, rh) > MERGE_CUT_OVER_RADIUS * min(radii[i], radii[j]):
            parent[root(i)] = root(j)
    return np.array([root(int(o)) for o in range(k)])[owner]


def segment_fruits(image_rgb: np.ndarray, params: SegmentationParams | None = None) -> list[Segment]:
    """Find fruit-like regions that stand out from the frame's background; left to right."""
    params = params or SegmentationParams()
    _check_image(image_rgb)
    h, w = image_rgb.shape[:2]
    small, scale = _at_work_size(image_rgb, params)
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
            if (
                float(np.median(colour_dist)) < params.min_colour_contrast
                and not (
                    blob.sum() >= params.lightness_only_min_area_frac * sh * sw
                    and float(np.median(dist[blob])) >= params.lightness_only_min_contrast
                )
                and not (textured is not None and float(textured[blob].mean()) >= 0.5)
            ):
                continue  # lightness only: a shadow, stain or hole, not a fruit
        kept.append(blob)
    if params.merge_defect_pieces and len(kept) > 1:
        backdrop = float(np.quantile(_border_strip(dist, params.border_frac), GAP_BACKDROP_QUANTILE))
        kept = merge_defect_pieces(kept, dist, backdrop)
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


def _segment_from_mask(
    full: np.ndarray, image_rgb: np.ndarray, params: SegmentationParams, refine: bool, claims: np.ndarray | None = None
) -> Segment | None:
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


def _check_image(image_rgb: np.ndarray) -> None:
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise InvalidMeasurementInput(f"expected an RGB uint8 image (H, W, 3), got {image_rgb.dtype} {image_rgb.shape}", field="image")
