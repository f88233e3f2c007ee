"""Train a tiny model on synthetic fruit, export it, and serve it through the ONNX Runtime path."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datasets.synthetic import random_fruit_image  # noqa: E402
from grader.crop import crop_for_model  # noqa: E402
from grader.defect import preprocess, softmax  # noqa: E402
from grader.segment import segment_fruits  # noqa: E402
from inference.metadata import read_spec  # noqa: E402

from .conftest import TINY_TRAIN  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    from training import train
    from training.config import DEFAULT_CONFIG, load_config

    out = tmp_path_factory.mktemp("artifact")
    work = tmp_path_factory.mktemp("work")
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "data.kind=synthetic",
            "data.n=48",
            "data.cache_size=96",
            "train.epochs=1",
            "train.batch_size=16",
            "model.arch=small_fruitnet",
            "model.input_size=64",
            "name=tiny-test",
            "version=0.0.1",
            "model.test_time_views=1",
        ],  # the crop alone: these tests compare the graph with the torch network itself
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


def _torch_and_served(tiny_artifact):
    """The tiny artifact's best checkpoint in torch (eval mode) and its ONNX graph as the service loads it."""
    from service.onnx_model import OnnxDefectModel
    from training.models_registry import build_model

    out, work, _, _ = tiny_artifact
    model = build_model("small_fruitnet", 2)
    model.load_state_dict(torch.load(work / "best.pt"))
    model.eval()
    return model, OnnxDefectModel(out, threads=1)


def test_onnx_serving_path_matches_torch(tiny_artifact):
    model, served = _torch_and_served(tiny_artifact)
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


def test_colour_normalised_artifact_serves_what_torch_computes(tmp_path_factory):
    """model.colour_normalise on: the canonical Lab colour fitted on the train crops travels in
    config.yaml and metadata.json (preprocessing.colour_normalise), serving reads it, and the served
    ONNX scores on fresh segmented crops equal torch's on the same preprocessing."""
    from dataclasses import replace

    import yaml

    from grader.colour import ColourNormalise
    from service.onnx_model import OnnxDefectModel
    from training import train
    from training.config import DEFAULT_CONFIG, load_config, spec_for
    from training.models_registry import build_model

    out, work = tmp_path_factory.mktemp("artifact-norm"), tmp_path_factory.mktemp("work-norm")
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "data.kind=synthetic",
            "data.n=48",
            "data.cache_size=96",
            "train.epochs=1",
            "train.batch_size=16",
            "model.arch=small_fruitnet",
            "model.input_size=64",
            "name=tiny-norm",
            "version=0.0.1",
            "model.colour_normalise=reinhard-lab",
            "model.test_time_views=1",
        ],
    )
    meta = train.run(cfg, out, work)
    norm = json.loads((out / "metadata.json").read_text())["preprocessing"]["colour_normalise"]
    assert norm["method"] == "reinhard-lab" and len(norm["mean"]) == len(norm["std"]) == 3
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"]["colour_normalise"]["mean"], saved["model"]["colour_normalise"]["std"]) == (norm["mean"], norm["std"])
    # the artifact's config.yaml gives the same preprocessing (training.explain and ood_threshold remake crops from it)
    assert spec_for(saved).colour_normalise == ColourNormalise.from_dict(norm)
    assert meta["metrics"]["onnx_check"]["max_abs_diff_scores"] < 1e-4

    served = OnnxDefectModel(out, threads=1)
    assert served.spec.colour_normalise == ColourNormalise.from_dict(norm)
    model = build_model("small_fruitnet", 2)
    model.load_state_dict(torch.load(work / "best.pt"))
    model.eval()
    crops = []
    for seed in range(8):
        img, _ = random_fruit_image(700 + seed)
        seg = segment_fruits(img)[0]
        crops.append(crop_for_model(img, seg.bbox, served.spec.crop_margin_frac, seg.mask))
    batch = preprocess(crops, served.spec)
    assert not np.allclose(batch, preprocess(crops, replace(served.spec, colour_normalise=None)))  # it is applied
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy().astype(np.float64)
    ref = softmax(logits, served.spec.temperature)[:, 1]
    got = np.array([e.score for e in served.predict(crops)])
    assert np.abs(ref - got).max() < 1e-4
    assert served.check_parity() < 1e-4


def test_ood_energy_threshold_is_chosen_on_val_and_served(tiny_artifact):
    """The artifact carries an energy threshold, the 0.99 quantile of its val crops' energies as the
    served ONNX graph computes them, and serving turns it into one of DefectEvidence.ood's signals.

    No assertion that energy fires on non-fruit: an energy score of a sound/defective classifier does
    not tell fruit from non-fruit (a flat blue patch or an empty belt scores *lower* energy than fruit,
    on this tiny model and on the shipped apple model alike; see docs/lab/defect_model.md). The feature
    distance does on this model: test_ood_distance_fires_on_non_fruit."""
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
    assert all(("energy" in e.ood_signals) == (e.ood_score > th["ood_energy"]) for e in ev)
    assert sum("energy" in e.ood_signals for e in ev) <= max(1, int(np.ceil(0.01 * n_val)))  # val-like fruit are not OOD
    assert meta["metrics"]["val"]["ood_share"] <= max(1, int(np.ceil(0.01 * n_val))) / n_val


# ----------------------------------------------------------------------------- defect_map and ood_distance
def _val_crops(cfg):
    """The val crops exactly as training made them (data.kind=synthetic: seeds 10_000.., cache_size side)."""
    n_val = max(16, int(cfg["data"]["n"]) // 4)
    return [random_fruit_image(10_000 + i, size_px=int(cfg["data"]["cache_size"]))[0] for i in range(n_val)]


def non_fruit_images(side: int = 96, seed: int = 0) -> dict[str, np.ndarray]:
    """Crops that are not fruit: a flat blue patch, a checkerboard, random noise, printed text."""
    import cv2

    rng = np.random.default_rng(seed)
    check = ((np.indices((side, side)) // max(4, side // 8)).sum(0) % 2 * 255).astype(np.uint8)
    text = np.full((side, side, 3), 255, np.uint8)
    cv2.putText(text, "LOT 7", (4, side // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX, side / 110, (0, 0, 0), 2)
    return {
        "flat blue patch": np.full((side, side, 3), (30, 60, 200), np.uint8),
        "checkerboard": np.stack([check] * 3, axis=-1),
        "random noise": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
        "text": text,
    }


def test_tiny_artifact_has_the_explanation_outputs(tiny_artifact):
    import onnx

    from training import explain

    out, _, cfg, meta = tiny_artifact
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "defect_map", "ood_distance", "ood_distance_early"]
    m = json.loads((out / "metadata.json").read_text())
    assert m["outputs"]["defect_map"]["temperature"] == m["calibration"]["temperature"]
    assert m["outputs"]["defect_map"]["shape"] == ["N", 4, 4]  # 64 px through four stride-2 blocks
    assert m["outputs"]["ood_distance"]["fitted_on"] == "train crops (48)"
    th = m["thresholds"]
    assert np.isfinite(th["ood_distance"]) and th["ood_distance"] > 0
    assert "quantile 0.99" in th["ood_distance_rule"] and "val" in th["ood_distance_rule"]
    for split in ("val", "test"):
        assert 0.0 <= m["metrics"][split]["ood_distance_share"] <= 1.0
        assert 0.0 <= m["metrics"][split]["ood_distance_early_share"] <= 1.0
    assert np.isfinite(th["ood_distance_early"]) and th["ood_distance_early"] > 0
    assert "quantile 0.99" in th["ood_distance_early_rule"] and "features.3" in th["ood_distance_early_rule"]
    early = m["outputs"]["ood_distance_early"]
    assert early["block"] == "features.3" and early["fitted_on"] == "train crops (48)"
    assert early["feature_dims"] == 256 and "features.3" in early["block_output"]  # small_fruitnet's fourth block: 8·32 channels
    assert (out / "model.onnx").stat().st_size < 20 * 2**20
    assert explain.find_head(onnx.load(str(out / "model.onnx"))).pooled  # the edited graph is still readable


def test_graph_edit_keeps_logits_bit_identical(tiny_artifact, tmp_path):
    """Stripping the two outputs gives back the exported graph; its logits are the edited graph's,
    bit for bit, and editing again is the same edit."""
    import onnx

    from training import explain

    out, _, cfg, meta = tiny_artifact
    spec = read_spec(meta)
    edited = onnx.load(str(out / "model.onnx"))
    plain = explain.strip_outputs(edited)
    assert [o.name for o in plain.graph.output] == ["logits"]
    assert not any(n.name.startswith(explain.PREFIX) for n in plain.graph.node)
    crops = _val_crops(cfg) + list(non_fruit_images().values())
    (before,) = explain.run_graph(plain, ["logits"], crops, spec)
    (after,) = explain.run_graph(edited, ["logits"], crops, spec)
    assert np.array_equal(before, after)
    # the parity record (torch's logits) still holds for the edited graph
    from service.onnx_model import OnnxDefectModel

    assert OnnxDefectModel(out, threads=1).check_parity() < 1e-4
    # a second edit of the edited graph strips the first: same outputs, same threshold (the train
    # crops as training made them: seeds 0.., cache_size side)
    train = [random_fruit_image(i, size_px=int(cfg["data"]["cache_size"])) for i in range(int(cfg["data"]["n"]))]
    again = explain.add_outputs(
        out / "model.onnx",
        tmp_path / "again.onnx",
        spec,
        [img for img, _ in train],
        np.array([int(bad) for _, bad in train]),
        _val_crops(cfg),
    )
    assert again.threshold == pytest.approx(meta["thresholds"]["ood_distance"], rel=1e-5)
    assert again.early.threshold == pytest.approx(meta["thresholds"]["ood_distance_early"], rel=1e-5)
    assert [o.name for o in onnx.load(str(tmp_path / "again.onnx")).graph.output] == [
        "logits",
        "defect_map",
        "ood_distance",
        "ood_distance_early",
    ]


def _torch_defect_map(model, batch: np.ndarray, temperature: float, defective: list[int]) -> np.ndarray:
    """The classifier head at each location of the last feature map, in torch: softmax at T, summed
    over the defective classes."""
    with torch.no_grad():
        feats = model.features(torch.from_numpy(batch))  # (N, C, h, w): what the global pool averages
        per_cell = model.classifier(feats.permute(0, 2, 3, 1))  # the head on every (n, i, j)
        return torch.softmax(per_cell.double() / temperature, dim=-1)[..., defective].sum(-1).numpy()


def test_defect_map_equals_torch(tiny_artifact):

    cfg = tiny_artifact[2]
    model, served = _torch_and_served(tiny_artifact)
    crops = _val_crops(cfg)[:6] + list(non_fruit_images().values())
    batch = preprocess(crops, served.spec)
    got = served.run(batch).defect_map
    want = _torch_defect_map(model, batch, served.spec.temperature, [1])
    assert got.shape == want.shape == (len(crops), 4, 4)
    assert np.abs(got - want).max() < 1e-4
    # a linear head: the mean of the cells' logits is the logits (the pool is an average)
    with torch.no_grad():
        feats = model.features(torch.from_numpy(batch))
        cell_logits = model.classifier(feats.permute(0, 2, 3, 1)).mean(dim=(1, 2)).numpy()
        assert np.abs(cell_logits - model(torch.from_numpy(batch)).numpy()).max() < 1e-4
    ev = served.predict(crops)
    assert all(e.defect_map.shape == (4, 4) and e.map_crop_margin_frac == served.spec.crop_margin_frac for e in ev)
    d = ev[0].to_dict()
    assert np.abs(np.array(d["map"]) - got[0]).max() <= 5e-4  # stored rounded to 3 decimals


def test_defect_map_of_a_nonlinear_head_equals_torch(tmp_path):
    """mobilenet_v3_small's head is Gemm, HardSwish, Gemm: every layer runs at each location."""
    from grader.defect import ModelSpec
    from training import explain
    from training.export import export_onnx
    from training.models_registry import build_model

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 3).eval()
    export_onnx(model, tmp_path / "m.onnx", 64)
    spec = ModelSpec("net", "0", ("sound", "rot", "scab"), ("rot", "scab"), (64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), temperature=0.7)
    rng = np.random.default_rng(0)
    crops = list(rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8))
    ex = explain.add_outputs(tmp_path / "m.onnx", tmp_path / "e.onnx", spec, crops[:24], rng.integers(0, 3, 24), crops[24:])
    assert ex.head["head_layers"] == ["Gemm", "HardSwish", "Gemm"]
    batch = preprocess(crops[24:], spec)
    logits, maps = explain.run_graph(tmp_path / "e.onnx", ["logits", "defect_map"], batch, spec)
    assert np.abs(maps - _torch_defect_map(model, batch, 0.7, [1, 2])).max() < 1e-4
    (plain,) = explain.run_graph(tmp_path / "m.onnx", ["logits"], batch, spec)
    assert np.array_equal(plain, logits)


def test_a_graph_without_a_global_pool_is_refused(tmp_path):
    from onnx import TensorProto, helper

    from training import explain

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 192])
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["logits"])], "flat", [x], [y])
    with pytest.raises(explain.UnsupportedGraph, match="global pool"):
        explain.find_head(helper.make_model(graph))


def test_ood_distance_threshold_is_the_val_quantile(tiny_artifact):
    from service.onnx_model import OnnxDefectModel

    out, _, cfg, meta = tiny_artifact
    th = json.loads((out / "metadata.json").read_text())["thresholds"]
    served = OnnxDefectModel(out, threads=1)
    assert served.spec.ood_distance_threshold == th["ood_distance"]
    val = _val_crops(cfg)
    ev = served.predict(val)
    dist = np.array([e.ood_distance for e in ev])
    assert abs(np.quantile(dist, 0.99) - th["ood_distance"]) < 1e-4 * max(1.0, th["ood_distance"])
    assert all(("distance" in e.ood_signals) == (e.ood_distance > th["ood_distance"]) for e in ev)
    assert all(e.ood == bool(e.ood_signals) for e in ev)  # either signal makes the crop OOD
    assert meta["metrics"]["val"]["ood_distance_share"] == pytest.approx(float((dist > th["ood_distance"]).mean()))
    d = ev[0].to_dict()
    assert d["ood_distance"] == pytest.approx(dist[0], abs=1e-4) and d["ood_signals"] == list(ev[0].ood_signals)


def test_ood_distance_fires_on_non_fruit(tiny_artifact):
    """Through the service's ONNX path: every non-fruit crop is past the feature-distance threshold
    (flagged `ood`, the reason naming the distance), val-like synthetic fruit mostly are not."""
    from grader.flags import FlagPolicy, fruit_flags
    from service.onnx_model import OnnxDefectModel

    out, _, cfg, _ = tiny_artifact
    served = OnnxDefectModel(out, threads=1)
    images = non_fruit_images(int(cfg["data"]["cache_size"]))
    for name, e in zip(images, served.predict(list(images.values()))):
        assert e.ood and "distance" in e.ood_signals, (name, e.ood_distance, served.spec.ood_distance_threshold)
        flags = [f for f in fruit_flags(e, None, FlagPolicy()) if f.code == "ood"]
        assert flags and "feature distance" in flags[0].reason, name
    fresh = [random_fruit_image(30_000 + i, size_px=int(cfg["data"]["cache_size"]))[0] for i in range(40)]
    ev = served.predict(fresh)
    assert sum("distance" in e.ood_signals for e in ev) <= 4  # 10 %: fruit of the same kind as train and val


def test_non_fruit_is_flagged_through_the_api(tiny_artifact, tmp_path):
    """POST /v1/grade with the tiny model serving: shapes the segmentation takes for fruit (a blue
    disc, a checkerboard disc, a noise disc) come back flagged `ood` by the feature distance; the
    result stores the CNN map and the overlay draws it."""
    import cv2
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    from .conftest import API_KEYS, headers, png_bytes

    out, _, _, _ = tiny_artifact
    settings = Settings(
        data_dir=tmp_path / "var", api_keys=",".join(f"{r}:{k}" for r, k in API_KEYS.items()), review_sample_share=0.0, model_dir=out
    )
    disc = np.zeros((400, 400), np.uint8)
    cv2.circle(disc, (200, 200), 110, 1, -1)
    disc = disc.astype(bool)
    fills = {
        "blue disc": np.full((400, 400, 3), (30, 60, 200), np.uint8),
        "checkerboard disc": np.stack([((np.indices((400, 400)) // 16).sum(0) % 2 * 255).astype(np.uint8)] * 3, -1),
        "noise disc": np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8),
    }
    with TestClient(create_app(settings)) as client:
        for name, fill in fills.items():
            img = np.full((400, 400, 3), 235, np.uint8)
            img[disc] = fill[disc]
            r = client.post(
                "/v1/grade", files={"image": ("x.png", png_bytes(img), "image/png")}, data={"mm_per_px": "0.3"}, headers=headers()
            )
            assert r.status_code == 200, r.text
            fruit = r.json()["fruits"]
            assert len(fruit) == 1, name
            d = fruit[0]["defect"]
            assert d["ood"] is True and "distance" in d["ood_signals"], (name, d["ood_distance"])
            assert "ood" in fruit[0]["flags"]
            reason = next(f["reason"] for f in fruit[0]["flag_details"] if f["code"] == "ood")
            assert "feature distance" in reason
            assert np.array(d["map"]).shape == (4, 4)
        rid = r.json()["id"]
        plain = client.get(f"/v1/results/{rid}/overlay?layers=", headers=headers("inspector"))
        cnn = client.get(f"/v1/results/{rid}/overlay?layers=cnn", headers=headers("inspector"))
        assert plain.status_code == cnn.status_code == 200 and cnn.content[:8] == b"\x89PNG\r\n\x1a\n"
        a = cv2.imdecode(np.frombuffer(plain.content, np.uint8), cv2.IMREAD_COLOR).astype(int)
        b = cv2.imdecode(np.frombuffer(cnn.content, np.uint8), cv2.IMREAD_COLOR).astype(int)
        changed = np.abs(a - b).sum(axis=2) > 0
        assert changed[disc].mean() > 0.9 and not changed[~disc].any()  # over the fruit, only the fruit


def test_artifact_without_the_new_outputs_still_serves(tiny_artifact, tmp_path):
    """A graph exported before training/explain.py (logits only, no ood_distance threshold) loads,
    passes its parity check and serves: evidence as before, OOD by energy alone."""
    import onnx

    from grader.errors import InvalidModelArtifact
    from service.onnx_model import OnnxDefectModel
    from training import explain

    out, _, cfg, _ = tiny_artifact
    old = tmp_path / "old"
    old.mkdir()
    onnx.save(explain.strip_outputs(onnx.load(str(out / "model.onnx"))), str(old / "model.onnx"))
    meta = json.loads((out / "metadata.json").read_text())
    meta.pop("outputs")
    for k in ("ood_distance", "ood_distance_rule", "ood_distance_early", "ood_distance_early_rule"):
        meta["thresholds"].pop(k)
    (old / "metadata.json").write_text(json.dumps(meta))
    served = OnnxDefectModel(old, threads=1)
    assert served.extra_outputs == () and served.check_parity() < 1e-4
    crops = _val_crops(cfg)[:4] + list(non_fruit_images().values())
    ev = served.predict(crops)
    assert all(e.defect_map is None and e.ood_distance is None for e in ev)
    assert all(e.ood == (e.ood_score > meta["thresholds"]["ood_energy"]) for e in ev)
    assert set(ev[0].to_dict()) == {"label", "score", "probabilities", "ood_score", "ood"}
    new = OnnxDefectModel(out, threads=1)
    assert np.array_equal(served.run(preprocess(crops, served.spec)).logits, new.run(preprocess(crops, new.spec)).logits)
    # a threshold for a distance the graph does not compute is refused
    meta["thresholds"]["ood_distance"] = 3.0
    (old / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidModelArtifact, match="ood_distance"):
        OnnxDefectModel(old, threads=1)


def test_ood_distance_early_is_the_val_quantile_and_served(tiny_artifact):
    """The early-block distance: its threshold is the 0.99 quantile of the val crops' values (as
    served), the service reports it on every crop and marks `ood` ("early-distance") past it."""
    from grader.flags import FlagPolicy, fruit_flags
    from service.onnx_model import OnnxDefectModel

    out, _, cfg, meta = tiny_artifact
    th = meta["thresholds"]
    served = OnnxDefectModel(out, threads=1)
    assert served.extra_outputs == ("defect_map", "ood_distance", "ood_distance_early")
    assert served.spec.ood_distance_early_threshold == th["ood_distance_early"]
    ev = served.predict(_val_crops(cfg))
    early = np.array([e.ood_distance_early for e in ev])
    assert abs(np.quantile(early, 0.99) - th["ood_distance_early"]) < 1e-4 * max(1.0, th["ood_distance_early"])
    assert all(("early-distance" in e.ood_signals) == (e.ood_distance_early > th["ood_distance_early"]) for e in ev)
    assert meta["metrics"]["val"]["ood_distance_early_share"] == pytest.approx(float((early > th["ood_distance_early"]).mean()))
    fired = [e for e in ev if "early-distance" in e.ood_signals]
    assert fired and all(e.ood for e in fired)  # the val crops past their own 0.99 quantile are `ood` by it
    images = non_fruit_images(int(cfg["data"]["cache_size"]))
    for name, e in zip(images, served.predict(list(images.values()))):
        if "early-distance" in e.ood_signals:
            assert e.ood
            reason = next(f.reason for f in fruit_flags(e, None, FlagPolicy()) if f.code == "ood")
            assert "early-layer texture distance" in reason, name
    assert ev[0].to_dict()["ood_distance_early"] == pytest.approx(early[0], abs=1e-4)


def test_early_block_is_configurable_and_a_missing_one_is_refused(tiny_artifact, tmp_path):
    """Another block gives another early distance, logits bit for bit the same; a block the graph
    does not have is refused and nothing is written; None adds no early distance."""
    import onnx

    from training import explain

    out, _, cfg, meta = tiny_artifact
    spec = read_spec(meta)
    train = [random_fruit_image(i, size_px=int(cfg["data"]["cache_size"])) for i in range(int(cfg["data"]["n"]))]
    crops, labels = [img for img, _ in train], np.array([int(bad) for _, bad in train])
    ex = explain.add_outputs(out / "model.onnx", tmp_path / "b1.onnx", spec, crops, labels, _val_crops(cfg), early_block="features.1")
    assert ex.early.block == "features.1" and ex.early.distance.directions.shape[0] == 64  # 2·32 channels
    probe = crops[:8] + list(non_fruit_images().values())
    (before,) = explain.run_graph(out / "model.onnx", ["logits"], probe, spec)
    after, dist, early = explain.run_graph(tmp_path / "b1.onnx", ["logits", "ood_distance", "ood_distance_early"], probe, spec)
    assert np.array_equal(before, after)
    (shipped_dist,) = explain.run_graph(out / "model.onnx", ["ood_distance"], probe, spec)
    assert np.allclose(dist, shipped_dist, rtol=1e-5, atol=1e-5)  # the pooled distance is the same fit
    with pytest.raises(explain.UnsupportedGraph, match="no block or tensor 'features.9'"):
        explain.add_outputs(out / "model.onnx", tmp_path / "b9.onnx", spec, crops, labels, _val_crops(cfg), early_block="features.9")
    assert not (tmp_path / "b9.onnx").exists()
    none = explain.add_outputs(out / "model.onnx", tmp_path / "none.onnx", spec, crops, labels, _val_crops(cfg), early_block=None)
    assert none.early is None
    assert [o.name for o in onnx.load(str(tmp_path / "none.onnx")).graph.output] == ["logits", "defect_map", "ood_distance"]
    assert explain.early_block_of({"thresholds": {"ood_distance_early_block": None}}) is None
    assert explain.early_block_of({"thresholds": {}}) == "features.3"


def test_artifact_with_the_pooled_distance_only_still_serves(tiny_artifact, tmp_path):
    """An artifact edited before the early distance (defect_map and ood_distance, no
    ood_distance_early) loads and serves as before; a threshold for the missing output is refused."""
    from grader.errors import InvalidModelArtifact
    from service.onnx_model import OnnxDefectModel
    from training import explain

    out, _, cfg, meta = tiny_artifact
    spec = read_spec(meta)
    old = tmp_path / "old"
    old.mkdir()
    train = [random_fruit_image(i, size_px=int(cfg["data"]["cache_size"])) for i in range(int(cfg["data"]["n"]))]
    explain.add_outputs(
        out / "model.onnx",
        old / "model.onnx",
        spec,
        [img for img, _ in train],
        np.array([int(bad) for _, bad in train]),
        _val_crops(cfg),
        early_block=None,
    )
    m = json.loads((out / "metadata.json").read_text())
    m["outputs"].pop("ood_distance_early")
    for k in ("ood_distance_early", "ood_distance_early_rule"):
        m["thresholds"].pop(k)
    (old / "metadata.json").write_text(json.dumps(m))
    served = OnnxDefectModel(old, threads=1)
    assert served.extra_outputs == ("defect_map", "ood_distance") and served.check_parity() < 1e-4
    ev = served.predict(_val_crops(cfg)[:4] + list(non_fruit_images().values()))
    assert all(e.ood_distance_early is None and "early-distance" not in e.ood_signals for e in ev)
    assert all(e.ood == bool(e.ood_signals) for e in ev)
    assert "ood_distance_early" not in ev[0].to_dict()
    m["thresholds"]["ood_distance_early"] = 3.0
    (old / "metadata.json").write_text(json.dumps(m))
    with pytest.raises(InvalidModelArtifact, match="ood_distance_early"):
        OnnxDefectModel(old, threads=1)


def test_test_time_views_live_in_the_graph_and_equal_torch(tmp_path_factory):
    """model.test_time_views: the served graph averages the logits over turns of the crop, exactly
    as torch's ViewAverage does (calibration and thresholds were taken on it), its decision does not
    change when the crop is turned, and the defect map still reads the crop as given."""
    import onnx
    import onnxruntime as ort

    from service.onnx_model import OnnxDefectModel
    from training import train
    from training.config import DEFAULT_CONFIG, load_config
    from training.models_registry import build_model
    from training.views import ViewAverage, add_views, numpy_view

    out, work = tmp_path_factory.mktemp("artifact-views"), tmp_path_factory.mktemp("work-views")
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "data.kind=synthetic",
            "data.n=48",
            "data.cache_size=96",
            "train.epochs=1",
            "train.batch_size=16",
            "model.arch=small_fruitnet",
            "model.input_size=64",
            "name=tiny-views",
            "version=0.0.1",
            "model.test_time_views=4",
        ],
    )
    meta = train.run(cfg, out, work)
    assert meta["preprocessing"]["test_time_views"]["count"] == 4
    assert meta["preprocessing"]["test_time_views"]["views"] == ["identity", "turn 90", "turn 180", "turn 270"]
    check = meta["metrics"]["onnx_check"]
    assert check["max_abs_diff_scores"] < 1e-4 and check["views"]["max_abs_diff_logits"] < 1e-5

    served = OnnxDefectModel(out, threads=1)
    assert served.spec.test_time_views == 4 and served.check_parity() < 1e-4
    model = build_model("small_fruitnet", 2)
    model.load_state_dict(torch.load(work / "best.pt"))
    model.eval()
    crops = _val_crops(cfg)[:6] + list(non_fruit_images().values())
    batch = preprocess(crops, served.spec)
    with torch.no_grad():
        averaged = ViewAverage(model, 4)(torch.from_numpy(batch)).numpy()
        single = model(torch.from_numpy(batch)).numpy()
    ref = softmax(averaged.astype(np.float64), served.spec.temperature)[:, 1]
    got = np.array([e.score for e in served.predict(crops)])
    assert np.abs(ref - got).max() < 1e-4
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    a, map_a = sess.run(["logits", "defect_map"], {"input": batch})
    # the average is what is served, not the crop alone (a one-epoch model moves little under turns)
    assert np.abs(a - single).max() > 10 * max(np.abs(a - averaged).max(), 1e-7)
    # turning the crop a quarter turn changes nothing; the map is always the crop's own as given
    turned = np.ascontiguousarray(numpy_view(batch, "turn 90"))
    b, map_b = sess.run(["logits", "defect_map"], {"input": turned})
    assert np.abs(a - b).max() < 1e-5
    assert np.abs(map_a - _torch_defect_map(model, batch, served.spec.temperature, [1])).max() < 1e-4
    assert np.abs(map_b - _torch_defect_map(model, turned, served.spec.temperature, [1])).max() < 1e-4
    # the edit is refused twice over, and for a view count that is not a set of symmetries
    with pytest.raises(ValueError, match="already averages"):
        add_views(onnx.load(str(out / "model.onnx")), 4)
    with pytest.raises(ValueError, match="one of"):
        train.run(
            load_config(DEFAULT_CONFIG, ["data.kind=synthetic", "model.test_time_views=3"]),
            tmp_path_factory.mktemp("x"),
            tmp_path_factory.mktemp("y"),
        )


def test_views_derived_from_an_existing_artifact_equal_torch(tiny_artifact, tmp_path):
    """python -m training.views: an artifact's own network with its logits averaged over the views,
    calibrated again on its val crops; what it serves is torch's average at the new temperature,
    the map is the crop's own at that temperature, and its parity record holds."""
    from service.onnx_model import OnnxDefectModel
    from training import derive_views

    out, work, cfg, meta = tiny_artifact
    model, _ = _torch_and_served(tiny_artifact)
    assert derive_views.main([str(out), "--views", "4", "--version", "0.0.2", "--out", str(tmp_path / "d"), "--work-dir", str(work)]) == 0
    derived = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert derived["version"] == "0.0.2" and derived["derived_from"]["artifact"] == "tiny-test@0.0.1"
    assert derived["config"]["model"]["test_time_views"] == 4 and derived["preprocessing"]["test_time_views"]["count"] == 4
    assert derived["outputs"]["defect_map"]["temperature"] == derived["calibration"]["temperature"]
    assert derived["thresholds"]["ood_distance"] == meta["thresholds"]["ood_distance"]  # the distances read the crop as given
    served = OnnxDefectModel(tmp_path / "d", threads=1)
    assert served.check_parity() < 1e-4
    crops = _val_crops(cfg)[:6]
    batch = preprocess(crops, served.spec)
    with torch.no_grad():
        from training.views import ViewAverage

        ref = softmax(ViewAverage(model, 4)(torch.from_numpy(batch)).numpy().astype(np.float64), served.spec.temperature)[:, 1]
    ev = served.predict(crops)
    assert np.abs(ref - np.array([e.score for e in ev])).max() < 1e-4
    assert np.abs(served.run(batch).defect_map - _torch_defect_map(model, batch, served.spec.temperature, [1])).max() < 1e-4
    # the figures are the derived graph's: the val threshold obeys the config's rule on them
    assert derived["metrics"]["val"]["recall_defective"] >= float(cfg["thresholds"]["min_recall_defective"]) - 1e-9
    # a derived artifact is not derived again; nothing is written
    assert (
        derive_views.main(
            [str(tmp_path / "d"), "--views", "4", "--version", "0.0.3", "--out", str(tmp_path / "e"), "--work-dir", str(work)]
        )
        == 2
    )
    assert not (tmp_path / "e").exists()


def test_an_epoch_with_constant_or_broken_outputs_is_never_selected():
    from training.calibrate import outputs_collapsed

    rng = np.random.default_rng(0)
    assert not outputs_collapsed(rng.normal(size=(20, 2)).astype(np.float32))
    # a collapsed network: one output for every crop, plus rounding noise that an AUC would still rank
    assert outputs_collapsed((np.array([[0.4, -0.3]]) + 1e-8 * rng.normal(size=(20, 2))).astype(np.float32))
    broken = rng.normal(size=(20, 2)).astype(np.float32)
    broken[3, 1] = np.nan
    assert outputs_collapsed(broken)


def test_a_distance_is_refused_on_features_that_do_not_vary():
    from training.feature_distance import fit_distance

    rng = np.random.default_rng(0)
    feats = 0.4 + 1e-8 * rng.normal(size=(200, 32))
    with pytest.raises(ValueError, match="do not vary"):
        fit_distance(feats, np.arange(200) % 2)
    fit_distance(0.4 + 0.1 * rng.normal(size=(200, 32)), np.arange(200) % 2)  # features that vary fit


def test_a_network_that_learns_nothing_is_refused_not_exported(tmp_path):
    """A learning rate that wrecks the network leaves no epoch worth selecting: `grader train` says
    so and exports nothing (it used to export whichever epoch ranked val noise best, or crash at the
    end)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    sets = [
        "data.kind=synthetic",
        "data.n=48",
        "data.cache_size=96",
        "train.epochs=2",
        "train.batch_size=16",
        "model.arch=small_fruitnet",
        "model.input_size=64",
        "name=tiny-test",
        "version=0.0.1",
        "train.lr=1e6",
        "train.method=finetune",
        "train.probe_epochs=0",
        "train.trainable_from=null",
        "fruit_check=null",
    ]
    cmd = [sys.executable, "-m", "cli", "train", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no epoch of 2 gave val outputs that vary" in done.stderr
    assert "not a candidate" in done.stdout
    assert not (out / "model.onnx").exists()


def test_an_artifact_refitted_on_crops_cut_with_its_commodity_segmentation(tmp_path):
    """python -m training.views --views 1 --crops-segmentation commodity: a model trained on crops
    cut by colour alone gets its calibration and thresholds refitted on val crops cut as the service
    cuts its commodity (white mould on white kept in an orange), the graph itself unchanged."""
    import hashlib

    import cv2

    from grader.commodities import load_commodities
    from service.onnx_model import OnnxDefectModel
    from training import derive_views, train
    from training.config import DEFAULT_CONFIG, load_config
    from training.crops import crop_cache
    from training.metrics import fit_temperature

    from .test_mould_segmentation import mouldy_orange

    photos, items = tmp_path / "photos", []
    photos.mkdir()
    for i in range(32):
        split = "train" if i < 16 else "val" if i < 24 else "test"
        img = mouldy_orange(backdrop_noise=0.0, seed=i)
        sound = i % 2 == 0
        if sound:  # the same orange without its mould
            yy, xx = np.mgrid[:240, :240]
            img[(yy - 120) ** 2 + (xx - 120) ** 2 <= 50**2] = (228, 122, 32)
        path = photos / f"o{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        items.append({"kind": "image", "path": str(path), "label": "sound" if sound else "defective", "split": split, "session": "s"})
    manifest = photos / "manifest.json"
    manifest.write_text(json.dumps({"sha256": hashlib.sha256(json.dumps(items).encode()).hexdigest(), "items": items}))
    cfg = load_config(
        DEFAULT_CONFIG,
        [
            "data.kind=manifest",
            f"data.manifest={manifest}",
            "data.cache_size=64",
            "data.group_train=false",
            "commodity=orange",
            "train.epochs=1",
            "train.batch_size=8",
            "model.arch=small_fruitnet",
            "model.input_size=48",
            "name=tiny-orange",
            "version=0.0.1",
            "model.test_time_views=1",
        ],
    )
    art, work = tmp_path / "art", tmp_path / "work"
    meta = train.run(cfg, art, work)
    assert "crop_segmentation" not in meta["preprocessing"]  # colour alone, as every model before it

    d = tmp_path / "d"
    argv = [str(art), "--views", "1", "--crops-segmentation", "commodity", "--version", "0.0.2", "--out", str(d), "--work-dir", str(work)]
    assert derive_views.main(argv) == 0
    derived = json.loads((d / "metadata.json").read_text())
    params = load_commodities()["orange"].segmentation()
    assert derived["preprocessing"]["crop_segmentation"] == {"flat_background_max_std": params.flat_background_max_std}
    assert "test_time_views" not in derived["preprocessing"] and derived["config"]["data"]["segmentation"] == "commodity"
    assert "--crops-segmentation commodity" in derived["derived_from"]["by"]
    assert read_spec(derived).crop_segmentation == params
    assert (d / "model.onnx").read_bytes() != b"" and derived["thresholds"]["ood_distance"] == meta["thresholds"]["ood_distance"]
    # the temperature is the one fitted on the val crops cut with the orange profile's settings
    val = [it for it in items if it["split"] == "val"]
    served = OnnxDefectModel(d, threads=1)
    crops = crop_cache([it["path"] for it in val], 64, 0.08, work / "cache", workers=1, params=params)
    logits = served.run(preprocess(list(crops), served.spec)).logits
    y = np.array([it["label"] == "defective" for it in val], int)
    assert derived["calibration"]["temperature"] == pytest.approx(fit_temperature(logits, y), rel=1e-6)
    assert derived["metrics"]["val"]["n"] == 8
    # the graph is the same network: the same crop gives the same logits in both
    old = OnnxDefectModel(art, threads=1)
    assert np.abs(old.run(preprocess(list(crops), old.spec)).logits - logits).max() < 1e-5
    # nothing more to derive: the same crops again, or crops that are already the commodity's
    assert derive_views.main([str(art), "--views", "1", "--version", "0.0.3", "--out", str(tmp_path / "e"), "--work-dir", str(work)]) == 2
    assert (
        derive_views.main(
            [
                str(d),
                "--views",
                "1",
                "--crops-segmentation",
                "commodity",
                "--version",
                "0.0.3",
                "--out",
                str(tmp_path / "e"),
                "--work-dir",
                str(work),
            ]
        )
        == 2
    )
    assert not (tmp_path / "e").exists()


def test_wilson_intervals_match_the_textbook_and_hold_at_the_ends():
    from training.metrics import intervals, wilson_interval

    lo, hi = wilson_interval(29, 36)  # 29 of 36 rotten oranges caught
    assert (round(lo, 3), round(hi, 3)) == (0.650, 0.902)
    assert wilson_interval(10, 10)[1] == 1.0 and round(wilson_interval(10, 10)[0], 3) == 0.722
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 3) == 0.278
    assert all(v != v for v in wilson_interval(0, 0))
    ci = intervals(tp=29, fn=7, tn=34, fp=2)
    assert ci["recall_defective_ci95"][0] < ci["balanced_accuracy_ci95"][0] < (29 / 36 + 34 / 36) / 2 < ci["balanced_accuracy_ci95"][1]
    assert "balanced_accuracy_ci95" not in intervals(0, 0, 0, 0)


def test_hide_test_prints_validation_figures_and_still_records_test(tmp_path, capsys):
    """Choosing between candidates on validation: `grader train --hide-test` keeps the test figures
    off the screen, and metadata.json still records them for after the choice."""
    from cli.main import main as cli_main

    args = ["train", "--out", str(tmp_path / "art"), "--work-dir", str(tmp_path / "work"), "--hide-test"]
    for s in [
        "data.kind=synthetic",
        "data.n=48",
        "data.cache_size=96",
        "train.epochs=1",
        "train.batch_size=16",
        "model.arch=small_fruitnet",
        "model.input_size=64",
        "model.test_time_views=1",
        "name=tiny-hide",
        "version=0.0.1",
    ]:
        args += ["--set", s]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "val: balanced accuracy" in printed and "test: balanced accuracy" not in printed
    assert "metrics.test" in printed
    meta = json.loads((tmp_path / "art" / "metadata.json").read_text())
    assert {"val", "test"} <= set(meta["metrics"])


def test_weight_averaging_makes_the_average_the_model(tmp_path):
    """train.swa: after the schedule, N epochs at a constant rate whose end-of-epoch weights are
    averaged; the average (BatchNorm statistics recomputed) is what is exported, and bad settings
    are refused before any training."""
    from training import train
    from training.config import DEFAULT_CONFIG, load_config, swa_of

    for bad in ({"epochs": 0, "lr": 0.001}, {"epochs": 2}, {"epochs": 2, "lr": 2.0}, "yes"):
        with pytest.raises(ValueError, match="train.swa"):
            swa_of({"train": {"swa": bad}})
    assert swa_of({"train": {}}) == (0, 0.0)
    cfg = load_config(DEFAULT_CONFIG, [*TINY_TRAIN, "name=tiny-swa", "train.swa={epochs: 2, lr: 0.001}"])
    meta = train.run(cfg, tmp_path / "art", tmp_path / "work")
    hist = meta["history"]
    assert [h.get("averaged", False) for h in hist[:3]] == [False, True, True] and hist[-1]["averaged_model"]
    assert meta["metrics"]["best_epoch"] == "average of 2-3"
    assert meta["metrics"]["onnx_check"]["max_abs_diff_scores"] < 1e-4  # the exported graph is the averaged network
    # the exported weights are the average's: its parameters equal those the checkpoint's averaged copy holds
    ck = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    best = torch.load(tmp_path / "work" / "best.pt")
    averaged = {k[len("module.") :]: v for k, v in ck["swa"].items() if k.startswith("module.")}
    weights = [k for k in best if k.endswith(".weight") and "bn" not in k and k in averaged]
    assert weights and all(torch.equal(best[k], averaged[k]) for k in weights)
    with pytest.raises(ValueError, match="mixstyle"):
        train.run(
            load_config(
                DEFAULT_CONFIG,
                [*TINY_TRAIN, "train.swa={epochs: 1, lr: 0.001}", "model.mixstyle={p: 0.5, alpha: 0.1, layers: [features.1]}"],
            ),
            tmp_path / "art2",
            tmp_path / "work2",
        )
