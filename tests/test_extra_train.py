"""data.extra_train: other fruit's photos added to a model's train split (their own train split
only), labelled in the model's classes, on a tiny data tree of synthetic fruit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from datasets import citrus  # noqa: E402
from datasets.synthetic import random_fruit_image  # noqa: E402
from training.config import DEFAULT_CONFIG, load_config
from training.data import extra_train_items, load_data

APPLE_SESSIONS = {"train": ["20190809"], "val": ["20190812"], "test": ["20190824"]}


def _write(path: Path, seed: int, defective: bool | None) -> None:
    img, _ = random_fruit_image(seed, defective, size_px=96)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """``fruitnet-apples/single/{good,bad}`` (three sessions) and ``lemons/{good,bad,empty}``."""
    root = tmp_path_factory.mktemp("shared")
    seed = 0
    for session in ("20190809", "20190812", "20190824"):
        for folder, bad in (("good", False), ("bad", True)):
            for i in range(4):
                seed += 1
                _write(root / "fruitnet-apples" / "single" / folder / f"{session}_1200{i:02d}.jpg", seed, bad)
    for folder, bad in (("good", False), ("bad", True), ("empty", None)):
        for i in range(10):
            seed += 1
            if bad is None:  # an empty belt frame
                path = root / "lemons" / folder / f"empty_{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.random.default_rng(i).integers(90, 110, (96, 96, 3), dtype=np.uint8))
            else:
                _write(root / "lemons" / folder / f"{folder}_{i}.jpg", seed, bad)
    return root


def _apple_cfg(root: Path, extra: list[dict]) -> dict:
    cfg = load_config(DEFAULT_CONFIG, ["data.cache_size=64"])
    cfg["data"].update({"root": str(root / "fruitnet-apples"), "splits": APPLE_SESSIONS, "extra_train": extra})
    return cfg


def test_extra_photos_are_the_sources_own_train_split_in_the_models_classes(data_root, tmp_path):
    cfg = _apple_cfg(data_root, [{"kind": "citrus", "commodity": "lemon", "root": str(data_root)}])
    items = extra_train_items(cfg, tmp_path)
    lemon_train = {it.path: it for it in citrus.build_manifest(data_root, "lemon", cache_dir=tmp_path / "cache") if it.split == "train"}
    assert items and all(it["split"] == "train" and it["extra"] for it in items)
    # exactly the lemons' own train split: never a photo their val or test holds; empty frames left out
    assert {str(Path(it["path"]).relative_to("..")) for it in items} == {p for p, it in lemon_train.items() if it.label != "empty"}
    assert {it["label"] for it in items} <= {"sound", "defective"} and {it["session"] for it in items} == {"lemons"}
    for it in items:  # paths resolve under the model's own data.root, and the hash is the file's
        assert (Path(cfg["data"]["root"]) / it["path"]).is_file()
        assert it["sha256"] == lemon_train[str(Path(it["path"]).relative_to(".."))].sha256


def test_load_data_adds_them_to_train_only_and_the_digest_covers_them(data_root, tmp_path):
    plain = load_data(_apple_cfg(data_root, []), tmp_path)
    extra = [{"kind": "citrus", "commodity": "lemon", "root": str(data_root), "group": "other-fruit"}]
    crops, labels, sessions, manifest, digest = load_data(_apple_cfg(data_root, extra), tmp_path)
    n_extra = len(extra_train_items(_apple_cfg(data_root, extra), tmp_path))
    assert len(crops["train"]) == len(plain[0]["train"]) + n_extra == len(labels["train"]) == len(sessions["train"])
    for split in ("val", "test"):
        assert (crops[split] == plain[0][split]).all() and (labels[split] == plain[1][split]).all()
    assert Counter(sessions["train"])["other-fruit"] == n_extra
    assert digest != plain[4] and len(manifest) == len(plain[3]) + n_extra
    json.dumps(manifest)  # written with the artifact as it is


def test_an_orange_model_takes_apples_and_lemons_as_rot(data_root, tmp_path):
    cfg = load_config(Path("training/configs/orange_defect.yaml"))
    cfg["data"]["root"] = str(data_root)
    cfg["data"]["extra_train"] = [
        {"kind": "citrus", "commodity": "lemon", "labels": {"defective": "rot"}},
        {
            "kind": "fruitnet",
            "root": str(data_root / "fruitnet-apples"),
            "sessions": ["20190809"],
            "labels": {"defective": "rot"},
            "group": "apples",
        },
    ]
    items = extra_train_items(cfg, tmp_path)
    by = Counter((it["session"], it["label"]) for it in items)
    assert by[("apples", "sound")] == 4 and by[("apples", "rot")] == 4  # one session's 8 photos, no other session's
    assert {lab for _, lab in by} == {"sound", "rot"}
    assert all((data_root / it["path"]).is_file() for it in items)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([{"kind": "citrus", "commodity": "orange"}], "own data"),
        ([{"kind": "citrus", "commodity": "kiwi"}], "commodity must be one of"),
        ([{"kind": "fruitnet", "sessions": ["20190809"]}], "own data"),
        ([{"kind": "pears"}], "kind must be citrus or fruitnet"),
        ([{"kind": "citrus", "commodity": "lemon", "labels": {"defective": "mould"}}], "not classes of this model"),
        ({"kind": "citrus"}, "must be a list"),
    ],
)
def test_bad_extra_sources_are_refused(data_root, tmp_path, extra, message):
    cfg = load_config(Path("training/configs/orange_defect.yaml"))
    cfg["data"].update({"root": str(data_root), "extra_train": extra})
    if extra == [{"kind": "fruitnet", "sessions": ["20190809"]}]:
        cfg = _apple_cfg(data_root, extra)
    with pytest.raises(ValueError, match=message):
        extra_train_items(cfg, tmp_path)


def test_a_fruitnet_source_must_name_its_sessions(data_root, tmp_path):
    cfg = load_config(Path("training/configs/orange_defect.yaml"))
    cfg["data"].update({"root": str(data_root), "extra_train": [{"kind": "fruitnet", "root": str(data_root / "fruitnet-apples")}]})
    with pytest.raises(ValueError, match="names its sessions"):
        extra_train_items(cfg, tmp_path)
