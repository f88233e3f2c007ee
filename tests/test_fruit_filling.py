"""A fruit filling much of the frame reaches the border strip the backdrop's colours are learned from:
its skin is not taken for a backdrop colour (grader.segment.SegmentationParams.skin_min_chroma), so
it stays one fruit; a fruit on a coloured table and two fruit side by side are found as before."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from grader.segment import SegmentationParams, segment_fruits

H, W = 300, 300
LEMON_RGB = (228.0, 200.0, 55.0)
TURQUOISE_RGB = (40.0, 190.0, 200.0)
RED_RGB = (175.0, 35.0, 40.0)
OFF = dataclasses.replace(SegmentationParams(), skin_min_chroma=0.0)


def _texture(h: int, w: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rng.normal(0, sigma, (h, w)).astype(np.float32), (3, 3), 0)[..., None]


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def big_lemon(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A lemon-yellow ellipse reaching the right and bottom borders of a grey textured frame (its
    corners left to the concrete); the image and the lemon's mask."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), (150.0, 148.0, 144.0)) + _texture(H, W, rng, 14)
    lemon = _ellipse(H, W, 175, 180, 160, 135)
    yy, xx = np.mgrid[:H, :W]
    shade = 1.0 - 0.25 * np.clip(((xx - 175) / 160.0) ** 2 + ((yy - 180) / 135.0) ** 2, 0, 1)  # darker towards the rim
    img[lemon] = (np.array(LEMON_RGB) * shade[..., None])[lemon] + _texture(H, W, rng, 5)[lemon]
    return np.clip(img, 0, 255).astype(np.uint8), lemon


def two_apples_on_a_table(seed: int) -> np.ndarray:
    """Two red discs side by side on a turquoise table (the frame's centre, between them, is table),
    a dark wall across the top."""
    rng = np.random.default_rng(seed)
    img = np.full((H, 400, 3), TURQUOISE_RGB) + _texture(H, 400, rng, 4)
    img[:80] = 40.0 + _texture(80, 400, rng, 4)
    for cx in (90, 310):
        fruit = _ellipse(H, 400, cx, 170, 65, 62)
        img[fruit] = np.array(RED_RGB) + _texture(H, 400, rng, 6)[fruit]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_lemon_filling_most_of_the_frame_is_one_fruit():
    for seed in range(3):
        img, lemon = big_lemon(seed)
        assert len(segment_fruits(img, OFF)) != 1  # its skin passes for backdrop: it falls apart or vanishes
        [seg] = segment_fruits(img)
        found = np.zeros((H, W), bool)
        x0, y0, x1, y1 = seg.bbox
        found[y0:y1, x0:x1] = seg.mask
        assert (found & lemon).sum() / (found | lemon).sum() > 0.9
        assert seg.cut_off


def test_fruit_on_a_coloured_table_are_found_as_before():
    for seed in range(3):
        img = two_apples_on_a_table(seed)
        segs, before = segment_fruits(img), segment_fruits(img, OFF)
        assert len(segs) == 2
        assert [s.bbox for s in segs] == [s.bbox for s in before]


def test_two_lemons_side_by_side_are_found_as_before():
    rng = np.random.default_rng(0)
    img = np.full((H, 400, 3), (150.0, 148.0, 144.0)) + _texture(H, 400, rng, 14)
    for cx in (110, 290):
        fruit = _ellipse(H, 400, cx, 150, 90, 75)
        img[fruit] = np.array(LEMON_RGB) + _texture(H, 400, rng, 5)[fruit]
    img = np.clip(img, 0, 255).astype(np.uint8)
    segs = segment_fruits(img)
    assert len(segs) == 2
    assert [s.bbox for s in segs] == [s.bbox for s in segment_fruits(img, OFF)]
