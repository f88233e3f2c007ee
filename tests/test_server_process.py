"""`grader serve` as a real process: a camera posts over real HTTP, the result survives a restart."""

import httpx
import pytest

from datasets.synthetic import make_fruit_image
from service.process import ServerProcess, free_port

from .conftest import API_KEYS, jpeg_bytes

pytestmark = pytest.mark.slow


def start(tmp_path, port, extra_env=None) -> ServerProcess:
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()), **(extra_env or {})}
    return ServerProcess(tmp_path / "var", env, port=port).start()


def test_grade_over_real_http_and_result_survives_restart(tmp_path):
    port = free_port()
    img, _ = make_fruit_image(seed=3, diameter_mm=68, mm_per_px=0.25)
    proc = start(tmp_path, port)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/grade",
            files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
            data={"mm_per_px": "0.25"},
            headers={"X-API-Key": API_KEYS["camera"]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
    finally:
        proc.stop()
    proc = start(tmp_path, port)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}/v1/results/{rid}", headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10)
        assert again.status_code == 200
        assert again.json()["fruits"][0]["diameter_mm"] == pytest.approx(68, abs=1)
    finally:
        proc.stop()


def test_keys_never_reach_the_logs(tmp_path):
    """With access logging on, neither a valid key nor a rejected one appears in the server's log."""
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
    srv = ServerProcess(tmp_path / "var", env, log_level="debug").start()
    try:
        img, _ = make_fruit_image(seed=4)
        httpx.post(
            srv.url + "/v1/grade",
            files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
            headers={"X-API-Key": API_KEYS["camera"]},
            timeout=30,
        ).raise_for_status()
        assert httpx.get(srv.url + "/v1/results", headers={"X-API-Key": "wrong-key-abcdef"}).status_code == 401
        assert httpx.get(srv.url + "/v1/results", headers={"X-API-Key": API_KEYS["camera"]}).status_code == 200
    finally:
        srv.stop()
    log = srv.log()
    assert "/v1/grade" in log  # the access log is on
    for key in (*API_KEYS.values(), "wrong-key-abcdef"):
        assert key not in log


def test_two_workers_share_one_sqlite_database(tmp_path):
    """`grader serve --workers 2` on SQLite: the workers start together on a new database (one
    migrates, the other waits on the lock file), take concurrent cameras, and every result is stored."""
    from concurrent.futures import ThreadPoolExecutor

    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
    imgs = [jpeg_bytes(make_fruit_image(seed=s, diameter_mm=70, mm_per_px=0.3)[0]) for s in range(4)]
    with ServerProcess(tmp_path / "var", env, workers=2, log_level="info") as srv:

        def post(i: int) -> int:
            with httpx.Client(timeout=60) as c:  # a connection per camera: the kernel spreads them over the workers
                r = c.post(
                    srv.url + "/v1/grade",
                    files={"image": ("a.jpg", imgs[i % 4], "image/jpeg")},
                    data={"camera_id": f"cam-{i % 3}", "fruit_id": f"f{i}", "mm_per_px": "0.3"},
                    headers={"X-API-Key": API_KEYS["camera"]},
                )
                return r.status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(post, range(24)))
        assert codes == [200] * 24
        listed = httpx.get(srv.url + "/v1/results", params={"limit": 100}, headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10).json()
        rows = listed["items"] if isinstance(listed, dict) else listed
        assert sorted(r["fruit_id"] for r in rows) == sorted(f"f{i}" for i in range(24))
        assert srv.log().count("Started server process") == 2
        assert "Traceback" not in srv.log()


def test_a_refused_camera_is_told_to_retry_and_its_connection_is_closed(tmp_path):
    """Past GRADER_MAX_IN_FLIGHT a camera gets 503 with Retry-After, and the server closes that
    connection (with several worker processes its retry then may land on a less busy one); the
    grade that was in progress is answered and stored."""
    import socket
    import threading
    import time

    import cv2

    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()), "GRADER_MAX_IN_FLIGHT": "1"}
    small = jpeg_bytes(make_fruit_image(seed=1, diameter_mm=70, mm_per_px=0.3)[0])
    big_rgb = cv2.resize(make_fruit_image(seed=2, diameter_mm=70, mm_per_px=0.3)[0], None, fx=12, fy=12)
    big = jpeg_bytes(big_rgb)  # ~4700 px square: a grade of a second or more holds the one admission slot

    def raw_post(port: int, jpeg: bytes) -> tuple[bytes, bool]:
        """POST over a raw socket: (the answer's head, whether the server closed the connection after
        a 503)."""
        boundary = b"b0undary"
        body = (
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--" + boundary + b"--\r\n"
        )
        head = (
            f"POST /v1/grade HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEYS['camera']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(head + body)
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(65536)
            answer_head, _, rest = got.partition(b"\r\n\r\n")
            length = int(
                next(v for k, _, v in (ln.partition(b":") for ln in answer_head.split(b"\r\n")) if k.strip().lower() == b"content-length")
            )
            while len(rest) < length:
                rest += s.recv(65536)
            if not answer_head.startswith(b"HTTP/1.1 503"):
                return answer_head, False
            s.settimeout(2.5)  # well under the server's 5 s keep-alive timeout
            try:
                closed = s.recv(1) == b""
            except socket.timeout:
                closed = False
            return answer_head, closed

    with ServerProcess(tmp_path / "var", env) as srv:
        answers: list[tuple[bytes, bool]] = []
        big_answers: list[tuple[bytes, bool]] = []

        def big_camera() -> None:  # sends the big photo again after each refusal, as a camera does
            for _ in range(50):
                big_answers.append(raw_post(srv.port, big))
                if not big_answers[-1][0].startswith(b"HTTP/1.1 503"):
                    return

        t = threading.Thread(target=big_camera)
        t.start()
        while t.is_alive():  # a second camera with small photos, refused while the big one is graded
            answers.append(raw_post(srv.port, small))
            time.sleep(0.05)  # room between its photos, so the big one is admitted in the end
        t.join()
        assert big_answers[-1][0].startswith(b"HTTP/1.1 200")  # the big photo was graded in the end
        answers += big_answers
        refused = [(h, c) for h, c in answers if h.startswith(b"HTTP/1.1 503")]
        assert refused, "no request was refused while the big photo was being graded"
        for head, closed in refused:
            assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
            assert closed
        assert all(h.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")) for h, _ in answers)


def _children(pid: int) -> list[int]:
    """Worker processes of a `grader serve --workers N` supervisor (Linux /proc)."""
    from pathlib import Path

    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmd:
                out.append(int(d.name))
    return out


def test_a_worker_that_dies_is_replaced(tmp_path):
    """Killing one of two workers (as the OOM killer would) leaves the service answering, and the
    supervisor starts another; SIGTERM still stops everything cleanly."""
    import os
    import signal
    import time

    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
    img = jpeg_bytes(make_fruit_image(seed=1, diameter_mm=70, mm_per_px=0.3)[0])
    srv = ServerProcess(tmp_path / "var", env, workers=2, log_level="info").start()
    try:
        before = _children(srv.proc.pid)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _children(srv.proc.pid)
            if len(now) == 2 and before[0] not in now and srv.log().count("Application startup complete") >= 3:
                break
            time.sleep(0.3)
        assert before[0] not in now and len(now) == 2, srv.log()[-2000:]
        for i in range(6):
            with httpx.Client(timeout=60) as c:
                r = c.post(
                    srv.url + "/v1/grade",
                    files={"image": ("a.jpg", img, "image/jpeg")},
                    data={"mm_per_px": "0.3"},
                    headers={"X-API-Key": API_KEYS["camera"]},
                )
            assert r.status_code == 200, r.text
        assert "starting another" in srv.log()
    finally:
        assert srv.stop() == 0
    assert _children(srv.proc.pid) == []


def test_the_served_app_is_built_outside_the_garbage_collectors_reach(tmp_path, monkeypatch):
    """`grader serve` builds its app with app_from_env, which freezes what start-up built, so full
    collections scan only what requests leave behind (no tens-of-ms pauses of a request)."""
    import gc
    import tempfile

    from service.app import app_from_env

    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # app_from_env points it into the data dir
    monkeypatch.setenv("GRADER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("GRADER_API_KEYS", ",".join(f"{r}:{k}" for r, k in API_KEYS.items()))
    before = gc.get_freeze_count()
    try:
        app = app_from_env()
        assert app.state.ctx.model is not None
        assert gc.get_freeze_count() > before + 10_000
    finally:
        gc.unfreeze()
