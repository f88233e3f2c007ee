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
        r = httpx.post(f"http://127.0.0.1:{port}/v1/grade", files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
                       data={"mm_per_px": "0.25"}, headers={"X-API-Key": API_KEYS["camera"]}, timeout=30)
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
        httpx.post(srv.url + "/v1/grade", files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
                   headers={"X-API-Key": API_KEYS["camera"]}, timeout=30).raise_for_status()
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
                r = c.post(srv.url + "/v1/grade", files={"image": ("a.jpg", imgs[i % 4], "image/jpeg")},
                           data={"camera_id": f"cam-{i % 3}", "fruit_id": f"f{i}", "mm_per_px": "0.3"}, headers={"X-API-Key": API_KEYS["camera"]})
                return r.status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(post, range(24)))
        assert codes == [200] * 24
        listed = httpx.get(srv.url + "/v1/results", params={"limit": 100}, headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10).json()
        rows = listed["items"] if isinstance(listed, dict) else listed
        assert sorted(r["fruit_id"] for r in rows) == sorted(f"f{i}" for i in range(24))
        assert srv.log().count("Started server process") == 2
        assert "Traceback" not in srv.log()


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
                r = c.post(srv.url + "/v1/grade", files={"image": ("a.jpg", img, "image/jpeg")}, data={"mm_per_px": "0.3"},
                           headers={"X-API-Key": API_KEYS["camera"]})
            assert r.status_code == 200, r.text
        assert "starting another" in srv.log()
    finally:
        assert srv.stop() == 0
    assert _children(srv.proc.pid) == []


def test_the_served_app_is_built_outside_the_garbage_collectors_reach(tmp_path, monkeypatch):
    """`grader serve` builds its app with app_from_env, which freezes what start-up built, so full
    collections scan only what requests leave behind (no tens-of-ms pauses of a request)."""
    import gc

    from service.app import app_from_env

    monkeypatch.setenv("GRADER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("GRADER_API_KEYS", ",".join(f"{r}:{k}" for r, k in API_KEYS.items()))
    before = gc.get_freeze_count()
    try:
        app = app_from_env()
        assert app.state.ctx.model is not None
        assert gc.get_freeze_count() > before + 10_000
    finally:
        gc.unfreeze()
