"""The review queue: priorities, claims, verdicts beside the model's output, undo, lot report counts."""

import numpy as np
import pytest

from datasets.synthetic import make_fruit_image

from .conftest import headers, png_bytes


def grade(client, seed, **form):
    img, _ = make_fruit_image(seed=seed, diameter_mm=70, mm_per_px=0.4)
    r = client.post(
        "/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, data={k: str(v) for k, v in form.items()}, headers=headers()
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def queue3(client):
    client.post("/v1/lots", json={"id": "Q-1"}, headers=headers())
    ids = [grade(client, s, lot_id="Q-1")["id"] for s in range(3)]  # no scale: flagged uncalibrated + provisional
    grade(client, 9, lot_id="Q-1", mm_per_px=0.4, brix=12)  # calibrated, Brix known: not flagged by measurement
    return ids


def test_queue_lists_flagged_fruit_by_priority(client, queue3):
    q = client.get("/v1/review/queue?lot_id=Q-1", headers=headers("inspector")).json()
    assert q["total"] >= 3 and q["by_flag"]["uncalibrated"] == 3
    assert {i["result_id"] for i in q["items"]} >= set(queue3)
    prios = [i["priority"] for i in q["items"]]
    assert prios == sorted(prios)
    assert client.get("/v1/review/queue?flag=uncalibrated", headers=headers("inspector")).json()["total"] == 3
    assert client.get("/v1/review/queue", headers=headers("camera")).status_code == 403


def test_claims_verdicts_and_undo(client, queue3):
    items = client.get("/v1/review/queue?flag=uncalibrated", headers=headers("inspector")).json()["items"]
    fruit = items[0]["fruit"]
    h = headers("inspector")
    assert client.post(f"/v1/review/fruits/{fruit}/claim?inspector=Ana", headers=h).status_code == 200
    r = client.post(f"/v1/review/fruits/{fruit}/claim?inspector=Ben", headers=h)
    assert r.status_code == 409 and "Ana" in r.json()["error"]["message"]
    assert client.post(f"/v1/review/fruits/{fruit}/verdict", json={"decision": "confirm", "inspector": "Ben"}, headers=h).status_code == 409
    bad = client.post(f"/v1/review/fruits/{fruit}/verdict", json={"decision": "correct", "grade": "Super", "inspector": "Ana"}, headers=h)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "grade"
    v = client.post(
        f"/v1/review/fruits/{fruit}/verdict",
        json={"decision": "correct", "grade": "Class II", "defect_label": "bruise", "note": "soft", "inspector": "Ana"},
        headers=h,
    ).json()
    assert v["grade"] == "Class II" and v["model_grade"] == items[0]["grade"] and v["inspector"] == "Ana"
    # the model's output is unchanged
    res = client.get(f"/v1/results/{items[0]['result_id']}", headers=h).json()
    assert res["fruits"][0]["grade"] == items[0]["grade"]
    left = client.get("/v1/review/queue?flag=uncalibrated", headers=h).json()
    assert fruit not in [i["fruit"] for i in left["items"]] and left["total"] == 2
    assert client.post(f"/v1/review/fruits/{fruit}/verdict", json={"decision": "confirm", "inspector": "Ana"}, headers=h).status_code == 409
    rep = client.get("/v1/lots/Q-1/report", headers=h).json()
    assert rep["examined"] == 1 and rep["flagged"] >= 3
    undone = client.post(f"/v1/review/verdicts/{v['id']}/undo", headers=h).json()
    assert undone["retracted"]
    assert client.get("/v1/review/queue?flag=uncalibrated", headers=h).json()["total"] == 3
    assert client.get("/v1/lots/Q-1/report", headers=h).json()["examined"] == 0
    history = client.get(f"/v1/review/verdicts?result_id={items[0]['result_id']}", headers=h).json()["verdicts"]
    assert [x["retracted"] for x in history] == [True]


def test_queue_items_carry_what_the_page_shows(client, queue3):
    item = client.get("/v1/review/queue?lot_id=Q-1", headers=headers("inspector")).json()["items"][0]
    assert item["grades"] == ["Extra", "Class I", "Class II", "out-of-grade"]
    assert item["defect_labels"][0] == "sound" and "bruise" in item["defect_labels"]
    assert {"diameter_mm", "blemish_area_cm2", "colour_coverage", "brix_source"} <= set(item["measurement"])
    assert item["overlay_url"].endswith(f"?fruit_index={item['fruit_index']}")


def test_summary_counts_agreement_by_inspector_and_flag(client, queue3):
    h = headers("inspector")
    items = client.get("/v1/review/queue?flag=uncalibrated", headers=h).json()["items"]
    client.post(f"/v1/review/fruits/{items[0]['fruit']}/verdict", json={"decision": "confirm", "inspector": "Ana"}, headers=h)
    other = "out-of-grade" if items[1]["grade"] != "out-of-grade" else "Extra"
    client.post(
        f"/v1/review/fruits/{items[1]['fruit']}/verdict", json={"decision": "correct", "grade": other, "inspector": "Ana"}, headers=h
    )
    v = client.post(f"/v1/review/fruits/{items[2]['fruit']}/verdict", json={"decision": "confirm", "inspector": "Ben"}, headers=h).json()
    client.post(f"/v1/review/verdicts/{v['id']}/undo", headers=h)  # retracted: not counted
    s = client.get("/v1/review/summary", headers=h).json()
    assert s["verdicts"] == 2 and s["agreement"] == 0.5
    assert s["by_inspector"] == [{"inspector": "Ana", "verdicts": 2, "confirmed": 1, "corrected": 1}]
    unc = next(f for f in s["by_flag"] if f["flag"] == "uncalibrated")
    assert unc["verdicts"] == 2 and unc["agreement"] == 0.5
    assert [c["grade"] for c in s["corrections"]] == [other]
    assert client.get("/v1/review/summary", headers=headers("camera")).status_code == 403


def test_overlay_layers_and_fruit_crop(client):
    img, _ = make_fruit_image(seed=5, diameter_mm=70, mm_per_px=0.4, blemishes_cm2=(1.0,))
    rid = client.post(
        "/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, data={"mm_per_px": "0.4"}, headers=headers()
    ).json()["id"]
    h = headers("inspector")
    import io

    from PIL import Image

    def picture(q=""):
        r = client.get(f"/v1/results/{rid}/overlay{q}", headers=h)
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)

    plain, full, heat = picture("?layers="), picture(), picture("?layers=heatmap")
    assert plain.shape == full.shape == img.shape
    assert np.abs(plain - img.astype(int)).mean() < 0.01  # no layers: the stored image itself
    assert np.abs(full - plain).sum() > 0 and np.abs(heat - plain).sum() > 0 and np.abs(heat - full).sum() > 0
    crop = picture("?fruit_index=0")
    assert crop.shape[0] < img.shape[0] and crop.shape[1] < img.shape[1]
    bad = client.get(f"/v1/results/{rid}/overlay?layers=contour,xray", headers=h)
    assert bad.status_code == 422 and "xray" in bad.json()["error"]["message"] and bad.json()["error"]["field"] == "layers"
    assert client.get(f"/v1/results/{rid}/overlay?fruit_index=3", headers=h).status_code == 404
