"""The painted-out background of a model crop: the colour everything outside the fruit is painted
(:func:`grader.crop.crop_for_model`, :func:`grader.crop.fruit_body`), and the test for the
fruit pixels left, which the colour statistics (grader/colour.py) are taken over."""

from __future__ import annotations

import numpy as np

#: colour that replaces everything outside the fruit in a model crop (the normalisation mean,
#: so it reads as zero to the network)
CROP_FILL_RGB = (124, 116, 104)


def fruit_pixels(crop: np.ndarray) -> np.ndarray:
    """Pixels of a model crop that are fruit, not the painted-out background (CROP_FILL_RGB)."""
    return (np.abs(crop.astype(np.int16) - np.array(CROP_FILL_RGB, np.int16)) > 2).any(axis=2)
