"""Faults, for real: the service process is SIGKILLed while cameras post, its database path is cut,
its disk fills up or turns read-only, and it is asked to stop while requests are in flight.
Every request that got a 2xx must be stored with its image, retries must be graded exactly once,
and failures must be clear 5xx/503 answers, never hangs or half-written results."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from datasets.synthetic import FruitSpec, make_frame, make_fruit_image
from service.process import ServerProcess, free_port

from .conftest import API_KEYS, jpeg_bytes
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

KEYS_ENV = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items())}
CAM = {"X-API-Key": API_KEYS["camera"]}
INSP = {"X-API-Key": API_KEYS["inspector"]}


def fruit_jpegs(n: int) -> list[bytes]:
    return [jpeg_bytes(make_fruit_image(seed=i, diameter_mm=60 + i, mm_per_px=0.3)[0]) for i in range(n)]


class Camera(threading.Thread):
    """Posts `n` fruit at a steady pace, each with its own Idempotency-Key; a request that fails
    (connection refused or reset, 5xx) is retried with the same key until it gets a 2xx."""

    def __init__(self, name: str, base: str, jpegs: list[bytes], n: int, pace_s: float, deadline_s: float = 120) -> None:
        super().__init__(daemon=True)
        self.cam, self.base, self.jpegs, self.n, self.pace_s = name, base, jpegs, n, pace_s
        self.deadline = time.monotonic() + deadline_s
        self.acked: dict[str, str] = {}  # idempotency key -> result id of its first 2xx
        self.failures = 0  # attempts that got an error or no answer
        self.recovered = 0  # keys that failed at least once, then succeeded
        self.unexpected: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as c:
            for i in range(self.n):
                key, failed = f"{self.cam}-{i:04d}", False
                while time.monotonic() < self.deadline:
                    try:
                        r = c.post(
                            self.base + "/v1/grade",
                            headers={**CAM, "Idempotency-Key": key},
                            files={"image": (f"{key}.jpg", self.jpegs[i % len(self.jpegs)], "image/jpeg")},
                            data={"camera_id": self.cam, "mm_per_px": "0.3"},
                        )
                    except httpx.HTTPError:
                        r = None
                    if r is not None and r.status_code == 200:
                        self.acked[key] = r.json()["id"]
                        self.recovered += failed
                        break
                    if r is not None and r.status_code < 500:
                        self.unexpected.append(f"{key}: {r.status_code} {r.text[:200]}")
                        break
                    self.failures += 1
                    failed = True
                    time.sleep(0.3)
                time.sleep(self.pace_s)


def check_exactly_once(db_url: str, cameras: list[Camera], base: str) -> None:
    acked = {k: v for c in cameras for k, v in c.acked.items()}
    assert not [u for c in cameras for u in c.unexpected]
    assert len(acked) == sum(c.n for c in cameras), "every fruit was eventually accepted"
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT idempotency_key, id FROM results")).all()
    engine.dispose()
    stored = {}
    for scoped, rid in rows:
        key = scoped.split("|", 1)[1]  # stored as "<API key fingerprint>|<Idempotency-Key>"
        assert key not in stored, f"{key} graded twice"
        stored[key] = rid
    assert stored == acked, "each accepted request is stored once, under the id its camera was given"
    with httpx.Client(timeout=30) as c:
        for rid in list(acked.values())[:: max(1, len(acked) // 10)]:
            assert c.get(f"{base}/v1/results/{rid}", headers=INSP).status_code == 200
            img = c.get(f"{base}/v1/results/{rid}/image", headers=INSP)
            assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"


def crash_and_restart(tmp_path: Path, env: dict[str, str], db_url: str) -> None:
    port = free_port()
    srv = ServerProcess(tmp_path / "var", {**KEYS_ENV, **env}, port=port).start()
    cams = [Camera(f"cam-{k}", srv.url, fruit_jpegs(6), n=14, pace_s=0.1) for k in range(2)]
    for c in cams:
        c.start()
    try:
        while sum(len(c.acked) for c in cams) < 6:  # results are flowing
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        time.sleep(0.5)  # the line keeps posting into a dead port
        srv = ServerProcess(tmp_path / "var", {**KEYS_ENV, **env}, port=port).start()
        for c in cams:
            c.join(timeout=150)
        assert sum(c.failures for c in cams) > 0, "the kill happened while cameras were posting"
        assert sum(c.recovered for c in cams) > 0, "clients that got an error retried and succeeded"
        check_exactly_once(db_url, cams, srv.url)
    finally:
        srv.stop()


def test_sigkill_while_posting_loses_nothing_on_sqlite(tmp_path):
    crash_and_restart(tmp_path, {}, f"sqlite:///{tmp_path / 'var' / 'grader.db'}")


@pytest.mark.postgres
def test_sigkill_while_posting_loses_nothing_on_postgres(tmp_path, fresh_pg_url):
    crash_and_restart(tmp_path, {"GRADER_DATABASE_URL": fresh_pg_url}, fresh_pg_url)


@pytest.mark.postgres
def test_database_outage_answers_503_then_recovers_without_restart(tmp_path, fresh_pg_url):
    proxy = TcpProxy(("127.0.0.1", 5432))
    via_proxy = fresh_pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    jpeg = fruit_jpegs(1)[0]

    def grade(c: httpx.Client, key: str) -> httpx.Response:
        return c.post(
            "/v1/grade", headers={**CAM, "Idempotency-Key": key}, files={"image": ("f.jpg", jpeg, "image/jpeg")}, data={"mm_per_px": "0.3"}
        )

    with (
        ServerProcess(tmp_path / "var", {**KEYS_ENV, "GRADER_DATABASE_URL": via_proxy}) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        assert grade(c, "before").status_code == 200
        proxy.cut()
        t0 = time.monotonic()
        r = grade(c, "during")
        assert time.monotonic() - t0 < 15, "no hanging on a dead database"
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable" and int(r.headers["retry-after"]) > 0
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"].startswith("unreachable")
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        proxy.restore()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "ready again once the database is back"
            time.sleep(0.5)
        assert grade(c, "during").status_code == 200  # the camera's retry of the refused request
        assert grade(c, "after").status_code == 200
    proxy.close()
    engine = create_engine(fresh_pg_url)
    with engine.connect() as conn:
        keys = sorted(k.split("|", 1)[1] for (k,) in conn.execute(text("SELECT idempotency_key FROM results")))  # "<key id>|<key>"
    engine.dispose()
    assert keys == ["after", "before", "during"]


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")


def test_full_or_read_only_disk_is_a_clear_error_and_stores_nothing(tmp_path):
    """The image store on a real 1 MiB filesystem: filled up, then remounted read-only."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    images = tmp_path / "var" / "images"
    _mount_tmpfs(images, "1m")
    try:
        s = Settings(data_dir=tmp_path / "var", api_keys=KEYS_ENV["GRADER_API_KEYS"])
        jpegs = fruit_jpegs(3)
        with TestClient(create_app(s)) as c:

            def grade(i: int) -> httpx.Response:
                return c.post("/v1/grade", headers=CAM, files={"image": ("f.jpg", jpegs[i], "image/jpeg")}, data={"mm_per_px": "0.3"})

            assert grade(0).status_code == 200
            filler = images / "filler"
            with open(filler, "wb") as f:  # fill the disk
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            r = grade(1)
            assert r.status_code == 507 and r.json()["error"]["code"] == "storage_full"
            assert str(images) in r.json()["error"]["message"] and "No space left" in r.json()["error"]["message"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "No space left" in ready.json()["images"]
            assert not [p for p in images.rglob(".tmp-*")], "no half-written image left behind"
            filler.unlink()
            assert grade(1).status_code == 200
            subprocess.run(["mount", "-o", "remount,ro", str(images)], check=True)
            r = grade(2)
            assert (
                r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable" and "Read-only" in r.json()["error"]["message"]
            )
            subprocess.run(["mount", "-o", "remount,rw", str(images)], check=True)
            assert grade(2).status_code == 200
            listed = c.get("/v1/results?limit=50", headers=INSP).json()["items"]
            assert len(listed) == 3, "only the accepted requests have results"
    finally:
        subprocess.run(["umount", "-l", str(images)], check=False)


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tmp_path):
    img, _ = make_frame([FruitSpec(70, (60 + 90 * k, 90)) for k in range(4)], mm_per_px=0.25, size_px=(720, 1280), seed=1)
    n_frames = 24  # 24 frames of 4 fruit: seconds of grading even on an idle machine
    frames = [("images", (f"{i}.jpg", jpeg_bytes(img, quality=70 + i), "image/jpeg")) for i in range(n_frames)]
    srv = ServerProcess(tmp_path / "var", KEYS_ENV).start()
    out: dict[str, object] = {}

    def post_batch() -> None:
        with httpx.Client(timeout=120) as c:
            out["response"] = c.post(srv.url + "/v1/grade/batch", headers=CAM, files=frames, data={"mm_per_px": "0.25"})

    t = threading.Thread(target=post_batch)
    sent = time.monotonic()
    t.start()
    time.sleep(1.0)  # the batch is being graded
    assert t.is_alive(), "the batch should still be in flight"
    os.kill(srv.proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):  # no longer accepting
        httpx.get(srv.url + "/healthz", timeout=2)
    t.join(timeout=60)
    print(f"batch answered {time.monotonic() - sent:.1f} s after it was sent")
    r = out["response"]
    assert r.status_code == 200 and len(r.json()["results"]) == n_frames
    # uvicorn finishes the shutdown, then re-raises SIGTERM so the exit status says how it ended
    assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log()
