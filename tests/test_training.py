"""Train a tiny model on synthetic fruit, export it, and serve it through the ONNX Runtime path."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datasets.synthetic import random_fruit_image  # noqa: E402
from grader.defect import preprocess, softmax  # noqa: E402
from grader.measure import crop_for_model, segment_fruits  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    from training import train

    out = tmp_path_factory.mktemp("artifact")
    work = tmp_path_factory.mktemp("work")
    cfg = train.load_config(
        train.DEFAULT_CONFIG,
        ["data.kind=synthetic", "data.n=48", "data.cache_size=96", "train.epochs=1", "train.batch_size=16",
         "model.arch=small_fruitnet", "model.input_size=64", "name=tiny-test", "version=0.0.1"],
    )
    meta = train.run(cfg, out, work)
    return out, work, cfg, meta


def test_artifact_has_everything_serving_needs(tiny_artifact):
    out, _, _, meta = tiny_artifact
    for f in ("model.onnx", "metadata.json", "config.yaml", "manifest.json", "metrics.json"):
        assert (out / f).exists(), f
    m = json.loads((out / "metadata.json").read_text())
    assert m["classes"] == ["sound", "defective"]
    assert m["preprocessing"]["input_size"] == [64, 64]
    assert {"balanced_accuracy", "recall_defective"} <= set(m["metrics"]["test"])
    assert m["training_data"]["manifest_sha256"] and m["version"] == "0.0.1"
    assert m["metrics"]["onnx_check"]["max_abs_diff_scores"] < 1e-4


def test_onnx_serving_path_matches_torch(tiny_artifact):
    from service.onnx_model import OnnxDefectModel
    from training.models_registry import build_model

    out, work, cfg, _ = tiny_artifact
    model = build_model("small_fruitnet", 2)
    model.load_state_dict(torch.load(work / "best.pt"))
    model.eval()
    served = OnnxDefectModel(out, threads=1)

    crops = []
    for seed in range(8):
        img, _ = random_fruit_image(500 + seed)
        seg = segment_fruits(img)[0]
        crops.append(crop_for_model(img, seg.bbox, served.spec.crop_margin_frac, seg.mask))
    with torch.no_grad():
        logits = model(torch.from_numpy(preprocess(crops, served.spec))).numpy().astype(np.float64)
    ref = softmax(logits, served.spec.temperature)[:, 1]
    got = np.array([e.score for e in served.predict(crops)])
    assert np.abs(ref - got).max() < 1e-4
    assert served.check_parity() < 1e-4  # the recorded parity logits (torch) are what the graph computes
