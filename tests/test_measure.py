"""Measurement against seeded synthetic fruit of known size and blemish area."""

import numpy as np
import pytest

from datasets.synthetic import FruitSpec, make_frame, make_fruit_image
from grader.crop import crop_for_model
from grader.errors import InvalidMeasurementInput
from grader.measure import measure_image
from grader.segment import segment_fruits


@pytest.mark.parametrize("mm_per_px", [0.15, 0.3, 0.5])
@pytest.mark.parametrize("diameter_mm", [55.0, 88.0])
@pytest.mark.parametrize("colour,background", [("red", "belt"), ("yellow", "cup"), ("green", "belt")])
def test_diameter_within_half_a_millimetre(mm_per_px, diameter_mm, colour, background):
    img, truth = make_fruit_image(
        seed=int(diameter_mm * 10 + mm_per_px * 100), diameter_mm=diameter_mm, mm_per_px=mm_per_px, colour=colour, background=background
    )
    [m] = measure_image(img, mm_per_px)
    assert m.diameter_mm == pytest.approx(diameter_mm, abs=0.5)
    assert m.minor_diameter_mm == pytest.approx(diameter_mm, abs=0.5)
    assert m.area_mm2 == pytest.approx(np.pi * diameter_mm**2 / 4, rel=0.02)
    assert m.roundness > 0.95
    assert not m.quality_flags


def test_elliptic_fruit_major_and_minor():
    img, _ = make_fruit_image(seed=3, diameter_mm=80.0, mm_per_px=0.25, aspect=0.8, angle_deg=30, colour="lemon")
    [m] = measure_image(img, 0.25)
    assert m.diameter_mm == pytest.approx(80.0, abs=0.5)
    assert m.minor_diameter_mm == pytest.approx(64.0, abs=0.5)
    assert m.roundness < 0.99


@pytest.mark.parametrize("blemishes", [(0.5,), (1.0, 0.5), (2.0, 0.3, 0.8)])
@pytest.mark.parametrize("colour", ["red", "yellow", "green"])
def test_blemish_area_within_15_percent(blemishes, colour):
    img, truth = make_fruit_image(seed=11, diameter_mm=75.0, mm_per_px=0.2, colour=colour, blemishes_cm2=blemishes)
    [m] = measure_image(img, 0.2)
    t = truth.fruits[0]
    assert m.blemish_area_cm2 == pytest.approx(t.blemish_area_cm2, rel=0.15)
    assert m.largest_blemish_cm2 == pytest.approx(t.largest_blemish_cm2, rel=0.15)


def test_clean_fruit_has_no_blemish():
    img, _ = make_fruit_image(seed=5, diameter_mm=70.0, mm_per_px=0.2, colour="yellow")
    [m] = measure_image(img, 0.2)
    assert m.blemish_area_cm2 < 0.05


def test_three_touching_fruit_are_three_entries_left_to_right():
    specs = [FruitSpec(70, (40, 50)), FruitSpec(66, (107, 50), colour="green"), FruitSpec(74, (177, 52))]
    img, truth = make_frame(specs, mm_per_px=0.5, size_px=(200, 430), seed=2)
    ms = measure_image(img, 0.5)
    assert len(ms) == 3
    centres = [(m.bbox[0] + m.bbox[2]) / 2 for m in ms]
    assert centres == sorted(centres)
    for m, spec in zip(ms, specs):
        assert m.diameter_mm == pytest.approx(spec.diameter_mm, abs=2.0)


def test_fruit_cut_by_border_is_flagged_not_sized():
    img, _ = make_frame([FruitSpec(70, (20, 60)), FruitSpec(70, (120, 60))], mm_per_px=0.5, size_px=(240, 320))
    ms = measure_image(img, 0.5)
    assert len(ms) == 2
    cut, whole = ms
    assert cut.cut_off and cut.diameter_mm is None and "cut_off" in [f.code for f in cut.quality_flags]
    assert not whole.cut_off and whole.diameter_mm == pytest.approx(70, abs=0.5)


def test_uncalibrated_sizes_are_null_and_flagged():
    img, _ = make_fruit_image(seed=1, diameter_mm=70.0, mm_per_px=0.3)
    [m] = measure_image(img, None)
    assert m.diameter_mm is None and m.blemish_area_cm2 is None
    assert m.diameter_px == pytest.approx(70 / 0.3, abs=2)
    assert [f.code for f in m.quality_flags] == ["uncalibrated"]


def test_empty_belt_has_no_fruit():
    img, _ = make_frame([], mm_per_px=0.5, size_px=(240, 320), seed=4)
    assert segment_fruits(img) == []


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_rejected(bad):
    img, _ = make_fruit_image(seed=1)
    with pytest.raises(InvalidMeasurementInput):
        measure_image(img, bad)


def test_model_crop_is_square_and_masks_background():
    img, truth = make_fruit_image(seed=1, diameter_mm=60, mm_per_px=0.5, background="cup")
    seg = segment_fruits(img)[0]
    crop = crop_for_model(img, seg.bbox, 0.1, seg.mask)
    assert crop.shape[0] == crop.shape[1] == round(max(seg.bbox[2] - seg.bbox[0], seg.bbox[3] - seg.bbox[1]) * 1.2)
    from grader.crop_fill import CROP_FILL_RGB

    assert tuple(crop[0, 0]) == CROP_FILL_RGB  # the cup is painted out
    c = crop.shape[0] // 2
    assert tuple(crop[c, c]) != CROP_FILL_RGB


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 0.95])
@pytest.mark.parametrize("base", ["yellow", "green"])
def test_colour_coverage_within_5_points(fraction, base):
    from grader.commodities import load_commodities

    bands = load_commodities()["apple"].colour_bands
    img, truth = make_fruit_image(
        seed=4, diameter_mm=70, mm_per_px=0.3, colour=base, blush_colour="red", blush_fraction=fraction, blemishes_cm2=(0.5,)
    )
    [m] = measure_image(img, 0.3, colour_bands=bands)
    assert m.colour_coverage == pytest.approx(truth.fruits[0].blush_fraction, abs=0.05)


def test_lemon_is_sized_across_its_long_axis():
    img, _ = make_fruit_image(seed=3, diameter_mm=80.0, mm_per_px=0.25, aspect=0.7, colour="lemon")
    [m] = measure_image(img, 0.25, size_axis="minor")
    assert m.diameter_mm == pytest.approx(56.0, abs=0.5) and m.minor_diameter_mm == pytest.approx(80.0, abs=0.5)


def _codes(img):
    from grader.flags import FlagPolicy, image_quality_flags

    return [f.code for f in image_quality_flags(img, FlagPolicy())]


def test_quality_flags_blur_and_exposure():
    import cv2

    img, _ = make_fruit_image(seed=1, diameter_mm=70, mm_per_px=0.3, blemishes_cm2=(0.5,))
    assert _codes(img) == []
    assert "blurry" in _codes(cv2.GaussianBlur(img, (0, 0), 6))
    assert "underexposed" in _codes((img * 0.1).astype(np.uint8))
    assert "overexposed" in _codes(np.clip(img.astype(int) * 4 + 60, 0, 255).astype(np.uint8))


def test_red_blush_on_a_bicoloured_apple_is_not_a_blemish():
    from grader.commodities import load_commodities

    bands = load_commodities()["apple"].colour_bands
    img, truth = make_fruit_image(
        seed=9, diameter_mm=72, mm_per_px=0.3, colour="yellow", blush_colour="red", blush_fraction=0.5, blemishes_cm2=(1.0,)
    )
    [m] = measure_image(img, 0.3, colour_bands=bands)
    assert m.blemish_area_cm2 == pytest.approx(truth.fruits[0].blemish_area_cm2, rel=0.15)


@pytest.mark.parametrize("colour", ["red", "yellow"])
def test_blemish_on_skin_of_the_target_colour_after_jpeg(colour):
    """A spot's anti-aliased, chroma-subsampled rim takes the skin's hue: it still counts."""
    import cv2

    from grader.commodities import load_commodities

    bands = load_commodities()["apple"].colour_bands
    img, truth = make_fruit_image(seed=0, diameter_mm=72, mm_per_px=0.3, colour=colour, blemishes_cm2=(0.8,))
    jpg = cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    [m] = measure_image(jpg, 0.3, colour_bands=bands)
    assert m.blemish_area_cm2 == pytest.approx(truth.fruits[0].blemish_area_cm2, rel=0.15)


def test_skin_anomaly_map_is_hot_on_blemishes_and_cool_on_clean_skin():
    from grader.blemish import skin_anomaly_map
    from grader.segment import segment_fruits

    img, truth = make_fruit_image(seed=4, diameter_mm=70, mm_per_px=0.25, blemishes_cm2=(1.5,))
    seg = segment_fruits(img)[0]
    heat = skin_anomaly_map(img, seg)
    m = measure_image(img, 0.25)[0]
    assert heat.shape == seg.mask.shape and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert heat[m.blemish_mask].mean() > 0.5 > 0.1 > heat[seg.mask & ~m.blemish_mask].mean()
    assert not heat[~seg.mask].any()


@pytest.mark.parametrize("colour", ["red", "yellow", "green"])
def test_phone_photo_fruit_is_judged_on_a_shrunk_copy_and_measured_alike(colour):
    """A fruit ~1900 px across (a 16-MP photo) has its skin judged on a copy 1024 px wide: the same
    size, blemish area and colour coverage as judged at full resolution, within the tolerances."""
    import cv2

    from grader.blemish import BlemishParams
    from grader.commodities import load_commodities

    bands = load_commodities()["apple"].colour_bands
    img, truth = make_fruit_image(seed=11, diameter_mm=75.0, mm_per_px=0.2, colour=colour, blemishes_cm2=(2.0, 0.3, 0.8))
    k = 5
    big = cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    [m] = measure_image(big, 0.2 / k, colour_bands=bands)
    [full] = measure_image(big, 0.2 / k, colour_bands=bands, blemish=BlemishParams(work_max_side_px=10**6))
    t = truth.fruits[0]
    assert max(m.bbox[2] - m.bbox[0], m.bbox[3] - m.bbox[1]) > 1024  # the shrunk path ran
    assert m.diameter_mm == pytest.approx(75.0, abs=0.5)
    assert m.blemish_area_cm2 == pytest.approx(t.blemish_area_cm2, rel=0.15)
    assert m.largest_blemish_cm2 == pytest.approx(t.largest_blemish_cm2, rel=0.15)
    assert m.blemish_area_cm2 == pytest.approx(full.blemish_area_cm2, rel=0.1)
    assert m.colour_coverage == pytest.approx(full.colour_coverage, abs=0.01)
    assert m.blemish_mask.shape == m.mask.shape and not (m.blemish_mask & ~m.mask).any()


def test_large_model_crop_paints_out_the_same_disc_grown_mask():
    """Past the elliptic kernel's size the fruit mask is grown by a distance transform: the painted
    out area matches the kernel's to a ring of boundary pixels."""
    import cv2

    from grader.crop_fill import CROP_FILL_RGB

    img, _ = make_fruit_image(seed=2, diameter_mm=70.0, mm_per_px=0.2, colour="red")
    big = cv2.resize(img, None, fx=5, fy=5, interpolation=cv2.INTER_CUBIC)
    [m] = measure_image(big, 0.04)
    crop = crop_for_model(big, m.bbox, 0.08, m.mask)
    side = crop.shape[0]
    grow = int(round(side * 0.015))
    assert grow > 16  # the distance-transform path
    keep = np.zeros((side, side), np.uint8)
    ox = m.bbox[0] - (int(round((m.bbox[0] + m.bbox[2]) / 2 - side / 2)))
    oy = m.bbox[1] - (int(round((m.bbox[1] + m.bbox[3]) / 2 - side / 2)))
    keep[oy : oy + m.mask.shape[0], ox : ox + m.mask.shape[1]] = m.mask
    expect = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))).astype(bool)
    painted = (crop == np.array(CROP_FILL_RGB, np.uint8)).all(axis=2)
    assert (painted == ~expect).mean() > 0.999


@pytest.mark.parametrize("centres_apart_px,fruits", [(62, 1), (76, 2)])
def test_a_fruit_with_a_waist_is_one_fruit_touching_fruit_are_two(centres_apart_px, fruits):
    # two discs of radius 40 px: 62 px apart they make one blob with a waist (a lemon's outline, a
    # fruit that fills the frame), cut across 1.26 radii, so it stays one fruit; 76 px apart they
    # meet along a short chord, two fruit
    import cv2

    from grader.segment import _split_touching

    mask = np.zeros((120, 220), np.uint8)
    cv2.circle(mask, (60, 60), 40, 1, -1)
    cv2.circle(mask, (60 + centres_apart_px, 60), 40, 1, -1)
    assert len(_split_touching(mask.astype(bool), 50)) == fruits


def test_pieces_lying_on_a_larger_fruit_are_that_fruit():
    from grader.segment_pieces import pieces_of_larger

    big = np.ones((100, 100), bool)
    sliver = np.ones((20, 30), bool)  # a piece cut off by a defect, inside the big one's box
    neighbour = np.ones((90, 90), bool)  # a fruit of about the same size beside it
    boxes = [(0, 0, 100, 100), (70, 85, 100, 105), (105, 0, 195, 90)]
    assert pieces_of_larger(boxes, [big, sliver, neighbour]) == [1]
    # a small fruit clear of the big one's box stays a fruit
    assert pieces_of_larger([(0, 0, 100, 100), (150, 0, 170, 20)], [big, np.ones((20, 20), bool)]) == []
