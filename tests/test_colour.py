"""The colour code of grader/colour.py: the colour transfer shared by training's augmentation and the
citrus source-bias check, and the per-crop colour normalisation of a model's preprocessing."""

import cv2
import numpy as np
import pytest

from datasets.synthetic import make_fruit_image
from grader.colour import resized_fruit_mask
from grader.crop import crop_for_model
from grader.crop_fill import CROP_FILL_RGB
from grader.segment import segment_fruits
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


def _reference_transfer(crop: np.ndarray, target, min_std: float = 0.0) -> np.ndarray:
    """The transfer as first written (per-pixel numpy on the fruit pixels): the reference the
    one-pass OpenCV version in grader/colour.py keeps to. They differ by the float32 spread numpy
    sums (OpenCV's is exact), which moves a few pixels across a rounding step."""
    fruit = (np.abs(crop.astype(np.int16) - np.array(CROP_FILL_RGB, np.int16)) > 2).any(axis=2)
    px = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)[fruit]
    own = px.mean(0), px.std(0) + 1e-3
    lab = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[fruit] = (lab[fruit] - own[0]) / np.maximum(own[1], min_std) * target[1] + target[0]
    out = cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    out[~fruit] = crop[~fruit]
    return out


def test_the_fast_transfer_and_fruit_mask_keep_to_the_reference():
    rng = np.random.default_rng(5)
    for i, colour in enumerate(("orange", "lemon", "red", "green")):
        crop = _crop(colour, 10 + i)
        crop[rng.random(crop.shape[:2]) < 0.01] = rng.integers(0, 256, 3)  # stray pixels, fill-like ones too
        ref_mask = (np.abs(crop.astype(np.int16) - np.array(CROP_FILL_RGB, np.int16)) > 2).any(axis=2)
        assert (fruit_pixels(crop) == ref_mask).all()
        assert (fruit_pixels(crop.astype(np.int32)) == ref_mask).all()  # not uint8: the plain numpy test
        target = (np.array([150.0, 125.0, 160.0], np.float32), np.array([30.0, 12.0, 12.0], np.float32))
        got, want = colour_transfer(crop, target), _reference_transfer(crop, target)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 2 and (diff == 0).mean() > 0.95, (colour, diff.max(), (diff == 0).mean())


# ----------------------------------------------------------------------------- preprocessing.colour_normalise
def _spec(norm: dict | None = None, size: int = 96):
    from inference.metadata import read_spec

    pre = {"input_size": [size, size], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_margin_frac": 0.08}
    if norm is not None:
        pre["colour_normalise"] = norm
    return read_spec({"name": "t", "version": "0", "classes": ["sound", "defective"], "preprocessing": pre})


NORM = {"method": "reinhard-lab", "mean": [150.0, 125.0, 160.0], "std": [30.0, 12.0, 12.0], "min_std": 1.0}


def _cast(crop: np.ndarray, gain: tuple[float, float, float], gamma: float = 1.0) -> np.ndarray:
    """The same fruit under another camera and light: a per-channel gain and an exposure curve on the
    fruit pixels (the painted-out background stays CROP_FILL_RGB, as crop_for_model paints it)."""
    fruit = fruit_pixels(crop)
    x = 255.0 * (crop.astype(np.float32) / 255.0) ** gamma * np.array(gain, np.float32)
    out = crop.copy()
    out[fruit] = np.clip(x, 0, 255).round().astype(np.uint8)[fruit]
    return out


def _blemished_crop(colour: str) -> tuple[np.ndarray, np.ndarray]:
    """A fruit crop with a dark spot, and the spot's pixels (where it differs from the same fruit
    drawn without the spot)."""
    clean, _ = make_fruit_image(seed=3, diameter_mm=60, colour=colour)
    spotted, _ = make_fruit_image(seed=3, diameter_mm=60, colour=colour, blemishes_cm2=(2.0,))
    seg = segment_fruits(clean)[0]
    a, b = (crop_for_model(x, seg.bbox, 0.08, seg.mask) for x in (clean, spotted))
    return b, np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 60


def test_normalised_crops_of_one_fruit_under_two_colour_casts_are_near_identical():
    from grader.defect import preprocess

    crop, _ = _blemished_crop("green")
    warm = _cast(crop, (1.18, 0.98, 0.78), gamma=0.85)  # warm light, brighter
    cold = _cast(crop, (0.80, 0.95, 1.15), gamma=1.2)  # cold light, darker
    plain, norm = _spec(), _spec(NORM)
    before = np.abs(preprocess([warm], plain) - preprocess([cold], plain)).mean()
    after = np.abs(preprocess([warm], norm) - preprocess([cold], norm)).mean()
    assert before > 0.3  # the cast moves the model's input a lot ...
    assert after < 0.1 * before, (before, after)  # ... normalised, an order of magnitude less
    # the fruit pixels carry the canonical Lab mean and spread, whatever the cast
    for x in (warm, cold):
        side = norm.input_size[0]
        small = cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA)
        out = norm.colour_normalise.apply(small, resized_fruit_mask(x, (side, side), cv2.INTER_AREA))
        mu, sd = fruit_colour_stats(out, resized_fruit_mask(x, (side, side), cv2.INTER_AREA))
        assert mu == pytest.approx(NORM["mean"], abs=2.0) and sd == pytest.approx(NORM["std"], abs=2.0)


@pytest.mark.parametrize("colour", ["red", "green", "yellow"])
def test_a_blemish_stays_darker_than_the_skin_after_normalisation(colour):
    crop, spot = _blemished_crop(colour)
    fruit = fruit_pixels(crop)
    assert spot.sum() > 200 and (spot & ~fruit).sum() == 0
    norm = _spec(NORM).colour_normalise
    for x in (crop, _cast(crop, (1.2, 1.0, 0.8)), _cast(crop, (0.8, 0.9, 1.2), gamma=1.3)):
        out = norm.apply(x)
        lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(np.float32)
        spot_l, skin_l = lab[spot, 0].mean(), lab[fruit & ~spot, 0].mean()
        assert spot_l < skin_l - 25, (colour, spot_l, skin_l)  # still clearly darker
        assert (out[~fruit] == np.array(CROP_FILL_RGB, np.uint8)).all()  # the fill is not fruit: untouched


def test_without_the_key_preprocessing_is_as_before():
    """An artifact without preprocessing.colour_normalise (every model shipped before it) gets
    exactly the preprocessing it always had: resize, /255, mean/std."""
    from grader.defect import preprocess

    spec = _spec()
    assert spec.colour_normalise is None
    crops = [_crop("red", 1), _crop("lemon", 2)[:60, :70], np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)]
    want = []
    for c in crops:
        interp = cv2.INTER_AREA if c.shape[0] >= 96 else cv2.INTER_LINEAR
        x = cv2.resize(c, (96, 96), interpolation=interp).astype(np.float32) / 255.0
        want.append(
            (x.transpose(2, 0, 1) - np.array(spec.mean, np.float32).reshape(3, 1, 1)) / np.array(spec.std, np.float32).reshape(3, 1, 1)
        )
    assert np.array_equal(preprocess(crops, spec), np.stack(want))
    # and the key changes it
    assert not np.array_equal(preprocess(crops, _spec(NORM)), np.stack(want))


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "histogram", "mean": [1, 2, 3], "std": [1, 1, 1]},
        {"method": "reinhard-lab", "mean": [1, 2], "std": [1, 1, 1]},
        {"method": "reinhard-lab", "mean": [1, 2, 3], "std": [1, 0, 1]},
        {"method": "reinhard-lab", "std": [1, 1, 1]},
    ],
)
def test_a_malformed_colour_normalise_is_refused(bad):
    from grader.errors import InvalidModelArtifact

    with pytest.raises(InvalidModelArtifact):
        _spec(bad)


def test_a_grey_crop_and_too_little_fruit_stay_finite():
    norm = _spec(NORM).colour_normalise
    grey = cv2.cvtColor(cv2.cvtColor(_crop("red", 1), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    out = norm.apply(grey)  # a and b have no spread: min_std keeps them from being blown up
    lab = cv2.cvtColor(out, cv2.COLOR_RGB2LAB).astype(np.float32)[fruit_pixels(grey)]
    assert lab[:, 1:].std(0).max() < 3.0
    tiny = np.full((32, 32, 3), CROP_FILL_RGB, np.uint8)
    tiny[:4, :4] = (200, 30, 30)
    assert norm.apply(tiny) is tiny  # fewer than MIN_FRUIT_PIXELS fruit pixels: left as it is


def test_training_normalises_after_augmentation_as_serving_does():
    """training.train.NormalisingTransform: the fruit mask rides along crop, flips and rotation, the
    colour jitter changes the RGB only, and the augmented crop's fruit pixels end at the canonical
    Lab mean and spread (its rotated-in black corners and jittered fill not counted)."""
    torch = pytest.importorskip("torch")
    from training.config import DEFAULT_CONFIG, colour_normalise_of, load_config
    from training.data import CropDataset, NormalisingTransform, resolve_colour_normalise, train_transform

    cfg = load_config(DEFAULT_CONFIG, ["model.input_size=96", "model.colour_normalise=reinhard-lab"])
    crops = np.stack(
        [cv2.resize(_crop(c, s), (128, 128), interpolation=cv2.INTER_AREA) for s, c in enumerate(["red", "green", "lemon", "orange"])]
    )
    cfg = resolve_colour_normalise(cfg, crops)
    norm = colour_normalise_of(cfg)
    assert cfg["model"]["colour_normalise"]["mean"] == pytest.approx(list(mean_colour_stats(list(crops))[0]), abs=1e-3)
    tf = train_transform(cfg)
    assert isinstance(tf, NormalisingTransform)
    ds = CropDataset(crops, np.zeros(len(crops), int), tf, colour_transfer_p=0.5, seed=0)
    x, _ = ds[0]
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32
    mean = np.array(cfg["model"]["mean"], np.float32)
    std = np.array(cfg["model"]["std"], np.float32)
    rotated = 0
    for seed in range(12):
        crop = crops[seed % len(crops)]
        rgb_in = torch.from_numpy(crop).permute(2, 0, 1)
        torch.manual_seed(seed)
        x = tf(rgb_in, fruit_pixels(crop))
        got = np.clip((x.permute(1, 2, 0).numpy() * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        # replay the steps with the same torch draws: geometric (the fruit mask riding along as a fourth
        # channel), colour on the RGB only, then the normalisation on the augmented crop's fruit pixels
        torch.manual_seed(seed)
        x4 = tf.geometric(torch.cat([rgb_in, torch.from_numpy(fruit_pixels(crop).astype(np.uint8) * 255)[None]]))
        fruit = (x4[3] >= 128).numpy()
        corners = (x4[:3] == 0).all(0).numpy()  # rotated in: black, and not fruit
        rotated += int(corners.sum() > 50)
        assert not (corners & fruit).any()
        jittered = np.ascontiguousarray(tf.colour(x4[:3]).permute(1, 2, 0).numpy())
        want = norm.apply(jittered, fruit)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # (float round trip)
        assert not (fruit_pixels(jittered) == fruit).all()  # the jittered fill is no longer CROP_FILL_RGB: the mask is needed
        # the fruit now has the canonical lightness and colour (the chroma spread may fall short where
        # the stretched colours leave the RGB gamut and are clipped, as in serving)
        mu, sd = fruit_colour_stats(got, fruit)
        assert mu == pytest.approx(norm.mean, abs=6.0) and sd[0] == pytest.approx(norm.std[0], abs=4.0)
    assert rotated >= 6  # most draws rotated black corners in, and none of them counted as fruit
    # off (the default config): the same transforms as always, one Compose
    assert not isinstance(train_transform(load_config(DEFAULT_CONFIG)), NormalisingTransform)


def test_classes_that_keep_their_colour_neither_take_nor_lend_it():
    """augment.colour_transfer_keep: a rotten crop keeps its browning (it is the evidence), and no
    other crop is given a rotten crop's colour; the other crops are transferred among themselves."""
    pytest.importorskip("torch")
    from training.config import DEFAULT_CONFIG, colour_keep_of, load_config
    from training.data import CropDataset

    crops = np.stack(
        [cv2.resize(_crop(c, s), (96, 96), interpolation=cv2.INTER_AREA) for s, c in enumerate(["orange", "lemon", "red", "green"])]
    )
    labels = np.array([4, 4, 0, 0])  # two "rot" crops kept, two sound ones
    ds = CropDataset(crops, labels, lambda x: x, colour_transfer_p=1.0, seed=0, keep_colour=labels == 4)
    rot_means = [fruit_colour_stats(c)[0] for c in crops[:2]]
    for _ in range(10):
        for i in range(4):
            x, _ = ds[i]
            out = x.permute(1, 2, 0).numpy()
            if i < 2:
                assert np.array_equal(out, crops[i])  # kept as it is
            else:
                mean = fruit_colour_stats(out)[0]
                assert all(np.abs(mean - m).max() > 5 for m in rot_means)  # never a rotten crop's colour
    cfg = load_config(
        DEFAULT_CONFIG,
        ["model.classes=[sound, blackspot, canker, greening, rot]", "model.defective_classes=[blackspot, canker, greening, rot]"],
    )
    assert colour_keep_of(cfg) == []
    cfg["augment"]["colour_transfer_keep"] = ["rot"]
    assert colour_keep_of(cfg) == ["rot"]
    for bad in ("rot", ["mould"]):
        cfg["augment"]["colour_transfer_keep"] = bad
        with pytest.raises(ValueError, match="colour_transfer_keep"):
            colour_keep_of(cfg)
