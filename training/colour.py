"""Fruit colour statistics and Reinhard colour transfer on model crops (numpy + OpenCV, no torch).

The implementation lives in :mod:`grader.colour`, since serving needs it too (a model's optional
``preprocessing.colour_normalise``); this module keeps the names training and bench/citrus_eval.py
import: the colour-transfer augmentation (``augment.colour_transfer_p`` in training/train.py) and
the source-bias check, which gives each test fruit the other photo source's colour statistics and
scores it again."""

from __future__ import annotations

from grader.colour import (  # noqa: F401  (re-exported)
    MIN_FRUIT_PIXELS,
    ColourNormalise,
    Stats,
    colour_transfer,
    fruit_colour_stats,
    fruit_pixels,
    mean_colour_stats,
)
