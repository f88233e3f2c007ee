"""Every route in the OpenAPI schema, called with no key and with each role's key: the role
matrix below is the contract."""

import re

import pytest

from .conftest import API_KEYS, headers

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# route -> roles admitted besides admin
MATRIX = {
    ("POST", "/v1/grade"): {"camera"},
    ("POST", "/v1/grade/batch"): {"camera"},
    ("GET", "/v1/results"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/results/{result_id}"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/results/{result_id}/image"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/results/{result_id}/overlay"): {"camera", "inspector", "trainer"},
    ("POST", "/v1/cameras/{camera_id}/calibration"): {"camera"},
    ("POST", "/v1/cameras/{camera_id}/video"): {"camera"},
    ("GET", "/v1/cameras/{camera_id}/calibration"): {"camera", "inspector", "trainer"},
    ("POST", "/v1/lots"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/lots"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/lots/{lot_id}"): {"camera", "inspector", "trainer"},
    ("POST", "/v1/lots/{lot_id}/close"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/lots/{lot_id}/report"): {"inspector", "trainer"},
    ("POST", "/v1/brix"): {"camera"},
    ("GET", "/v1/review/queue"): {"inspector"},
    ("POST", "/v1/review/fruits/{fruit}/claim"): {"inspector"},
    ("POST", "/v1/review/fruits/{fruit}/verdict"): {"inspector"},
    ("POST", "/v1/review/verdicts/{verdict_id}/undo"): {"inspector"},
    ("GET", "/v1/review/verdicts"): {"inspector", "trainer"},
    ("GET", "/v1/review/summary"): {"inspector", "trainer"},
    ("GET", "/v1/models"): {"inspector", "trainer"},
    ("GET", "/v1/models/{model_id}"): {"inspector", "trainer"},
    ("POST", "/v1/models"): {"trainer"},
    ("POST", "/v1/models/{model_id}/promote"): {"trainer"},
    ("POST", "/v1/models/rollback"): {"trainer"},
    ("GET", "/v1/models/shadow"): {"trainer", "inspector"},
    ("GET", "/v1/fruits/{fruit_id}/events"): {"camera", "inspector", "trainer"},
    ("GET", "/v1/line/stats"): {"inspector", "trainer"},
    ("GET", "/v1/line/stream"): {"inspector", "trainer"},
    ("DELETE", "/v1/models/shadow"): {"trainer"},
    ("POST", "/v1/models/{model_id}/shadow"): {"trainer"},
}


def routes(client):
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method in ops:
            yield method.upper(), path


def test_every_route_is_in_the_matrix(client):
    found = set(routes(client))
    assert found - PUBLIC == set(MATRIX), f"routes without a role contract: {sorted(found - PUBLIC - set(MATRIX))}"


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_roles_on_every_route(client, route):
    method, path = route
    url = re.sub(r"\{[^}]+\}", "1", path) + ("?max_events=1" if path.endswith("/stream") else "")
    assert client.request(method, url).status_code == 401, "no key must be 401"
    assert client.request(method, url, headers={"X-API-Key": "not-a-key-at-all"}).status_code == 401
    for role in API_KEYS:
        status = client.request(method, url, headers=headers(role)).status_code
        if role == "admin" or role in MATRIX[route]:
            assert status not in (401, 403), f"{role} must be admitted to {method} {path} (got {status})"
        else:
            assert status == 403, f"{role} must be refused {method} {path} (got {status})"


def test_public_routes_need_no_key(client):
    for method, path in PUBLIC:
        assert client.request(method, path).status_code == 200


def test_pages_hold_no_data_and_need_no_key(client):
    """The review page and its assets are public: they carry no data, and every call they make
    goes through the API with the key the user signs in with."""
    r = client.get("/review")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert client.get("/static/review.js").status_code == 200
    assert client.get("/static/../settings.py").status_code == 404
    assert client.get("/", follow_redirects=False).headers["location"] == "/review"
