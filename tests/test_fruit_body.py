"""grader.measure.fruit_body: what sticks out of a fruit's round body (a hand, a finger) painted out
of the model crop, as a model's preprocessing (``preprocessing.fruit_body``) in serving and training."""

import cv2
import numpy as np
import pytest

from datasets.synthetic import make_fruit_image
from grader.crop import crop_for_model, fruit_body
from grader.crop_fill import CROP_FILL_RGB
from grader.segment import segment_fruits

from .conftest import TINY_TRAIN

FILL = np.array(CROP_FILL_RGB, np.uint8)


def _held_fruit(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red fruit with a skin-coloured "hand" (a palm and two fingers) touching it, segmented as
    one region: (model crop, the fruit disc's mask, the hand's mask), both masks in crop pixels."""
    img, truth = make_fruit_image(seed=seed, diameter_mm=60, mm_per_px=0.25, colour="red", size_px=(420, 420))
    cx, cy = 210, 210
    r = 60 / 0.25 / 2
    hand = np.zeros(img.shape[:2], np.uint8)
    cv2.rectangle(hand, (int(cx - 60), int(cy + r - 10)), (int(cx + 60), 419), 1, -1)  # the palm under the fruit
    cv2.rectangle(hand, (int(cx + r - 15), int(cy - 20)), (int(cx + r + 70), int(cy - 2)), 1, -1)  # a finger to the side
    img[hand > 0] = (205, 150, 120)
    [seg] = [s for s in segment_fruits(img)]
    crop = crop_for_model(img, seg.bbox, 0.08, seg.mask)
    disc = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(disc, (cx, cy), int(r) - 3, 1, -1)
    side = crop.shape[0]
    sx0 = int(round((seg.bbox[0] + seg.bbox[2]) / 2 - side / 2))
    sy0 = int(round((seg.bbox[1] + seg.bbox[3]) / 2 - side / 2))
    pad = max(0, -sx0, -sy0)

    def in_crop(m: np.ndarray) -> np.ndarray:
        big = cv2.copyMakeBorder(m, pad, pad + side, pad, pad + side, cv2.BORDER_CONSTANT, value=0)
        return big[sy0 + pad : sy0 + pad + side, sx0 + pad : sx0 + pad + side].astype(bool)

    far_hand = hand.copy()
    cv2.circle(far_hand, (cx, cy), int(r * 1.3), 0, -1)  # the hand beyond 1.3 radii of the centre
    return crop, in_crop(disc), in_crop(far_hand)


def test_a_hand_is_painted_out_and_the_fruit_kept():
    crop, disc, far_hand = _held_fruit()
    painted = (crop == FILL).all(axis=2)
    assert (~painted & far_hand).sum() > 2000  # the segmentation took the hand in with the fruit
    out = fruit_body(crop, 1.15)
    painted = (out == FILL).all(axis=2)
    assert painted[far_hand].mean() > 0.99  # the hand beyond the body is gone
    assert not painted[disc].any()  # every pixel of the fruit kept
    assert np.array_equal(out[~painted], crop[~painted])  # nothing else changed
    assert out.shape == crop.shape  # the crop's geometry is the same (maps over it still fit)
    assert np.array_equal(fruit_body(out, 1.15), out)  # idempotent


def test_a_round_fruit_alone_is_left_as_it_is():
    img, _ = make_fruit_image(seed=5, diameter_mm=70, mm_per_px=0.25, colour="green")
    [seg] = segment_fruits(img)
    crop = crop_for_model(img, seg.bbox, 0.08, seg.mask)
    assert np.array_equal(fruit_body(crop, 1.15), crop)
    empty = np.empty((40, 40, 3), np.uint8)
    empty[:] = FILL
    assert fruit_body(empty, 1.15) is empty


def _spec(body=None):
    from inference.metadata import read_spec

    pre = {"input_size": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if body is not None:
        pre["fruit_body"] = body
    return read_spec({"name": "t", "version": "0", "classes": ["sound", "defective"], "preprocessing": pre})


def test_the_metadata_key_makes_preprocess_cut_the_body_first():
    from grader.defect import preprocess

    crop, _, _ = _held_fruit()
    plain, body = _spec(), _spec({"factor": 1.15})
    assert plain.fruit_body is None and body.fruit_body == 1.15
    assert np.array_equal(preprocess([crop], body), preprocess([fruit_body(crop, 1.15)], plain))
    assert not np.array_equal(preprocess([crop], body), preprocess([crop], plain))


@pytest.mark.parametrize("bad", [{"factor": 0.5}, {"factor": 9}, {}, {"factor": "wide"}])
def test_a_malformed_fruit_body_is_refused(bad):
    from grader.errors import InvalidModelArtifact

    with pytest.raises(InvalidModelArtifact):
        _spec(bad)


def test_training_cuts_the_train_crops_and_records_the_step(tmp_path):
    """``model.fruit_body`` in a config: the train crops get the cut before augmentation, val and test
    get it in preprocess() as served crops do, and the metadata carries it for serving."""
    pytest.importorskip("torch")
    import json

    from training import train
    from training.config import DEFAULT_CONFIG, fruit_body_of, load_config

    for bad in (0.9, True, "yes"):
        with pytest.raises(ValueError, match="model.fruit_body"):
            fruit_body_of({"model": {"fruit_body": bad}})
    cfg = load_config(DEFAULT_CONFIG, [*TINY_TRAIN, "name=tiny-body", "model.fruit_body=1.2"])
    meta = train.run(cfg, tmp_path / "art", tmp_path / "work")
    assert meta["preprocessing"]["fruit_body"]["factor"] == 1.2
    assert json.loads((tmp_path / "art" / "metadata.json").read_text())["preprocessing"]["fruit_body"]["factor"] == 1.2
    from service.onnx_model import OnnxDefectModel

    assert OnnxDefectModel(tmp_path / "art", threads=1).spec.fruit_body == 1.2
