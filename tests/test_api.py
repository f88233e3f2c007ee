"""The HTTP path through a real app (TestClient) and SQLite."""

import pytest

from datasets.synthetic import FruitSpec, make_frame, make_fruit_image

from .conftest import headers, jpeg_bytes, png_bytes


def post_image(client, data: bytes, *, role="camera", filename="fruit.jpg", ctype="image/jpeg", hdrs=None, **form):
    h = headers(role) if role else {}
    h.update(hdrs or {})
    return client.post("/v1/grade", files={"image": (filename, data, ctype)}, data={k: str(v) for k, v in form.items()}, headers=h)


@pytest.fixture(scope="module")
def fruit_jpeg():
    img, _ = make_fruit_image(seed=7, diameter_mm=72.0, mm_per_px=0.3, colour="red", blemishes_cm2=(0.6,))
    return jpeg_bytes(img)


def test_healthz_reports_the_model(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["model"]["name"]
    assert client.get("/readyz").status_code == 200


def test_grade_stores_and_returns_the_result(client, fruit_jpeg):
    assert client.post("/v1/lots", json={"id": "lot-1"}, headers=headers()).status_code == 201
    r = post_image(client, fruit_jpeg, mm_per_px=0.3, lot_id="lot-1", camera_id="cam-1", lane="3", brix=12.1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"id", "fruits", "model"}
    [fruit] = body["fruits"]
    assert set(fruit) >= {"bbox", "diameter_mm", "defect", "grade", "reasons", "flagged", "flags"}
    assert fruit["diameter_mm"] == pytest.approx(72.0, abs=1.0)
    assert 0.0 <= fruit["defect"]["score"] <= 1.0
    assert set(fruit["defect"]["probabilities"]) == {"sound", "defective"}
    assert fruit["grade"] in {"Extra", "Class I", "Class II", "out-of-grade"}
    assert isinstance(fruit["reasons"], list)
    assert body["standard"]["id"] == "unece-ffv50-apples"

    again = client.get(f"/v1/results/{body['id']}", headers=headers("inspector"))
    assert again.status_code == 200
    assert again.json()["fruits"] == body["fruits"]
    img = client.get(f"/v1/results/{body['id']}/image", headers=headers("camera"))
    assert img.status_code == 200 and img.content == fruit_jpeg
    over = client.get(f"/v1/results/{body['id']}/overlay", headers=headers("inspector"))
    assert over.status_code == 200 and over.headers["content-type"] == "image/png"
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(over.content)).size == Image.open(io.BytesIO(fruit_jpeg)).size


def test_png_and_several_fruit(client):
    img, _ = make_frame([FruitSpec(70, (45, 50)), FruitSpec(65, (140, 50), colour="green")], mm_per_px=0.5, size_px=(200, 380))
    r = post_image(client, png_bytes(img), filename="f.png", ctype="image/png", mm_per_px=0.5)
    assert r.status_code == 200, r.text
    fruits = r.json()["fruits"]
    assert [round(f["diameter_mm"]) for f in fruits] == [70, 65]


def test_without_scale_sizes_are_null_and_flagged(client, fruit_jpeg):
    body = post_image(client, fruit_jpeg).json()
    [fruit] = body["fruits"]
    assert fruit["diameter_mm"] is None
    assert "uncalibrated" in fruit["flags"] and fruit["flagged"]
    assert fruit["provisional"]


def test_empty_belt_returns_no_fruit(client):
    img, _ = make_frame([], mm_per_px=0.5, size_px=(200, 300))
    body = post_image(client, jpeg_bytes(img), mm_per_px=0.5).json()
    assert body["fruits"] == [] and [f["code"] for f in body["image_flags"]] == ["no_fruit"]


def test_a_region_that_is_not_fruit_is_neither_graded_nor_queued(client):
    """A printed page on the belt: the segmentation proposes it, the model's fruit check rejects it."""
    from datasets.regions import clutter_image

    img, _ = make_frame([], mm_per_px=0.5, size_px=(240, 240))
    img[40:200, 40:200] = clutter_image(2, 160)  # printed text in a blob
    body = post_image(client, png_bytes(img), filename="p.png", ctype="image/png", mm_per_px=0.5).json()
    assert body["fruits"] == [] and body["rejected_candidates"] >= 1 and not body["flagged"]
    assert body["rejected"][0]["fruit_score"] < 0.5
    queue = client.get("/v1/review/queue", headers=headers("inspector")).json()
    assert queue["total"] == 0 and queue["items"] == []


@pytest.mark.parametrize("role,key", [(None, None), ("camera", "wrong-key-123")])
def test_missing_or_wrong_key_is_401(client, fruit_jpeg, role, key):
    h = {"X-API-Key": key} if key else {}
    r = client.post("/v1/grade", files={"image": ("f.jpg", fruit_jpeg, "image/jpeg")}, headers=h)
    assert r.status_code == 401
    assert r.json()["error"]["field"] == "X-API-Key"


def test_wrong_role_is_403(client, fruit_jpeg):
    assert post_image(client, fruit_jpeg, role="inspector").status_code == 403
    assert post_image(client, fruit_jpeg, role="admin").status_code == 200


def test_not_an_image_is_422_with_a_clear_message(client):
    r = post_image(client, b"this is a shipping manifest, not a photo", filename="x.jpg")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "image" and "not a readable image" in err["message"]


def test_truncated_image_is_422(client, fruit_jpeg):
    r = post_image(client, fruit_jpeg[: len(fruit_jpeg) // 2])
    assert r.status_code == 422
    assert "corrupt or truncated" in r.json()["error"]["message"]


def test_unsupported_format_is_422(client):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="GIF")
    r = post_image(client, buf.getvalue(), filename="x.gif", ctype="image/gif")
    assert r.status_code == 422 and "JPEG or PNG" in r.json()["error"]["message"]


def test_missing_image_field_is_422_naming_it(client):
    r = client.post("/v1/grade", data={"mm_per_px": "0.3"}, headers=headers())
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"


@pytest.mark.parametrize(
    "field,value",
    [("mm_per_px", "nan"), ("mm_per_px", "0"), ("mm_per_px", "-1"), ("mm_per_px", "abc"), ("brix", "inf"), ("brix", "40"), ("brix", "-2")],
)
def test_bad_numbers_are_422_naming_the_field(client, fruit_jpeg, field, value):
    r = post_image(client, fruit_jpeg, **{field: value})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field


def test_too_many_pixels_is_refused(settings, fruit_jpeg):
    from fastapi.testclient import TestClient

    from service.app import create_app

    small = settings.model_copy(update={"max_image_pixels": 10_000})
    with TestClient(create_app(small)) as c:
        r = post_image(c, fruit_jpeg)
    assert r.status_code == 422 and "over the limit" in r.json()["error"]["message"]


def test_too_many_bytes_is_413(settings, fruit_jpeg):
    from fastapi.testclient import TestClient

    from service.app import create_app

    small = settings.model_copy(update={"max_image_bytes": 1000})
    with TestClient(create_app(small)) as c:
        r = post_image(c, fruit_jpeg)
    assert r.status_code == 413 and r.json()["error"]["field"] == "image"


def test_unknown_standard_is_404(client, fruit_jpeg):
    r = post_image(client, fruit_jpeg, standard="no-such-standard")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_standard"


def test_retry_with_same_camera_and_fruit_id_is_graded_once(client, fruit_jpeg):
    first = post_image(client, fruit_jpeg, camera_id="cam-9", fruit_id="f-1", mm_per_px=0.3).json()
    second = post_image(client, fruit_jpeg, camera_id="cam-9", fruit_id="f-1", mm_per_px=0.3).json()
    assert second["id"] == first["id"] and second["replayed"] and not first["replayed"]
    third = post_image(client, fruit_jpeg, hdrs={"Idempotency-Key": "k-1"}).json()
    assert post_image(client, fruit_jpeg, hdrs={"Idempotency-Key": "k-1"}).json()["id"] == third["id"]


def test_unknown_result_is_404(client):
    r = client.get("/v1/results/nope", headers=headers("inspector"))
    assert r.status_code == 404


def test_openapi_documents_grade(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/grade" in spec["paths"] and "/v1/results/{result_id}" in spec["paths"]


def test_results_list_filters_and_pages(client, fruit_jpeg):
    client.post("/v1/lots", json={"id": "P-1"}, headers=headers())
    ids = [post_image(client, fruit_jpeg, lot_id="P-1", mm_per_px=0.3, brix=14).json()["id"] for _ in range(3)]
    post_image(client, fruit_jpeg)  # another lot-less, uncalibrated (flagged) result
    h = headers("inspector")
    page1 = client.get("/v1/results?lot_id=P-1&limit=2", headers=h).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = client.get(f"/v1/results?lot_id=P-1&limit=2&cursor={page1['next_cursor']}", headers=h).json()
    assert page2["next_cursor"] is None
    assert [r["id"] for r in page1["items"] + page2["items"]] == ids[::-1]
    assert all(r["flagged"] for r in client.get("/v1/results?flagged=true", headers=h).json()["items"])
    grade = page1["items"][0]["fruits"][0]["grade"]
    assert len(client.get(f"/v1/results?lot_id=P-1&grade={grade}", headers=h).json()["items"]) == 3
    assert client.get("/v1/results?lot_id=P-1&grade=nope", headers=h).json()["items"] == []
    assert client.get("/v1/results?since=2999-01-01T00:00:00Z", headers=h).json()["items"] == []
    assert client.get("/v1/results?cursor=garbage", headers=h).status_code == 422
