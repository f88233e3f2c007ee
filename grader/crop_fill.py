"""The painted-out background of a model crop: the colour everything outside the fruit is painted
(:func:`grader.crop.crop_for_model`, :func:`grader.crop.fruit_body`), and the test for the
fruit pixels left, which the colour statistics (grader/colour.py) are taken over."""

from __future__ import annotations

import cv2
import numpy as np

#: colour that replaces everything outside the fruit in a model crop (the normalisation mean,
#: so it reads as zero to the network)
CROP_FILL_RGB = (124, 116, 104)
#: the fill's colour give or take 2 per channel: a pixel within it is background
_FILL_LO = np.array(CROP_FILL_RGB, np.uint8) - 2
_FILL_HI = np.array(CROP_FILL_RGB, np.uint8) + 2


def fruit_pixels(crop: np.ndarray) -> np.ndarray:
    """Pixels of a model crop that are fruit, not the painted-out background (CROP_FILL_RGB): any
    channel more than 2 from the fill's (one OpenCV pass; the crop's own size, in the request path)."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        return (np.abs(crop.astype(np.int16) - np.array(CROP_FILL_RGB, np.int16)) > 2).any(axis=2)
    return cv2.inRange(np.ascontiguousarray(crop), _FILL_LO, _FILL_HI) == 0
