"""POST /v1/grade/batch: several frames in one request, or several views of one fruit fused."""

import pytest

from datasets.synthetic import make_fruit_image

from .conftest import headers, jpeg_bytes, png_bytes


def files(images):
    return [("images", (f"v{i}.png", png_bytes(img), "image/png")) for i, img in enumerate(images)]


def test_frames_mode_stores_one_result_per_image_in_order(client):
    imgs = [make_fruit_image(seed=s, diameter_mm=d, mm_per_px=0.4)[0] for s, d in ((1, 62.0), (2, 74.0), (3, 81.0))]
    r = client.post("/v1/grade/batch", files=files(imgs), data={"mm_per_px": "0.4"}, headers=headers())
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [round(x["fruits"][0]["diameter_mm"]) for x in res] == [62, 74, 81]
    assert len({x["id"] for x in res}) == 3
    again = client.post(
        "/v1/grade/batch", files=files(imgs), data={"mm_per_px": "0.4"}, headers={**headers(), "Idempotency-Key": "b-1"}
    ).json()["results"]
    retry = client.post(
        "/v1/grade/batch", files=files(imgs), data={"mm_per_px": "0.4"}, headers={**headers(), "Idempotency-Key": "b-1"}
    ).json()["results"]
    assert [x["id"] for x in retry] == [x["id"] for x in again] and all(x["replayed"] for x in retry)


def test_views_of_one_fruit_are_fused(client):
    views = [
        make_fruit_image(seed=10 + i, diameter_mm=d, mm_per_px=0.4, blemishes_cm2=b)[0]
        for i, (d, b) in enumerate(((70.0, (0.5,)), (71.0, ()), (72.0, (0.8,))))
    ]
    r = client.post(
        "/v1/grade/batch",
        files=files(views),
        data={"mm_per_px": "0.4", "mode": "views", "camera_id": "c", "fruit_id": "F-9"},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    [fruit] = res["fruits"]
    assert fruit["diameter_mm"] == pytest.approx(71.0, abs=0.6)  # the median view
    assert fruit["blemish_area_cm2"] == pytest.approx(1.3, rel=0.15)  # sides add up
    assert fruit["largest_blemish_cm2"] == pytest.approx(0.8, rel=0.15)
    stored = client.get(f"/v1/results/{res['id']}", headers=headers("inspector")).json()
    assert stored["fruits"] == res["fruits"]


def test_one_bad_image_refuses_the_batch_naming_it(client):
    good = make_fruit_image(seed=1)[0]
    r = client.post(
        "/v1/grade/batch",
        files=[("images", ("a.jpg", jpeg_bytes(good), "image/jpeg")), ("images", ("b.jpg", b"not an image", "image/jpeg"))],
        headers=headers(),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "images[1]" and "b.jpg" in r.json()["error"]["message"]
    assert client.get("/v1/results", headers=headers("inspector")).json()["items"] == []  # nothing stored
    too_many = [("images", (f"{i}.jpg", jpeg_bytes(good), "image/jpeg")) for i in range(33)]
    assert client.post("/v1/grade/batch", files=too_many, headers=headers()).status_code == 422
