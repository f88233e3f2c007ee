"""A fruit cut in two by a defect band close to the backdrop's colour (grey or beige mould on
concrete) is put back together (grader.segment_pieces.merge_defect_pieces); two fruit, and two pieces
lying apart on the backdrop, stay separate."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from grader.segment import SegmentationParams, segment_fruits

H, W = 300, 300
LEMON_RGB = (228.0, 200.0, 55.0)
MOULD_RGB = (172.0, 166.0, 146.0)  # beige-grey: short of the yellow, not far from the concrete


def concrete(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A grey, textured backdrop (float RGB)."""
    noise = cv2.GaussianBlur(rng.normal(0, 14, (h, w)).astype(np.float32), (3, 3), 0)
    return np.full((h, w, 3), (150.0, 148.0, 144.0)) + noise[..., None]


def _lemon_and_band() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    lemon = ((xx - 150) / 110.0) ** 2 + ((yy - 150) / 80.0) ** 2 <= 1
    # a wavy band across the short axis, ragged on both sides as mould spreads
    centre = 150 + 18 * np.sin(yy / 14.0)
    band = lemon & (np.abs(xx - centre) < 22 + 6 * np.sin(yy / 5.0 + 1))
    return lemon, band


def banded_lemon(seed: int, gap_is_backdrop: bool = False) -> np.ndarray:
    """A lemon-yellow ellipse (220 x 160 px) on concrete, cut across by a mould band; with
    ``gap_is_backdrop`` the band shows the concrete instead: two ragged halves lying apart."""
    rng = np.random.default_rng(seed)
    img = concrete(H, W, rng)
    lemon, band = _lemon_and_band()
    img[lemon] = np.array(LEMON_RGB) + rng.normal(0, 6, (int(lemon.sum()), 1))
    if gap_is_backdrop:
        img[band] = concrete(H, W, rng)[band]
    else:
        img[band] = np.array(MOULD_RGB) + rng.normal(0, 8, (int(band.sum()), 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def touching_lemons(seed: int) -> np.ndarray:
    """Two whole lemon-yellow ellipses touching side by side on concrete."""
    rng = np.random.default_rng(seed)
    img = concrete(H, 400, rng)
    yy, xx = np.mgrid[:H, :400]
    for cx in (110, 290):
        fruit = ((xx - cx) / 90.0) ** 2 + ((yy - 150) / 75.0) ** 2 <= 1
        img[fruit] = np.array(LEMON_RGB) + rng.normal(0, 6, (int(fruit.sum()), 1))
    return np.clip(img, 0, 255).astype(np.uint8)


OFF = dataclasses.replace(SegmentationParams(), merge_defect_pieces=False)


def test_a_lemon_cut_by_a_mould_band_is_one_fruit():
    for seed in range(3):
        img = banded_lemon(seed)
        assert len(segment_fruits(img, OFF)) == 2  # colour alone cuts the band out: two pieces
        [seg] = segment_fruits(img)
        x0, y0, x1, y1 = seg.bbox
        # the whole lemon (x 40..260, y 70..230), less what the pieces leave of its rim
        assert x0 <= 45 and x1 >= 255 and y0 <= 80 and y1 >= 220


def test_two_touching_fruit_are_not_merged():
    for seed in range(3):
        segs = segment_fruits(touching_lemons(seed))
        assert len(segs) == 2
        assert segs[0].bbox[2] <= 215 and segs[1].bbox[0] >= 185


def test_two_pieces_apart_on_the_backdrop_are_not_merged():
    # the same ragged halves, but with the backdrop between them: nothing says they are one fruit
    for seed in range(3):
        assert len(segment_fruits(banded_lemon(seed, gap_is_backdrop=True))) == 2
