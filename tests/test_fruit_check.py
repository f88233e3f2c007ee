"""The fruit check: candidate regions that are not fruit are neither graded nor queued."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from datasets.regions import Region, clutter_image, counts, one_fruit_regions  # noqa: E402
from datasets.synthetic import random_fruit_image  # noqa: E402
from inference.metadata import read_spec
from training import fruit_check, train  # noqa: E402
from training.config import DEFAULT_CONFIG, load_config

from .conftest import TINY_TRAIN  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checked_artifact(tmp_path_factory):
    """A one-epoch synthetic model on the pretrained backbone (its head alone trained), with a fruit
    check fitted on synthetic fruit against clutter."""
    root = tmp_path_factory.mktemp("fruit-check")
    out = root / "model"
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            *TINY_TRAIN,
            "name=tiny-fruit-check",
            "model.arch=efficientnet_lite0",
            "model.input_size=64",
            "model.mean=[0.498, 0.498, 0.498]",
            "model.std=[0.502, 0.502, 0.502]",
            "train.probe_epochs=1",
            f"fruit_check={{data_root: {root / 'no-data'}, n_synthetic: 60, work_dir: {root / 'work'}, l2: [1.0, 100.0]}}",
        ],
    )
    meta = train.run(cfg, out, root / "train")
    return out, meta


def test_pure_helpers():
    crop = clutter_image(3, 96)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    img, _ = random_fruit_image(5, size_px=160)
    found = one_fruit_regions(img, None)
    assert sum(f for _, f in found) == 1  # the largest proposal is the fruit
    assert all(not f for _, f in one_fruit_regions(img, None, empty=True))
    assert counts([Region("synthetic", "a", "train", True, (0, 0, 1, 1)), Region("synthetic", "b", "train", False, (0, 0, 1, 1))]) == {
        "synthetic/train": {"fruit": 1, "not_fruit": 1}
    }
    assert fruit_check.pick_threshold(np.linspace(0, 1, 1001), 0.99) == pytest.approx(0.01, abs=1e-3)
    # with not-fruit scores: the best balanced accuracy among thresholds that keep 99 % of the fruit
    fruit, other = np.linspace(0.5, 1, 101), np.linspace(0, 0.6, 61)
    t = fruit_check.pick_threshold(fruit, 0.99, other)
    assert (fruit >= t).mean() >= 0.99 and t == pytest.approx(0.5, abs=0.01)


def test_artifact_carries_the_fruit_check(checked_artifact):
    out, meta = checked_artifact
    spec = read_spec(json.loads((out / "metadata.json").read_text()))
    assert spec.fruit_threshold is not None and 0 <= spec.fruit_threshold <= 1
    assert "fruit_score" in meta["outputs"] and "fruit_rule" in meta["thresholds"]
    fc = meta["metrics"]["fruit_check"]
    assert fc["val"]["fruit_kept"] >= 0.95 and fc["val"]["not_fruit_rejected"] >= 0.9
    # the L2 strength chosen on val among the config's: the one with the best val balanced accuracy
    out_fc = meta["outputs"]["fruit_score"]
    tried = out_fc["l2_balanced_accuracy"]
    assert set(tried) == {"1", "100"} and tried[f"{out_fc['l2']:g}"] == max(tried.values())
    assert "L2 strength chosen" in meta["thresholds"]["fruit_rule"]


def test_serving_drops_what_is_not_fruit(checked_artifact):
    from grader.pipeline import grade_image
    from grader.standards import get_standard, load_standards
    from service.onnx_model import OnnxDefectModel

    out, _ = checked_artifact
    model = OnnxDefectModel(out, threads=1)
    assert "fruit_score" in model.extra_outputs
    fruit, _ = random_fruit_image(123, size_px=200)
    standard = get_standard(load_standards(), "unece-ffv50-apples")
    graded = grade_image(fruit, model, standard, mm_per_px=0.4)
    assert len(graded.fruits) == 1 and graded.rejected == []
    ev = graded.fruits[0].defect
    assert ev.fruit_score is not None and ev.is_fruit is True
    assert graded.fruits[0].to_dict()["defect"]["fruit_score"] == pytest.approx(ev.fruit_score, abs=1e-4)
    # a textured blob on a plain background: the segmentation proposes it, the fruit check drops it
    clutter = np.full((200, 200, 3), 40, np.uint8)
    clutter[20:180, 20:180] = clutter_image(9, 160)
    graded = grade_image(clutter, model, standard, mm_per_px=0.4)
    assert graded.fruits == []
    assert graded.to_dict()["rejected_candidates"] == len(graded.rejected) >= 1
    assert any(f.code == "no_fruit" and "not fruit" in f.reason for f in graded.image_flags)


def test_retrofit_command_adds_the_branch_once(checked_artifact, tmp_path):
    import shutil

    import onnx

    out, _ = checked_artifact
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert (
        fruit_check.main(
            [str(copy), "--data-root", str(tmp_path / "none"), "--work-dir", str(tmp_path / "w"), "--n-synthetic", "40", "--write"]
        )
        == 0
    )
    graph = onnx.load(str(copy / "model.onnx"))
    assert [o.name for o in graph.graph.output].count("fruit_score") == 1
    assert read_spec(json.loads((copy / "metadata.json").read_text())).fruit_threshold is not None
