"""Sweetness fusion, lots and their reports, through the API; flags and temperature correction."""

import csv
import io

import pytest

from datasets.synthetic import make_fruit_image
from grader.flags import FlagPolicy, LotContext, fruit_flags
from grader.records import DefectEvidence, SweetnessEvidence
from grader.sweetness import InvalidReading, correct_to_20c

from .conftest import headers, png_bytes


# ---------------------------------------------------------------- temperature correction
def test_temperature_correction_follows_the_icumsa_table():
    assert correct_to_20c(10.0, 20.0) == pytest.approx(10.0)
    assert correct_to_20c(10.0, 25.0) == pytest.approx(10.34)
    assert correct_to_20c(10.0, 15.0) == pytest.approx(9.69)
    assert correct_to_20c(12.5, 22.5) == pytest.approx(12.5 + (0.345 + 0.0) / 2, abs=0.005)
    assert correct_to_20c(11.0, None) == 11.0


@pytest.mark.parametrize("brix,temp", [(40.0, 20.0), (-1.0, 20.0), (float("nan"), 20.0), (10.0, 45.0), (10.0, 5.0)])
def test_impossible_readings_are_refused(brix, temp):
    with pytest.raises(InvalidReading):
        correct_to_20c(brix, temp)


# ---------------------------------------------------------------- flags
def _defect(label="sound", score=0.1):
    return DefectEvidence(label, score, {}, "m", "1")


def test_size_and_brix_outliers_against_the_lot():
    lot = LotContext(diameters_mm=tuple(70 + (i % 5) * 0.5 for i in range(20)), brix=tuple(12 + (i % 4) * 0.1 for i in range(20)))
    p = FlagPolicy()
    codes = [f.code for f in fruit_flags(_defect(), None, p, 52.0, SweetnessEvidence(12.1), lot)]
    assert codes == ["size_outlier"]
    codes = [f.code for f in fruit_flags(_defect(), None, p, 71.0, SweetnessEvidence(16.5), lot)]
    assert codes == ["brix_outlier"]
    small_lot = LotContext(diameters_mm=(70.0, 71.0))
    assert fruit_flags(_defect(), None, p, 40.0, None, small_lot) == []  # too few to judge


def test_sweet_fruit_the_model_calls_defective_is_flagged():
    p = FlagPolicy(review_band=(0.3, 0.7))
    codes = [f.code for f in fruit_flags(_defect("defective", 0.95), None, p, 70.0, SweetnessEvidence(14.2))]
    assert codes == ["signals_disagree"]
    assert fruit_flags(_defect("defective", 0.95), None, p, 70.0, SweetnessEvidence(10.0)) == []


# ---------------------------------------------------------------- through the API
@pytest.fixture
def orange_lot(client):
    r = client.post(
        "/v1/lots",
        json={
            "id": "N-1",
            "grower": "Gannan Co-op",
            "orchard_block": "A3",
            "variety": "Newhall",
            "standard_id": "gbt-21488-navel-oranges",
            "harvest_date": "2026-11-20",
        },
        headers=headers(),
    )
    assert r.status_code == 201, r.text
    assert r.json()["commodity"] == "orange"
    return "N-1"


def grade_orange(client, lot, fruit_id=None, seed=1, diameter=75.0, blemishes=(), brix=None):
    img, _ = make_fruit_image(seed=seed, diameter_mm=diameter, mm_per_px=0.4, colour="orange", blemishes_cm2=blemishes)
    data = {"mm_per_px": "0.4", "lot_id": lot}
    if fruit_id:
        data.update(fruit_id=fruit_id, camera_id="cam-1")
    if brix is not None:
        data["brix"] = str(brix)
    r = client.post("/v1/grade", files={"image": ("o.png", png_bytes(img), "image/png")}, data=data, headers=headers())
    assert r.status_code == 200, r.text
    return r.json()


def test_late_refractometer_reading_regrades_the_fruit(client, orange_lot):
    first = grade_orange(client, orange_lot, fruit_id="F-1")
    f = first["fruits"][0]
    assert first["standard"]["id"] == "gbt-21488-navel-oranges"
    assert f["provisional"] and "provisional" in f["flags"] and f["brix"] is None
    r = client.post("/v1/brix", json={"brix": 10.2, "temperature_c": 25.0, "source": "refractometer", "fruit_id": "F-1"}, headers=headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reading"]["brix_20c"] == pytest.approx(10.54, abs=0.01)
    [change] = body["regraded"]
    assert change["result_id"] == first["id"] and change["new_brix"] == pytest.approx(10.54, abs=0.01)
    again = client.get(f"/v1/results/{first['id']}", headers=headers("inspector")).json()
    g = again["fruits"][0]
    assert g["brix"] == pytest.approx(10.54, abs=0.01) and g["brix_source"] == "refractometer"
    assert not g["provisional"] and "provisional" not in g["flags"]
    assert g["grade"] in ("Grade 1", "Grade 2", "out-of-grade") and g["grade"] != "Premium"  # 10.54 < 11 for Premium
    assert "sweetness 10.5 °Brix < 11 °Brix for Premium" in g["reasons"]
    assert again["grade_changes"][0]["new_brix"] == pytest.approx(10.54, abs=0.01)


def test_reading_before_the_image_is_used_when_it_arrives(client, orange_lot):
    assert client.post("/v1/brix", json={"brix": 12.0, "fruit_id": "F-2"}, headers=headers()).json()["regraded"] == []
    f = grade_orange(client, orange_lot, fruit_id="F-2")["fruits"][0]
    assert f["brix"] == 12.0 and f["brix_source"] == "refractometer" and not f["provisional"]


def test_lot_sample_estimate_used_for_fruit_without_a_reading(client, orange_lot):
    before = grade_orange(client, orange_lot, seed=3)
    for v in (11.6, 12.0, 12.4):
        r = client.post("/v1/brix", json={"brix": v, "lot_id": orange_lot}, headers=headers())
        assert r.status_code == 200 and r.json()["reading"]["status"] == "accepted"
    after = client.get(f"/v1/results/{before['id']}", headers=headers("inspector")).json()["fruits"][0]
    assert after["brix_source"] == "lot-sample" and after["brix_n"] == 3
    assert after["brix"] == pytest.approx(12.0) and after["brix_spread"] == pytest.approx(0.4)
    new = grade_orange(client, orange_lot, seed=4)["fruits"][0]
    assert new["brix_source"] == "lot-sample" and new["brix_n"] == 3


def test_implausible_and_outlying_readings_are_not_used(client, orange_lot):
    r = client.post("/v1/brix", json={"brix": 2.0, "lot_id": orange_lot}, headers=headers())
    assert r.json()["reading"]["status"] == "flagged" and "outside" in r.json()["reading"]["note"]
    for i in range(10):
        client.post("/v1/brix", json={"brix": 11.8 + 0.1 * (i % 4), "lot_id": orange_lot}, headers=headers())
    r = client.post("/v1/brix", json={"brix": 18.5, "lot_id": orange_lot}, headers=headers())
    assert r.json()["reading"]["status"] == "flagged" and "robust SD" in r.json()["reading"]["note"]
    rep = client.get(f"/v1/lots/{orange_lot}/report", headers=headers("inspector")).json()
    assert rep["brix"]["lot_samples"]["n"] == 10


@pytest.mark.parametrize(
    "body,field",
    [
        ({"brix": 40, "lot_id": "N-1"}, "brix"),
        ({"brix": 10, "temperature_c": 60, "lot_id": "N-1"}, "temperature_c"),
        ({"brix": 10}, None),
        ({"brix": "sweet", "lot_id": "N-1"}, "brix"),
    ],
)
def test_bad_brix_requests_are_422(client, orange_lot, body, field):
    r = client.post("/v1/brix", json=body, headers=headers())
    assert r.status_code == 422
    if field:
        assert r.json()["error"]["field"] == field


def test_unknown_and_closed_lots(client, orange_lot):
    assert client.post("/v1/brix", json={"brix": 11, "lot_id": "nope"}, headers=headers()).status_code == 404
    img, _ = make_fruit_image(seed=1)
    files = {"image": ("o.png", png_bytes(img), "image/png")}
    assert client.post("/v1/grade", files=files, data={"lot_id": "nope"}, headers=headers()).status_code == 404
    assert client.post(f"/v1/lots/{orange_lot}/close", headers=headers()).status_code == 403  # a camera may not close a lot
    assert client.post(f"/v1/lots/{orange_lot}/close", headers=headers("inspector")).json()["status"] == "closed"
    r = client.post("/v1/grade", files=files, data={"lot_id": orange_lot}, headers=headers())
    assert r.status_code == 409 and r.json()["error"]["code"] == "lot_closed"
    assert client.post("/v1/lots", json={"id": orange_lot}, headers=headers()).status_code == 409
    assert [x["id"] for x in client.get("/v1/lots?status=closed", headers=headers()).json()["lots"]] == [orange_lot]


def test_lot_report_in_three_formats_with_tolerance_verdicts(client, orange_lot):
    for i in range(4):
        grade_orange(client, orange_lot, fruit_id=f"R-{i}", seed=10 + i, diameter=70 + 3 * i, brix=12.5)
    grade_orange(client, orange_lot, fruit_id="R-9", seed=20, brix=8.0)  # below every grade's Brix minimum
    rep = client.get(f"/v1/lots/{orange_lot}/report", headers=headers("inspector")).json()
    assert rep["fruit"] == 5
    counts = {g["grade"]: g["count"] for g in rep["by_grade"]}
    assert counts["out-of-grade"] >= 1 and sum(counts.values()) == 5
    assert rep["size_mm"]["n"] == 5 and sum(b["count"] for b in rep["size_mm"]["histogram"]) == 5
    assert rep["brix"]["fruit_readings"]["n"] == 5
    tol = {t["grade"]: t for t in rep["tolerances"]}
    # at least 1 of 5 (20 %) is below Grade 2: over the 10 % tolerance
    assert tol["Grade 2"]["share_below_grade"] >= 0.2 and tol["Grade 2"]["meets"] is False
    csv_r = client.get(f"/v1/lots/{orange_lot}/report?format=csv", headers=headers("inspector"))
    assert csv_r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_r.text)))
    assert len(rows) == 5 and {r["fruit_id"] for r in rows} == {"R-0", "R-1", "R-2", "R-3", "R-9"}
    html = client.get(f"/v1/lots/{orange_lot}/report?format=html", headers=headers("inspector"))
    assert html.headers["content-type"].startswith("text/html")
    assert "<svg" in html.text and "Lot N-1" in html.text and "fails" in html.text
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "<script" not in html.text
    assert client.get(f"/v1/lots/{orange_lot}/report", headers=headers("camera")).status_code == 403


def test_decay_ood_review_band_and_provisional_flags():
    from grader.records import GradeDecision, Reason

    p = FlagPolicy(review_band=(0.3, 0.7))
    assert [f.code for f in fruit_flags(_defect("rot", 0.9), None, p)] == ["decay"]
    ood = DefectEvidence("sound", 0.1, {}, "m", "1", ood_score=3.0, ood=True)
    assert [f.code for f in fruit_flags(ood, None, p)] == ["ood"]
    assert [f.code for f in fruit_flags(_defect("sound", 0.5), None, p)] == ["defect_uncertain"]
    assert fruit_flags(_defect("sound", 0.2), None, p) == []
    prov = GradeDecision("Premium", "s", "1", [Reason("Premium", "min_brix", None, 11.0, "…", True)], True, None)
    flags = fruit_flags(_defect(), prov, p)
    assert [f.code for f in flags] == ["provisional"] and "min_brix" in flags[0].reason


def test_ood_signal_from_the_model_metadata():
    import numpy as np

    from grader.defect import evidence_from_logits
    from inference.metadata import read_spec

    meta = {
        "name": "m",
        "version": "1",
        "classes": ["sound", "defective"],
        "preprocessing": {"input_size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
        "thresholds": {"defective": 0.5, "ood_energy": -2.0},
    }
    spec = read_spec(meta)
    known, unknown = evidence_from_logits(np.array([[6.0, -3.0], [0.2, 0.1]]), spec)
    assert known.ood is False and unknown.ood is True and unknown.ood_score > known.ood_score
    del meta["thresholds"]["ood_energy"]
    assert evidence_from_logits(np.array([[0.2, 0.1]]), read_spec(meta))[0].ood is None
