"""`grader serve` as a real process: a camera posts over real HTTP, the result survives a restart."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from datasets.synthetic import make_fruit_image

from .conftest import API_KEYS, jpeg_bytes

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, port, extra_env=None):
    env = dict(os.environ, GRADER_DATA_DIR=str(tmp_path / "var"), GRADER_API_KEYS=",".join(f"{r}:{k}" for r, k in API_KEYS.items()),
               **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not become healthy: " + (proc.stdout.read() if proc.stdout else ""))


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
        proc.terminate()
        proc.wait(timeout=30)
    proc = start(tmp_path, port)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}/v1/results/{rid}", headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10)
        assert again.status_code == 200
        assert again.json()["fruits"][0]["diameter_mm"] == pytest.approx(68, abs=1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
