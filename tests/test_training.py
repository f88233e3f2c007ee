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


def test_ood_energy_threshold_is_chosen_on_val_and_served(tiny_artifact):
    """The artifact carries an energy threshold, the 0.99 quantile of its val crops' energies as the
    served ONNX graph computes them, and serving turns it into DefectEvidence.ood.

    No assertion that it fires on non-fruit: an energy score of a sound/defective classifier does not
    tell fruit from non-fruit (a flat blue patch or an empty belt scores *lower* energy than fruit,
    on this tiny model and on the shipped apple model alike; see docs/defect_model.md)."""
    from service.onnx_model import OnnxDefectModel

    out, _, cfg, meta = tiny_artifact
    th = json.loads((out / "metadata.json").read_text())["thresholds"]
    assert th["ood_energy"] == meta["thresholds"]["ood_energy"] and np.isfinite(th["ood_energy"])
    assert "quantile 0.99" in th["ood_energy_rule"] and "val" in th["ood_energy_rule"]
    served = OnnxDefectModel(out, threads=1)
    assert served.spec.ood_energy_threshold == th["ood_energy"]

    # the val crops exactly as training made them (data.kind=synthetic: seeds 10_000.., cache_size side)
    n_val = max(16, int(cfg["data"]["n"]) // 4)
    val = [random_fruit_image(10_000 + i, size_px=int(cfg["data"]["cache_size"]))[0] for i in range(n_val)]
    ev = served.predict(val)
    energies = np.array([e.ood_score for e in ev])
    assert abs(np.quantile(energies, 0.99) - th["ood_energy"]) < 1e-4 * max(1.0, abs(th["ood_energy"]))
    assert all(isinstance(e.ood, bool) and e.ood == (e.ood_score > th["ood_energy"]) for e in ev)
    assert sum(e.ood for e in ev) <= max(1, int(np.ceil(0.01 * n_val)))  # val-like fruit are not OOD
    assert meta["metrics"]["val"]["ood_share"] <= max(1, int(np.ceil(0.01 * n_val))) / n_val
