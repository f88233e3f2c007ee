"""The storage and grading path again on the real PostgreSQL at 127.0.0.1:5432 (a fresh database
per run, dropped afterwards). Skipped cleanly where no server answers."""

import pytest

from datasets.synthetic import make_fruit_image

from .conftest import headers, jpeg_bytes

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_client(settings, pg_url):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings.model_copy(update={"database_url": pg_url}))) as c:
        yield c


def test_grade_store_and_read_back_on_postgres(pg_client):
    img, _ = make_fruit_image(seed=21, diameter_mm=66, mm_per_px=0.3)
    data = jpeg_bytes(img)
    form = {"mm_per_px": "0.3", "camera_id": "cam-pg", "fruit_id": "f-77"}
    r = pg_client.post("/v1/grade", files={"image": ("a.jpg", data, "image/jpeg")}, data=form, headers=headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fruits"][0]["diameter_mm"] == pytest.approx(66, abs=1)
    got = pg_client.get(f"/v1/results/{body['id']}", headers=headers("inspector")).json()
    assert got["fruits"] == body["fruits"]
    retry = pg_client.post("/v1/grade", files={"image": ("a.jpg", data, "image/jpeg")}, data=form, headers=headers()).json()
    assert retry["id"] == body["id"] and retry["replayed"]
    assert pg_client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_two_service_processes_share_one_database(pg_url, tmp_path):
    """Two `grader serve` replicas on one PostgreSQL: a result graded by one is read from the other,
    and a retry sent to the other replica is answered with the first result."""
    import httpx

    from .conftest import API_KEYS, jpeg_bytes
    from .test_server_process import free_port, start

    env = {"GRADER_DATABASE_URL": pg_url}
    ports = [free_port(), free_port()]
    procs = [start(tmp_path, p, env) for p in ports]
    try:
        img, _ = make_fruit_image(seed=31, diameter_mm=69, mm_per_px=0.3)
        form = {"mm_per_px": "0.3", "camera_id": "cam-r", "fruit_id": "F-r1"}
        cam = {"X-API-Key": API_KEYS["camera"]}
        r = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/grade",
            files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
            data=form,
            headers=cam,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        other = httpx.get(f"http://127.0.0.1:{ports[1]}/v1/results/{rid}", headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10)
        assert other.status_code == 200 and other.json()["fruits"][0]["diameter_mm"] == pytest.approx(69, abs=1)
        retry = httpx.post(
            f"http://127.0.0.1:{ports[1]}/v1/grade",
            files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
            data=form,
            headers=cam,
            timeout=30,
        ).json()
        assert retry["id"] == rid and retry["replayed"]
    finally:
        for p in procs:
            p.stop()


@pytest.mark.parametrize("odd", ["🍎-线-\u202eevil", "x'; DROP TABLE results;--", "../../etc/passwd"], ids=["unicode", "sql", "path"])
def test_odd_identifiers_round_trip_on_postgres(pg_client, odd):
    img, _ = make_fruit_image(seed=22, diameter_mm=66, mm_per_px=0.3)
    r = pg_client.post(
        "/v1/grade",
        files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
        data={"mm_per_px": "0.3", "camera_id": odd, "fruit_id": odd},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    listed = pg_client.get("/v1/results", params={"camera_id": odd}, headers=headers("inspector")).json()["items"]
    assert listed and all(x["camera_id"] == odd for x in listed)
    assert pg_client.post("/v1/brix", json={"brix": 12.0, "fruit_id": "nul\x00"}, headers=headers()).status_code == 422
    assert (
        pg_client.post(
            "/v1/review/fruits/1/verdict", json={"decision": "confirm", "note": "a\x00b"}, headers=headers("inspector")
        ).status_code
        == 422
    )
