"""The role table in docs/roles.md ("Roles") is the contract: every route of the OpenAPI schema is in
it, and every route is called with no key, a wrong key and each role's key, in-process and
against a real `grader serve` process. A route added without a row in the table fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import API_KEYS, headers

README = Path(__file__).resolve().parents[1] / "docs" / "roles.md"
ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE|WS) ([^`]+)` \| ([^|]+) \|\s*$")


def role_table() -> dict[tuple[str, str], frozenset[str] | None]:
    """(method, path) -> the roles README admits (None: public), from its "Roles" table."""
    text = README.read_text()
    section = text[text.index("### Roles") :]
    section = section[: section.index("\n### ", 5)] if "\n### " in section[5:] else section
    table: dict[tuple[str, str], frozenset[str] | None] = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            method, path, who = m.groups()
            roles = [re.sub(r"[^a-z]", "", r) for r in who.split(",")]
            table[(method, path)] = None if roles == ["public"] else frozenset(roles)
    assert table, "README has no role table"
    return table


TABLE = role_table()
HTTP_ROUTES = sorted(k for k in TABLE if k[0] != "WS")
CREDENTIALS = {"no key": None, "wrong key": "wrong-key-but-long-enough-0000", **API_KEYS}


def url_of(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path) + ("?max_events=1" if path.endswith("/stream") else "")


def expectation(route, who: str) -> str:
    """What the route must answer `who`: "public", "401", "403" or "admitted" (anything but 401/403)."""
    roles = TABLE[route]
    if roles is None:
        return "public"
    if who in ("no key", "wrong key"):
        return "401"
    return "admitted" if who in roles else "403"


def check(route, who: str, status: int) -> None:
    want = expectation(route, who)
    where = f"{who} on {route[0]} {route[1]}: got {status}"
    assert status < 500, where
    if want == "401":
        assert status == 401, where
    elif want == "403":
        assert status == 403, where
    else:
        assert status not in (401, 403), where


def schema_routes(spec: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_every_route_is_in_the_readme_table(client):
    found = schema_routes(client.get("/openapi.json").json())
    assert found - set(HTTP_ROUTES) == set(), f"routes without a row in README's role table: {sorted(found - set(HTTP_ROUTES))}"
    assert set(HTTP_ROUTES) - found == set(), f"README lists routes the service does not have: {sorted(set(HTTP_ROUTES) - found)}"
    assert all(r is None or "admin" in r for r in TABLE.values()), "admin may call every keyed route"


def test_the_gate_knows_the_same_roles_as_the_table(client):
    """The roles the gate enforces (from each route's require(...)) are the README's."""
    from service.gate import flat_routes, roles_of

    app = client.app
    for route in flat_routes(app):
        methods = getattr(route, "methods", None) or {"WS"}
        for method in methods - {"HEAD"}:
            key = (method, route.path)
            if key in TABLE:
                assert roles_of(route) == TABLE[key], key


@pytest.fixture(scope="module")
def one_client(tmp_path_factory):
    """One app for the whole walk (building one per route would take minutes)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("roles") / "var", api_keys=",".join(f"{r}:{k}" for r, k in API_KEYS.items()))
    with TestClient(create_app(s)) as c:
        yield c


@pytest.mark.parametrize("route", HTTP_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_roles_on_every_route_in_process(one_client, route):
    method, path = route
    for who, key in CREDENTIALS.items():
        status = one_client.request(method, url_of(path), headers={"X-API-Key": key} if key else {}).status_code
        check(route, who, status)


@pytest.mark.slow
def test_roles_on_every_route_of_a_real_server(tmp_path):
    """The same walk over real HTTP: the gate in front of the app answers as the table says."""
    import httpx

    from service.process import ServerProcess

    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
    with ServerProcess(tmp_path / "var", env) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        found = schema_routes(c.get("/openapi.json").json())
        assert found == set(HTTP_ROUTES)
        for route in HTTP_ROUTES:
            for who, key in CREDENTIALS.items():
                r = c.request(route[0], url_of(route[1]), headers={"X-API-Key": key} if key else {})
                check(route, who, r.status_code)
        assert "Traceback" not in srv.log()


def test_a_camera_can_neither_close_nor_reopen_a_lot_and_reads_only_its_own_results(client):
    from datasets.synthetic import make_fruit_image

    from .conftest import jpeg_bytes

    assert client.post("/v1/lots", json={"id": "L-cam"}, headers=headers()).status_code == 201
    assert client.post("/v1/lots/L-cam/close", headers=headers()).status_code == 403
    r = client.post(
        "/v1/grade",
        files={"image": ("f.jpg", jpeg_bytes(make_fruit_image(seed=2)[0]), "image/jpeg")},
        data={"lot_id": "L-cam", "mm_per_px": "0.3"},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    assert client.post("/v1/lots/L-cam/close", headers=headers("inspector")).json()["status"] == "closed"
    assert client.post("/v1/lots/L-cam/reopen", headers=headers()).status_code == 403
    assert client.post("/v1/lots/L-cam/reopen", headers=headers("inspector")).json()["status"] == "open"
    # a lot's fruit are for inspectors and trainers, as its report is
    assert client.get("/v1/results", params={"lot_id": "L-cam"}, headers=headers()).status_code == 403
    assert client.get("/v1/lots/L-cam/report", headers=headers()).status_code == 403
    assert [x["id"] for x in client.get("/v1/results", headers=headers()).json()["items"]] == [rid]
    assert client.get(f"/v1/results/{rid}", headers=headers()).status_code == 200


def test_a_camera_key_sees_no_other_keys_results(settings):
    """With a key per camera, one camera cannot read another's results."""
    from fastapi.testclient import TestClient

    from datasets.synthetic import make_fruit_image
    from service.app import create_app

    from .conftest import jpeg_bytes

    other = "camera-two-key-0123456789"
    s = settings.model_copy(update={"api_keys": settings.api_keys + f",camera:{other}"})
    with TestClient(create_app(s)) as c:
        r = c.post("/v1/grade", files={"image": ("f.jpg", jpeg_bytes(make_fruit_image(seed=3)[0]), "image/jpeg")}, headers=headers())
        rid = r.json()["id"]
        mine = {"X-API-Key": other}
        assert c.get("/v1/results", headers=mine).json()["items"] == []
        assert c.get(f"/v1/results/{rid}", headers=mine).status_code == 404
        assert c.get(f"/v1/results/{rid}/image", headers=mine).status_code == 404
        assert c.get(f"/v1/results/{rid}", headers=headers("inspector")).status_code == 200


def test_public_routes_need_no_key(client):
    for (method, path), roles in TABLE.items():
        if roles is None:
            assert client.request(method, path).status_code == 200


def test_pages_hold_no_data_and_need_no_key(client):
    """The review page and its assets are public: they carry no data, and every call they make
    goes through the API with the key the user signs in with."""
    r = client.get("/review")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert client.get("/static/review.js").status_code == 200
    assert client.get("/static/../settings.py").status_code == 404
    assert client.get("/", follow_redirects=False).headers["location"] == "/review"


def test_docs_come_from_the_service_itself(client, settings):
    """/docs loads Swagger UI from this service (no CDN), and a setting turns it off."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    page = client.get("/docs")
    assert page.status_code == 200
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert srcs and all(s.startswith("/") for s in srcs), srcs
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for src in srcs:
        assert client.get(src).status_code == 200, src
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    with TestClient(create_app(settings.model_copy(update={"docs_enabled": False}))) as off:
        assert off.get("/docs").status_code == 404
