"""White mould on a white backdrop: colour alone cuts it out of the fruit; the citrus profiles'
texture cue (grader.measure.SegmentationParams.flat_background_max_std) keeps it, only where the
backdrop is plain."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from grader.commodities import load_commodities
from grader.segment import SegmentationParams, segment_fruits

from .conftest import headers, png_bytes

R_PX = 50


def mouldy_orange(backdrop_noise: float, seed: int = 0) -> np.ndarray:
    """A 240x240 frame: an orange disc of radius R_PX whose right half is white mould (a textured
    grey-white, the backdrop's colour on average), on a backdrop of that colour with the given
    pixel noise (0: plain studio white; 20: a textured belt)."""
    rng = np.random.default_rng(seed)
    h = w = 240
    img = np.full((h, w, 3), 236.0) + rng.normal(0, backdrop_noise, (h, w, 1))
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 120) ** 2 + (xx - 120) ** 2 <= R_PX**2
    img[disc] = (228, 122, 32)
    mould = disc & (xx > 115)
    img[mould] = np.array([236.0, 236.0, 230.0]) + rng.normal(0, 16, (int(mould.sum()), 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def largest_area(img: np.ndarray, params: SegmentationParams | None) -> int:
    segs = segment_fruits(img, params)
    return max((int(s.mask.sum()) for s in segs), default=0)


def test_the_orange_profile_keeps_white_mould_on_a_white_backdrop_where_colour_alone_cuts_it_out() -> None:
    img = mouldy_orange(backdrop_noise=0.0)
    disc = math.pi * R_PX**2
    orange = load_commodities()["orange"]
    assert orange.plain_backdrop_max_texture_std > 0
    assert largest_area(img, None) < 0.7 * disc  # colour alone: little more than the orange half
    # the whole fruit, less a rim of a few pixels on the mould side: the edge refinement at full
    # resolution decides the outline by colour, and there the mould is the backdrop's colour
    assert 0.85 * disc <= largest_area(img, orange.segmentation()) <= 1.02 * disc
    [seg] = segment_fruits(img, orange.segmentation())
    x0, y0, x1, y1 = seg.bbox
    assert x1 - x0 == pytest.approx(2 * R_PX, abs=6) and y1 - y0 == pytest.approx(2 * R_PX, abs=3)


def test_the_texture_cue_stays_off_on_a_textured_belt_and_for_apples_and_lemons() -> None:
    commodities = load_commodities()
    assert commodities["apple"].plain_backdrop_max_texture_std == 0
    assert commodities["lemon"].plain_backdrop_max_texture_std == 0
    assert commodities["apple"].segmentation() == SegmentationParams()
    img = mouldy_orange(backdrop_noise=20.0)
    plain = [(s.bbox, int(s.mask.sum())) for s in segment_fruits(img, None)]
    cue = [(s.bbox, int(s.mask.sum())) for s in segment_fruits(img, commodities["orange"].segmentation())]
    assert cue == plain  # the belt is itself textured: the cue does not fire


def test_a_mouldy_orange_posted_as_an_orange_is_sized_whole_and_its_overlay_drawn(client) -> None:
    img = mouldy_orange(backdrop_noise=0.0)

    def post(commodity):
        return client.post(
            "/v1/grade",
            files={"image": ("o.png", png_bytes(img), "image/png")},
            data={"mm_per_px": "0.5", "commodity": commodity},
            headers=headers(),
        )

    as_orange, as_apple = post("orange"), post("apple")
    assert as_orange.status_code == 200 and as_apple.status_code == 200, (as_orange.text, as_apple.text)
    [fruit] = as_orange.json()["fruits"]
    assert fruit["diameter_mm"] == pytest.approx(2 * R_PX * 0.5, abs=3)  # 50 mm, the whole fruit
    # an apple's settings (colour alone) cut the mould away
    # (or leave pieces the apple model's fruit check does not take for fruit at all)
    assert max((f["area_mm2"] for f in as_apple.json()["fruits"]), default=0.0) < 0.7 * fruit["area_mm2"]
    overlay = client.get(f"/v1/results/{as_orange.json()['id']}/overlay", headers=headers("inspector"))
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"


# ----------------------------------------------------------------------------- training crops
def _fruit_share_of_crop(crop: np.ndarray) -> float:
    """Share of a crop that is not the painted-out fill (grader.crop_fill.CROP_FILL_RGB)."""
    from grader.crop_fill import CROP_FILL_RGB

    return float((np.abs(crop.astype(int) - np.array(CROP_FILL_RGB)).sum(axis=2) > 0).mean())


def test_training_crops_cut_with_the_commodity_settings_keep_the_mould(tmp_path) -> None:
    from training.crops import crop_cache, fruit_crop

    img = mouldy_orange(backdrop_noise=0.0)
    orange = load_commodities()["orange"].segmentation()
    colour_only, textured = fruit_crop(img, 0.08), fruit_crop(img, 0.08, params=orange)
    # colour alone: the orange half, the mould painted out; the orange profile: the whole disc
    assert _fruit_share_of_crop(colour_only) < 0.7 * _fruit_share_of_crop(textured)
    assert _fruit_share_of_crop(textured) > 0.5  # a disc fills pi/4 of its square, less the margin
    # the cache keys on the settings: the same photo list cached twice, one entry per setting
    path = tmp_path / "o.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    a = crop_cache([path], 64, 0.08, tmp_path / "cache", workers=1)
    b = crop_cache([path], 64, 0.08, tmp_path / "cache", workers=1, params=orange)
    assert len(list((tmp_path / "cache").glob("crops-*.npy"))) == 2
    assert not np.array_equal(a, b)
    assert np.array_equal(crop_cache([path], 64, 0.08, tmp_path / "cache", workers=1, params=SegmentationParams()), a)


def test_data_segmentation_commodity_is_recorded_in_the_metadata_and_read_back() -> None:
    from grader.errors import InvalidModelArtifact
    from inference.metadata import read_spec
    from training.config import DEFAULT_CONFIG, crop_segmentation_record, load_config, segmentation_of

    cfg = load_config(DEFAULT_CONFIG, ["commodity=orange", "data.segmentation=commodity"])
    params = segmentation_of(cfg)
    assert params == load_commodities()["orange"].segmentation()
    record = crop_segmentation_record(params)
    assert record == {"crop_segmentation": {"flat_background_max_std": load_commodities()["orange"].plain_backdrop_max_texture_std}}
    meta = {
        "name": "m",
        "version": "1",
        "classes": ["sound", "defective"],
        "preprocessing": {"input_size": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1], **record},
    }
    assert read_spec(meta).crop_segmentation == params
    # colour alone (the default) and an apple's profile record nothing: older artifacts read the same
    assert segmentation_of(load_config(DEFAULT_CONFIG)) is None
    assert segmentation_of(load_config(DEFAULT_CONFIG, ["data.segmentation=commodity"])) is None
    assert read_spec({**meta, "preprocessing": {**meta["preprocessing"], "crop_segmentation": None}}).crop_segmentation is None
    with pytest.raises(InvalidModelArtifact):
        read_spec({**meta, "preprocessing": {**meta["preprocessing"], "crop_segmentation": {"no_such_setting": 1}}})
    with pytest.raises(ValueError, match="data.segmentation"):
        segmentation_of(load_config(DEFAULT_CONFIG, ["data.segmentation=texture"]))
    with pytest.raises(ValueError, match="one commodity"):
        segmentation_of(
            load_config(DEFAULT_CONFIG, ["commodity=orange", "data.segmentation=commodity", "data.commodities=[lemon, orange]"])
        )
