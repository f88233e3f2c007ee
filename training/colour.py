"""Fruit colour statistics and Reinhard colour transfer on model crops (numpy + OpenCV, no torch).

One implementation for the colour-transfer augmentation (``augment.colour_transfer_p`` in
training/train.py) and for the source-bias check of bench/citrus_eval.py, which gives each test
fruit the other photo source's colour statistics and scores it again."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from grader.measure import CROP_FILL_RGB

#: fewer fruit pixels than this: no colour statistics (the crop is left as it is)
MIN_FRUIT_PIXELS = 50

Stats = tuple[np.ndarray, np.ndarray]


def fruit_pixels(crop: np.ndarray) -> np.ndarray:
    """Pixels of a model crop that are fruit, not the painted-out background (CROP_FILL_RGB)."""
    return (np.abs(crop.astype(np.int16) - np.array(CROP_FILL_RGB, np.int16)) > 2).any(axis=2)


def fruit_colour_stats(crop: np.ndarray) -> Stats | None:
    """Lab mean and spread of a crop's fruit pixels (None for a crop with too little fruit)."""
    fruit = fruit_pixels(crop)
    if fruit.sum() < MIN_FRUIT_PIXELS:
        return None
    px = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)[fruit]
    return px.mean(0), px.std(0) + 1e-3


def mean_colour_stats(crops: Sequence[np.ndarray]) -> Stats:
    """The mean over crops of their fruit pixels' Lab mean and spread: a photo source's colour."""
    stats = [s for s in map(fruit_colour_stats, crops) if s is not None]
    return np.mean([m for m, _ in stats], 0), np.mean([sd for _, sd in stats], 0)


def colour_transfer(crop: np.ndarray, target: Stats | None) -> np.ndarray:
    """The crop's fruit pixels moved to another fruit's Lab mean and spread (Reinhard transfer): the
    photo's overall colour, exposure and saturation change, its local spots and texture stay. When
    the overall colour tells the photo's source (lab vs stock), this takes that cue away."""
    own = fruit_colour_stats(crop)
    if own is None or target is None:
        return crop
    fruit = fruit_pixels(crop)
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[fruit] = (lab[fruit] - own[0]) / own[1] * target[1] + target[0]
    out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    out[~fruit] = crop[~fruit]
    return out
