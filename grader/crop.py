"""The square fruit crop a defect model is given: the fruit with its background painted out, and
what sticks out of its round body (a hand, a stem) painted out too when the model asks."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .crop_fill import CROP_FILL_RGB, fruit_pixels
from .records import BBox

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
