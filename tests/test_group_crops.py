"""Fruit cut out of photos with several apples (FruitNet's group photos) as training crops."""

from __future__ import annotations

import cv2
import numpy as np

from datasets.fruitnet import group_items, manifest_hash
from datasets.synthetic import FruitSpec, make_frame
from training.crops import group_crop_cache, group_fruit_crops


def _group_photo(seed: int = 0) -> np.ndarray:
    """Two whole apples, one cut by the frame edge, a teal strip and a black bar on a cup-grey table."""
    img, _ = make_frame(
        [FruitSpec(60, (40, 50), "red"), FruitSpec(55, (110, 50), "green"), FruitSpec(60, (5, 110), "red")],
        mm_per_px=0.5,
        size_px=(256, 320),
        background="cup",
        seed=seed,
    )
    cv2.rectangle(img, (100, 228), (200, 250), (0, 160, 160), -1)  # teal table edge: not fruit-coloured
    cv2.rectangle(img, (285, 20), (315, 120), (20, 20, 22), -1)  # a black box: dark, grey
    return img


def test_only_whole_fruit_coloured_segments_become_crops():
    crops = group_fruit_crops(_group_photo(), margin_frac=0.08)
    assert len(crops) == 2  # the apple cut by the edge, the strip and the box are left out
    for c in crops:
        assert c.shape[0] == c.shape[1]
        hsv = cv2.cvtColor(c, cv2.COLOR_RGB2HSV_FULL)
        assert np.median(hsv[..., 1][hsv[..., 1] > 0]) > 80  # fruit, not the grey table painted out


def test_group_crop_cache_maps_each_crop_to_its_photo(tmp_path):
    paths = []
    for i, n_extra in enumerate((0, 1)):
        img = _group_photo(seed=i)
        if n_extra:  # the second photo has a third whole apple
            cv2.circle(img, (225, 220), 24, (200, 40, 40), -1)
        p = tmp_path / f"g{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    crops, photo = group_crop_cache(paths, 64, 0.08, tmp_path / "cache")
    assert crops.shape == (5, 64, 64, 3) and crops.dtype == np.uint8
    assert photo.tolist() == [0, 0, 1, 1, 1]
    again, photo2 = group_crop_cache(paths, 64, 0.08, tmp_path / "cache")  # from the cache
    assert np.array_equal(again, crops) and np.array_equal(photo2, photo)


def test_group_items_take_only_the_named_sessions_and_labelled_folders(tmp_path):
    for folder, names in {
        "good": ["IMG20200728174136.jpg", "20190809_1.jpg"],
        "bad": ["IMG_20190910_172750.jpg"],
        "mixed": ["IMG20200728125930.jpg"],
    }.items():
        (tmp_path / "group" / folder).mkdir(parents=True)
        for n in names:
            (tmp_path / "group" / folder / n).write_bytes(n.encode())
    items = group_items(tmp_path, ["20200728", "20190910"])
    assert [(i.path, i.label, i.session, i.split) for i in items] == [
        ("group/good/IMG20200728174136.jpg", "sound", "20200728", "train"),
        ("group/bad/IMG_20190910_172750.jpg", "defective", "20190910", "train"),
    ]
    assert all(len(i.sha256) == 64 for i in items)
    assert manifest_hash(items) != manifest_hash(items[:1])
