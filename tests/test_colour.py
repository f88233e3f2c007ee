"""The colour transfer shared by training's augmentation and the citrus source-bias check."""

import numpy as np
import pytest

from datasets.synthetic import make_fruit_image
from grader.measure import CROP_FILL_RGB, crop_for_model, segment_fruits
from training.colour import colour_transfer, fruit_colour_stats, fruit_pixels, mean_colour_stats


def _crop(colour: str, seed: int = 0) -> np.ndarray:
    img, _ = make_fruit_image(seed=seed, diameter_mm=60, colour=colour)
    seg = segment_fruits(img)[0]
    return crop_for_model(img, seg.bbox, 0.08, seg.mask)


def test_transfer_moves_the_fruit_to_the_target_colour_and_keeps_the_background():
    orange, lemon = _crop("orange", 1), _crop("lemon", 2)
    target = fruit_colour_stats(lemon)
    out = colour_transfer(orange, target)
    fruit = fruit_pixels(orange)
    assert (out[~fruit] == np.array(CROP_FILL_RGB, np.uint8)).all()  # background untouched
    got = fruit_colour_stats(out)
    assert got[0] == pytest.approx(target[0], abs=3.0)  # Lab mean now the lemon's (within uint8 rounding)
    assert colour_transfer(orange, None) is orange


def test_mean_stats_of_a_source():
    crops = [_crop("orange", s) for s in range(3)]
    mu, sd = mean_colour_stats(crops)
    assert mu.shape == sd.shape == (3,) and (sd > 0).all()
