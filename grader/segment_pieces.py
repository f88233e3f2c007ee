"""Pieces of one fruit: a fruit cut apart by a defect band that looks like the backdrop is put back
together (:func:`merge_defect_pieces`, inside the belt segmentation), and a region lying on a larger
fruit is a piece of it, not a fruit of its own (:func:`pieces_of_larger`, after the fruit check)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .records import BBox

#: A blob at least this solid (area over its convex hull's) is a whole outline: a fruit (alone or
#: split from a touching neighbour: 0.95-1.0) or a fruit with its shadow; it is never merged with
#: another blob, so two fruit, or a fruit and the shadow crescent beside it, stay apart. A piece cut
#: off by a defect band has the band's ragged, concave edge (lemon pieces on concrete: about
#: 0.6-0.92). A straight, clean cut leaves convex pieces, which stay apart too.
PIECE_MAX_SOLIDITY = 0.93
#: Pieces are one fruit only when their union's convex hull is fruit-shaped: its second-moment
#: ellipse at most this elongated. The pieces' hull can be longer than the fruit (pieces at its two
#: ends, the band across its middle): lemons cut so measured 1.1-2.0. Two touching equal discs
#: measure 2.03, but being whole outlines they are kept apart by PIECE_MAX_SOLIDITY already.
PIECES_MAX_ASPECT = 2.0
#: The hull may cover at most this share of its area with other blobs (a hull reaching over a third
#: fruit spans a group of fruit, not one fruit's pieces).
PIECES_MAX_OTHERS_SHARE = 0.05
#: The gap (the hull's pixels outside the pieces, PIECES_GAP_MARGIN_PX away from them at the working
#: resolution so that their anti-aliased edges do not count) must be at least this share of the hull
#: to be judged at all: with less, the pieces touch and there is nothing between them to tell.
PIECES_MIN_GAP_SHARE = 0.02
PIECES_GAP_MARGIN_PX = 2
#: The gap is a defect band, not backdrop, when at least this share of its pixels are further from
#: the backdrop's colours (the weighted Lab distance the blobs are found by) than the
#: GAP_BACKDROP_QUANTILE quantile of the frame's border strip, which is backdrop: backdrop between
#: two fruit (and their shadows) passes it for about 0-30 % of its pixels, a brown, beige or green
#: mould band for 50-100 %, though short of the threshold the blobs were cut out at.
GAP_UNLIKE_BACKDROP_SHARE = 0.5
GAP_BACKDROP_QUANTILE = 0.9


def _solidity(blob: np.ndarray) -> float:
    pts = cv2.findNonZero(blob.view(np.uint8))
    hull_area = cv2.contourArea(cv2.convexHull(pts)) if pts is not None else 0.0
    return float(blob.sum() / hull_area) if hull_area > 0 else 1.0


def _hull_aspect(hull: np.ndarray) -> float:
    """Elongation (long over short axis) of the second-moment ellipse of a convex polygon."""
    m = cv2.moments(hull)
    if m["m00"] <= 0:
        return math.inf
    a, b, c = m["mu20"] / m["m00"], m["mu11"] / m["m00"], m["mu02"] / m["m00"]
    root = math.sqrt(max(0.0, ((a - c) / 2) ** 2 + b * b))
    lo = (a + c) / 2 - root
    return math.sqrt(((a + c) / 2 + root) / lo) if lo > 0 else math.inf


def merge_defect_pieces(blobs: list[np.ndarray], dist: np.ndarray, backdrop: float) -> list[np.ndarray]:
    """Put back together the pieces of a fruit cut apart by a defect band that looks like the backdrop
    (grey or beige mould on concrete): two blobs, neither a whole outline (PIECE_MAX_SOLIDITY),
    whose union's convex hull is fruit-shaped (PIECES_MAX_ASPECT), holds no other blob
    (PIECES_MAX_OTHERS_SHARE), and whose gap is mostly not backdrop (GAP_UNLIKE_BACKDROP_SHARE),
    become that hull (less any other blob's pixels), which counts as pieces still, so that a third
    piece may join; pairs are merged best first (the gap least like backdrop) until none is left.
    ``dist``: each pixel's distance from the backdrop's colours, as the blobs were found by;
    ``backdrop``: the GAP_BACKDROP_QUANTILE quantile of that distance over the frame's border strip."""
    if len(blobs) < 2:
        return blobs
    blobs = list(blobs)
    margin = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * PIECES_GAP_MARGIN_PX + 1,) * 2)
    solid = [_solidity(b) for b in blobs]
    while len(blobs) > 1:
        points = [cv2.findNonZero(b.view(np.uint8)) for b in blobs]
        best: tuple[float, int, int, np.ndarray] | None = None
        for i in range(len(blobs)):
            for j in range(i + 1, len(blobs)):
                if max(solid[i], solid[j]) >= PIECE_MAX_SOLIDITY:
                    continue
                hull = cv2.convexHull(np.concatenate([points[i], points[j]]))
                if _hull_aspect(hull) > PIECES_MAX_ASPECT:
                    continue
                x, y, w, h = cv2.boundingRect(hull)
                hull_mask = np.zeros((h, w), np.uint8)
                cv2.fillConvexPoly(hull_mask, hull - np.array([x, y], hull.dtype), 1)
                inside = hull_mask.astype(bool)
                others = np.zeros((h, w), bool)
                for k, b in enumerate(blobs):
                    if k not in (i, j):
                        others |= b[y : y + h, x : x + w]
                if (others & inside).sum() > PIECES_MAX_OTHERS_SHARE * inside.sum():
                    continue
                union = (blobs[i][y : y + h, x : x + w] | blobs[j][y : y + h, x : x + w]).view(np.uint8)
                gap = inside & ~others & ~cv2.dilate(union, margin).astype(bool)
                if gap.sum() < PIECES_MIN_GAP_SHARE * inside.sum():
                    continue
                unlike = float((dist[y : y + h, x : x + w][gap] > backdrop).mean())
                if unlike >= GAP_UNLIKE_BACKDROP_SHARE and (best is None or unlike > best[0]):
                    merged = np.zeros(blobs[i].shape, bool)
                    merged[y : y + h, x : x + w] = inside & ~others
                    best = (unlike, i, j, merged)
        if best is None:
            break
        _, i, j, merged = best
        blobs[i], solid[i] = merged, min(solid[i], solid[j])  # still pieces, not a whole outline
        del blobs[j], solid[j]
    return blobs


#: a region under this share of a larger region's area, lying mostly (PIECE_INSIDE_SHARE) inside
#: that region's box grown by PIECE_BOX_GROWTH of its size, is a piece of that fruit cut off by a
#: defect or a shine that looks like the background, not a fruit of its own
PIECE_MAX_AREA_SHARE = 0.25
PIECE_INSIDE_SHARE = 0.5
PIECE_BOX_GROWTH = 0.1


def pieces_of_larger(boxes: list[BBox], masks: list[np.ndarray]) -> list[int]:
    """Indices of the regions that are pieces of a larger one (see :data:`PIECE_MAX_AREA_SHARE`).
    ``boxes``: (x0, y0, x1, y1) in the frame; ``masks``: each region's box-sized bool mask."""
    areas = [int(m.sum()) for m in masks]
    out = []
    for i, (box, mask) in enumerate(zip(boxes, masks)):
        ys, xs = np.nonzero(mask)
        xs, ys = xs + box[0], ys + box[1]
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            if j == i or areas[i] >= PIECE_MAX_AREA_SHARE * areas[j]:
                continue
            gx, gy = PIECE_BOX_GROWTH * (x1 - x0), PIECE_BOX_GROWTH * (y1 - y0)
            inside = (xs >= x0 - gx) & (xs < x1 + gx) & (ys >= y0 - gy) & (ys < y1 + gy)
            if len(xs) and inside.mean() >= PIECE_INSIDE_SHARE:
                out.append(i)
                break
    return out
