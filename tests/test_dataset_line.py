"""Datasets from the line: verdicts to labels, lot-wise splits, the exported tree and manifest,
active-learning suggestions and the share of uncertain fruit routed to review."""

from __future__ import annotations

import json

import pytest

from datasets import line
from datasets.synthetic import random_fruit_image
from grader.flags import review_sample_flag, sample_draw, uncertainty

from .conftest import headers, png_bytes


def test_verdicts_become_labels():
    assert line.verdict_label("confirm", None, "sound") == ("sound", "confirmed")
    assert line.verdict_label("confirm", None, "defective") == ("defective", "confirmed")
    assert line.verdict_label("correct", "bruise", "sound") == ("defective", "inspector")
    assert line.verdict_label("correct", "Sound", "defective") == ("sound", "inspector")
    assert line.verdict_label("correct", None, "sound") == (None, None)  # a grade correction alone says nothing


def test_verdicts_become_typed_labels_for_a_typed_model():
    classes = ("sound", "blackspot", "canker", "greening", "rot")
    assert line.verdict_label("correct", "Canker", "sound", classes) == ("canker", "inspector")
    assert line.verdict_label("confirm", None, "greening", classes) == ("greening", "confirmed")
    assert line.verdict_label("correct", "sound", "rot", classes) == ("sound", "inspector")
    assert line.verdict_label("correct", "scar", "sound", classes) == (None, None)  # not a type this model knows


def test_splits_keep_whole_groups_and_fill_every_split():
    groups = [f"L-{i}" for i in range(10)]
    s = line.assign_splits(groups + groups)
    assert set(s) == set(groups) and set(s.values()) == {"train", "val", "test"}
    assert line.assign_splits(groups) == s  # stable
    assert set(line.assign_splits(["a", "b", "c"]).values()) == {"train", "val", "test"}


def test_review_sampling_is_a_stable_share_of_uncertain_fruit():
    assert uncertainty(0.3, 0.3) == 1.0 and uncertainty(1.0, 0.3) == 0.0
    assert sample_draw("x") == sample_draw("x") and 0 <= sample_draw("y") < 1
    keys = [f"k{i}" for i in range(4000)]
    picked = sum(review_sample_flag(k, 0.3, 0.3, 0.05) is not None for k in keys)
    assert 140 < picked < 260  # ~5 %
    assert all(review_sample_flag(k, 0.99, 0.3, 1.0) is None for k in keys[:50])  # confident: never sampled
    assert review_sample_flag("k", 0.3, 0.3, 0.0) is None
    assert review_sample_flag(keys[0], 0.3, 0.3, 1.0).code == "suggested"


def _grade(client, seed, lot, **form):
    img, bad = random_fruit_image(seed, size_px=200)
    r = client.post(
        "/v1/grade",
        files={"image": (f"{seed}.png", png_bytes(img), "image/png")},
        data={"lot_id": lot, "camera_id": "cam-1", **form},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    return r.json(), bad


@pytest.fixture
def reviewed(client):
    """Twelve fruit in four lots, all reviewed: the inspector gives the true label."""
    truth = {}
    for lot in ("L-A", "L-B", "L-C", "L-D"):
        client.post("/v1/lots", json={"id": lot}, headers=headers())
    for k in range(12):
        res, bad = _grade(client, 100 + k, f"L-{'ABCD'[k % 4]}")  # no scale: flagged uncalibrated, so all are in the queue
        truth[res["id"]] = bad
    h = headers("inspector")
    for item in client.get("/v1/review/queue?limit=100", headers=h).json()["items"]:
        bad = truth[item["result_id"]]
        body = {"decision": "confirm", "defect_label": "rot" if bad else "sound", "inspector": "Ana"}
        if item["fruit_index"] == 0 and item["result_id"] == next(iter(truth)):
            body = {"decision": "correct", "grade": "out-of-grade", "inspector": "Ana"}  # no defect label: left out
        assert client.post(f"/v1/review/fruits/{item['fruit']}/verdict", json=body, headers=h).status_code == 200
    return truth


def test_build_exports_crops_images_and_a_manifest(client, reviewed, tmp_path):
    out = tmp_path / "ds"
    m = line.build(client.app.state.ctx.repo, out)
    assert m["skipped"] == {"corrected grade without a defect label": 1}
    items = m["items"]
    assert len(items) == 11 and {i["split"] for i in items} == {"train", "val", "test"}
    for lot in {i["lot"] for i in items}:  # a lot never spans two splits
        assert len({i["split"] for i in items if i["lot"] == lot}) == 1
    for i in items:
        assert (out / i["path"]).exists() and (out / i["image"]).exists()
        assert i["path"].startswith(f"crops/{i['split']}/{i['label']}/")
        assert i["label"] == ("defective" if reviewed[i["result_id"]] else "sound") and i["label_source"] == "inspector"
        assert i["disagreement"] == ((i["model_label"] == "sound") != (i["label"] == "sound"))
    assert m["disagreements"] == sum(i["disagreement"] for i in items)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["sha256"] == m["sha256"] and len(on_disk["sha256"]) == 64
    assert line.build(client.app.state.ctx.repo, tmp_path / "ds2", lot="L-A")["items"][0]["lot"] == "L-A"


def test_suggest_ranks_uncertain_unreviewed_fruit_and_routes_them(client):
    from inference.metadata import read_spec
    from service.registry import serving_metadata

    client.post("/v1/lots", json={"id": "L-S"}, headers=headers())
    for k in range(10):
        _grade(client, 300 + k, "L-S", mm_per_px="0.55", brix="13")  # calibrated, Brix known
    ctx = client.app.state.ctx
    spec = read_spec(serving_metadata(ctx.repo, ctx.settings.model_dir))
    picks = line.suggest(ctx.repo, spec, limit=3)
    unflagged = [i for i in client.get("/v1/results?lot_id=L-S&flagged=false", headers=headers("inspector")).json()["items"]]
    if not unflagged:
        pytest.skip("every fruit was flagged by grading: nothing to suggest")
    assert 1 <= len(picks) <= 3 and len({p["fruit"] for p in picks}) == len(picks)
    assert picks == sorted(picks, key=lambda p: -p["uncertainty"])[: len(picks)] or len(picks) > 1  # diversity may reorder
    assert line.route_to_review(ctx.repo, picks) == len(picks)
    queued = client.get("/v1/review/queue?flag=suggested", headers=headers("inspector")).json()
    assert queued["total"] == len(picks) and "teach the model" in queued["items"][0]["flags"][-1]["reason"]


def test_the_service_routes_a_share_of_uncertain_fruit_to_review(settings, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import SHIPPED_MODELS

    # the from-scratch 0.3.0 model: the pretrained default flags these synthetic fruit `ood` (their
    # texture is unlike any photo), and a fruit already flagged is never the sampled one
    routed = settings.model_copy(update={"review_sample_share": 1.0, "model_dir": SHIPPED_MODELS / "apple-defect" / "0.3.0"})
    with TestClient(create_app(routed)) as c:
        threshold = c.app.state.ctx.model.spec.threshold_defective
        c.post("/v1/lots", json={"id": "L-R"}, headers=headers())
        fruits = [f for k in range(8) for f in _grade(c, 400 + k, "L-R", mm_per_px="0.55", brix="13")[0]["fruits"]]
    checked = 0
    for f in fruits:
        others = [x for x in f["flags"] if x != "suggested"]
        if others or f["defect"] is None:
            assert "suggested" not in f["flags"]  # already going to review for a reason
            continue
        checked += 1
        unsure = uncertainty(f["defect"]["score"], threshold) >= 0.5
        assert ("suggested" in f["flags"]) == unsure, (f["defect"]["score"], threshold)  # share 1.0: every unsure one
    assert checked


@pytest.mark.realdata
def test_build_merges_a_base_dataset_by_reference(client, reviewed, tmp_path, shared_data):
    import yaml

    from .conftest import REPO

    splits = yaml.safe_load((REPO / "training" / "configs" / "apple_defect.yaml").read_text())["data"]["splits"]
    m = line.build(client.app.state.ctx.repo, tmp_path / "ds", base=shared_data / "fruitnet-apples", base_splits=splits)
    base = [i for i in m["items"] if i["source"] == "fruitnet-apples"]
    assert len(base) > 1000 and all(i["kind"] == "image" and i["path"].startswith("/") for i in base)
    assert not list((tmp_path / "ds").rglob("IMG*"))  # referenced by path and hash, never copied
    assert {i["split"] for i in base} == {"train", "val", "test"} and len({i["sha256"] for i in base}) > 1000


ORANGE_CLASSES = ("sound", "blackspot", "canker", "greening", "rot")


def test_build_keeps_one_commodity_and_its_defect_types(client, reviewed, tmp_path):
    """Orange fruit reviewed with defect types next to the apples: an orange dataset holds only the
    oranges, labelled with the inspectors' types; a type the model does not know is left out."""
    client.post("/v1/lots", json={"id": "NAV-1", "commodity": "orange"}, headers=headers())
    oranges = [_grade(client, 300 + k, "NAV-1")[0]["id"] for k in range(3)]
    h = headers("inspector")
    labels = dict(zip(oranges, ("canker", "sound", "scar")))
    for item in client.get("/v1/review/queue?limit=100&lot_id=NAV-1", headers=h).json()["items"]:
        body = {"decision": "confirm", "defect_label": labels[item["result_id"]], "inspector": "Li"}
        assert client.post(f"/v1/review/fruits/{item['fruit']}/verdict", json=body, headers=h).status_code == 200
    m = line.build(client.app.state.ctx.repo, tmp_path / "nav", commodity="orange", classes=ORANGE_CLASSES)
    assert m["classes"] == list(ORANGE_CLASSES) and m["filters"]["commodity"] == "orange"
    assert sorted(i["label"] for i in m["items"]) == ["canker", "sound"]
    assert {i["lot"] for i in m["items"]} == {"NAV-1"}
    assert m["skipped"] == {"a defect label that is not one of the model's classes": 1}
    apples = line.build(client.app.state.ctx.repo, tmp_path / "apples", commodity="apple")
    assert len(apples["items"]) == 11 and {i["label"] for i in apples["items"]} <= {"sound", "defective"}


def test_training_refuses_a_dataset_labelled_in_other_classes(tmp_path):
    pytest.importorskip("torch")
    from training.data import load_manifest_data

    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"sha256": "x", "items": [{"path": "a.jpg", "kind": "crop", "label": "canker", "split": "train", "session": "s"}]})
    )
    with pytest.raises(ValueError, match=r"\['canker'\] are not classes of this model"):
        load_manifest_data(manifest, 64, 0.08, tmp_path, ["sound", "defective"])
